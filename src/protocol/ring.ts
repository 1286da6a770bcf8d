// One-producer-at-a-time, single-consumer ring over a SharedArrayBuffer (our own; see DESIGN.md notes for
// why not ringbuf.js: records are fixed 48-byte slots the native drain writes directly).
import { RING, RecordKind, UFFD_MSG } from './ring-layout';

const HEAD = RING.HEAD_OFFSET / 4;
const TAIL = RING.TAIL_OFFSET / 4;
const CAPACITY = RING.CAPACITY_OFFSET / 4;
const COPYING = RING.COPYING_OFFSET / 4;
const EVENTS = RING.EVENTS_OFFSET / 4;
const READING = RING.READING_OFFSET / 4;
const SLEEPING = RING.SLEEPING_OFFSET / 4;
/** ≈ 50 µs of Atomics.load: far longer than one drain holds READING. */
const MAX_READING_SPINS = 20_000;

export function createRingBuffer(capacity: number): SharedArrayBuffer {
  if (capacity < 2 || (capacity & (capacity - 1)) !== 0) throw new RangeError(`ring capacity must be a power of two, got ${capacity}`);
  const sab = new SharedArrayBuffer(RING.HEADER_BYTES + capacity * RING.RECORD_BYTES);
  new Uint32Array(sab)[CAPACITY] = capacity;
  return sab;
}

class RingView {
  readonly i32: Int32Array;
  readonly view: DataView;
  readonly bytes: Uint8Array;
  readonly capacity: number;
  constructor(readonly sab: SharedArrayBuffer) {
    this.i32 = new Int32Array(sab);
    this.view = new DataView(sab);
    this.bytes = new Uint8Array(sab);
    this.capacity = this.i32[CAPACITY];
  }
  protected slot(seq: number): number {
    return RING.HEADER_BYTES + (seq & (this.capacity - 1)) * RING.RECORD_BYTES;
  }
  /**
   * Wakes the consumer if it sleeps (or is about to): after publishing a record, offering it a fill
   * lease, or finishing one of its leases. No syscall when it is busy.
   */
  wake(): void {
    if (Atomics.load(this.i32, SLEEPING) !== 0 && Atomics.compareExchange(this.i32, SLEEPING, 1, 0) === 1) Atomics.notify(this.i32, SLEEPING);
  }
}

/** Any thread's handle on a ring it does not consume: to wake its consumer. */
export class RingWaker extends RingView {}

/**
 * The producers' side: the main thread's control records and its native drain, and the owning
 * worker's own drain of its shard (loop.ts); READING makes them take turns.
 */
export class RingProducer extends RingView {
  /** Appends one control record; false if the ring is full (the caller retries after a notify). */
  push(kind: RecordKind, fd: number, timeNs: number, ...payload: number[]): boolean {
    // READING is the producer lock: the worker may be draining its own shard into this ring.
    while (Atomics.compareExchange(this.i32, READING, 0, 1) !== 0);
    try {
      const head = Atomics.load(this.i32, HEAD) >>> 0;
      const tail = Atomics.load(this.i32, TAIL) >>> 0;
      if (((head - tail) >>> 0) >= this.capacity) return false;
      const at = this.slot(head);
      this.view.setUint32(at + RING.KIND_OFFSET, kind, true);
      this.view.setInt32(at + RING.FD_OFFSET, fd, true);
      this.view.setFloat64(at + RING.TIME_OFFSET, timeNs, true);
      for (let i = 0; i < payload.length; i++) this.view.setInt32(at + RING.PAYLOAD_OFFSET + 4 * i, payload[i], true);
      Atomics.store(this.i32, HEAD, (head + 1) | 0);
      return true;
    } finally {
      Atomics.store(this.i32, READING, 0);
    }
  }
  notify(): void {
    this.wake();
  }
}

/** A record as the worker sees it: offsets into `view` of the current slot. */
export interface RingRecord {
  kind: number;
  fd: number;
  timeNs: number;
  /** Byte offset of the 32-byte payload in `view`. */
  at: number;
}

/** Worker side. */
export class RingConsumer extends RingView {
  private readonly rec: RingRecord = { kind: 0, fd: 0, timeNs: 0, at: RING.PAYLOAD_OFFSET };
  /** The record being handled, copied out so its slot is free (and `available()` exact) meanwhile. */
  private readonly scratch = new DataView(new ArrayBuffer(RING.RECORD_BYTES));
  private readonly scratchBytes = new Uint8Array(this.scratch.buffer);
  /** Non-PAGEFAULT uffd messages handled so far (compared with the producer's EVENTS). */
  private eventsHandled = 0;

  available(): number {
    return (Atomics.load(this.i32, HEAD) - Atomics.load(this.i32, TAIL)) >>> 0;
  }

  /** Hands every published record to `fn` (the record object is reused). */
  consume(fn: (r: RingRecord) => void, max = Infinity): number {
    const head = Atomics.load(this.i32, HEAD) >>> 0;
    let tail = Atomics.load(this.i32, TAIL) >>> 0;
    let n = 0;
    while (tail !== head && n < max) {
      const at = this.slot(tail);
      this.scratchBytes.set(this.bytes.subarray(at, at + RING.RECORD_BYTES));
      tail = (tail + 1) >>> 0;
      // Consumed before it is handled: while handling it, available() counts only later records,
      // which is what beginCopy() must see.
      Atomics.store(this.i32, TAIL, tail | 0);
      const r = this.rec;
      r.kind = this.scratch.getUint32(RING.KIND_OFFSET, true);
      r.fd = this.scratch.getInt32(RING.FD_OFFSET, true);
      r.timeNs = this.scratch.getFloat64(RING.TIME_OFFSET, true);
      fn(r);
      if (r.kind === RecordKind.UFFD_MSG && this.scratch.getUint8(RING.PAYLOAD_OFFSET) !== UFFD_MSG.EVENT_PAGEFAULT) this.eventsHandled++;
      n++;
    }
    return n;
  }

  /**
   * Sleeps until a record is published, someone wake()s this ring, or the timeout. `hasWork` is
   * asked after SLEEPING is set: work that appears after that check comes with a wake(), so none is
   * slept through (seq_cst: either the waker sees SLEEPING, or hasWork sees the work).
   */
  wait(timeoutMs: number, hasWork?: () => boolean): void {
    Atomics.store(this.i32, SLEEPING, 1);
    if (this.available() === 0 && !hasWork?.()) Atomics.wait(this.i32, SLEEPING, 1, timeoutMs);
    Atomics.store(this.i32, SLEEPING, 0);
  }

  /** The mm events (FORK/REMAP/REMOVE/UNMAP) handled so far: the epoch a fill lease is valid in. */
  get epoch(): number {
    return this.eventsHandled;
  }

  /** Payload accessors: `at` is RingRecord.at plus the offset in struct uffd_msg. */
  u64(at: number): number {
    return this.scratch.getUint32(at, true) + this.scratch.getUint32(at + 4, true) * 0x1_0000_0000;
  }
  i32At(at: number): number {
    return this.scratch.getInt32(at, true);
  }
  u8(at: number): number {
    return this.scratch.getUint8(at);
  }

  /**
   * Enters an ioctl into some process's mm: only while no drain is reading this ring's uffds and
   * every FORK/REMAP/REMOVE/UNMAP already read has been handled, so no event the kernel considers
   * delivered is still unknown to us. False: handle the ring first, then retry.
   */
  beginCopy(): boolean {
    // The main thread holds READING for the few µs of one drain: wait it out rather than giving up
    // (giving up sends a fault to the retry path, which may sleep).
    // COPYING is a count: workers filling this shard's processes on lease copy too (ring.h).
    for (let spins = 0; ; spins++) {
      Atomics.add(this.i32, COPYING, 1);
      if (Atomics.load(this.i32, READING) === 0) break;
      Atomics.sub(this.i32, COPYING, 1);
      if (spins >= MAX_READING_SPINS) return false;
    }
    // Pending faults do not matter; a pending FORK/REMAP/REMOVE/UNMAP does: handle it first.
    if (Atomics.load(this.i32, EVENTS) !== (this.eventsHandled | 0)) {
      Atomics.sub(this.i32, COPYING, 1);
      return false;
    }
    return true;
  }

  endCopy(): void {
    Atomics.sub(this.i32, COPYING, 1);
  }
}
