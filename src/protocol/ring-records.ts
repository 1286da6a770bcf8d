// Every ring record, encoded and decoded in this one module. The native drain writes UFFD_MSG and
// UFFD_ERROR records itself, with the layout of native/src/ring.h that RING mirrors; the control
// records are written here, and the worker reads all of them through decode().
import { native } from '../native';
import type { RingConsumer, RingProducer, RingRecord } from './ring';
import { RecordKind, UFFD_MSG } from './ring-layout';

export type DecodedRecord =
  | { kind: 'fault'; uffd: number; address: number; timeNs: number }
  | { kind: 'fork'; uffd: number; childUffd: number }
  | { kind: 'remap'; uffd: number; from: number; to: number; len: number }
  | { kind: 'remove'; uffd: number; start: number; end: number }
  | { kind: 'unmap'; uffd: number; start: number; end: number }
  | { kind: 'unknown-event'; uffd: number; event: number }
  | { kind: 'process'; uffd: number; pid: number; hostPid: number; session: number }
  | { kind: 'restore-finished'; session: number }
  | { kind: 'stop'; failStop: boolean }
  | { kind: 'session'; session: number }
  | { kind: 'stop-session'; session: number; failStop: boolean }
  | { kind: 'uffd-error'; uffd: number; errno: number }
  | { kind: 'pages'; uffd: number; tag: number; pages: number; firstSlot: number; imgStart: number };

/** Reads the record `consume` handed over (its payload is in the consumer's scratch copy). */
export function decode(ring: RingConsumer, r: RingRecord): DecodedRecord {
  const at = r.at;
  switch (r.kind) {
    case RecordKind.UFFD_MSG: {
      // struct uffd_msg: the event byte, then a 24-byte union at offset 8.
      const event = ring.u8(at);
      const a = at + 8;
      switch (event) {
        case UFFD_MSG.EVENT_PAGEFAULT:
          return { kind: 'fault', uffd: r.fd, address: ring.u64(a + 8), timeNs: r.timeNs };
        case UFFD_MSG.EVENT_FORK:
          return { kind: 'fork', uffd: r.fd, childUffd: ring.i32At(a) };
        case UFFD_MSG.EVENT_REMAP:
          return { kind: 'remap', uffd: r.fd, from: ring.u64(a), to: ring.u64(a + 8), len: ring.u64(a + 16) };
        case UFFD_MSG.EVENT_REMOVE:
          return { kind: 'remove', uffd: r.fd, start: ring.u64(a), end: ring.u64(a + 8) };
        case UFFD_MSG.EVENT_UNMAP:
          return { kind: 'unmap', uffd: r.fd, start: ring.u64(a), end: ring.u64(a + 8) };
        default:
          return { kind: 'unknown-event', uffd: r.fd, event };
      }
    }
    case RecordKind.PROCESS:
      return { kind: 'process', uffd: r.fd, pid: ring.i32At(at), hostPid: ring.i32At(at + 4), session: ring.i32At(at + 8) };
    case RecordKind.RESTORE_FINISHED:
      return { kind: 'restore-finished', session: ring.i32At(at) };
    case RecordKind.SESSION:
      return { kind: 'session', session: ring.i32At(at) };
    case RecordKind.STOP_SESSION:
      return { kind: 'stop-session', session: ring.i32At(at), failStop: ring.i32At(at + 4) === 1 };
    case RecordKind.STOP:
      return { kind: 'stop', failStop: ring.i32At(at) === 1 };
    case RecordKind.UFFD_ERROR:
      return { kind: 'uffd-error', uffd: r.fd, errno: ring.i32At(at) };
    case RecordKind.PAGES:
      return { kind: 'pages', uffd: r.fd, tag: ring.i32At(at), pages: ring.i32At(at + 4), firstSlot: ring.i32At(at + 8) >>> 0, imgStart: ring.u64(at + 12) };
    default:
      throw new Error(`ring record of unknown kind ${r.kind}`);
  }
}

/** A restored process handed over: precedes every message of its uffd in the ring. */
export function pushProcess(ring: RingProducer, uffd: number, pid: number, hostPid: number, session: number): boolean {
  return ring.push(RecordKind.PROCESS, uffd, native.monotonicNs(), pid, hostPid, session);
}

export function pushRestoreFinished(ring: RingProducer, session: number): boolean {
  return ring.push(RecordKind.RESTORE_FINISHED, -1, native.monotonicNs(), session);
}

/** A restore joins: its SessionSpec was posted on the worker's port just before. */
export function pushSession(ring: RingProducer, session: number): boolean {
  return ring.push(RecordKind.SESSION, -1, native.monotonicNs(), session);
}

/** One restore ends (failStop: poison what its processes still miss); the others go on. */
export function pushStopSession(ring: RingProducer, session: number, failStop: boolean): boolean {
  return ring.push(RecordKind.STOP_SESSION, -1, native.monotonicNs(), session, failStop ? 1 : 0);
}

/** failStop: poison what is still missing before letting go; otherwise a normal end. */
export function pushStop(ring: RingProducer, failStop: boolean): boolean {
  return ring.push(RecordKind.STOP, -1, native.monotonicNs(), failStop ? 1 : 0);
}

/** Page-server data for `uffd` in the worker's arena, from slot `firstSlot`. */
export function pushPages(ring: RingProducer, uffd: number, tag: number, pages: number, firstSlot: number, imgStart: number): boolean {
  const lo = imgStart % 0x1_0000_0000;
  return ring.push(RecordKind.PAGES, uffd, native.monotonicNs(), tag, pages, firstSlot | 0, lo | 0, (imgStart - lo) / 0x1_0000_0000);
}
