// Byte layout of the SharedArrayBuffer rings (records are encoded and decoded in ring-records.ts), mirrored from native/src/ring.h (test/unit/ring-layout
// checks that the addon agrees). Records are fixed-size so the producer never writes a partial one.
export const RING = {
  HEAD_OFFSET: 0, // u32 records published (producer, release)
  EVENTS_OFFSET: 4, // u32 non-PAGEFAULT uffd messages published (producer)
  TAIL_OFFSET: 64, // u32 records consumed (consumer, release); own cache line
  COPYING_OFFSET: 68, // u32 workers: how many are inside an ioctl into this shard's processes (see ring.h)
  CAPACITY_OFFSET: 128, // u32 power of two
  READING_OFFSET: 132, // u32 main: 1 while reading this ring's uffds
  SLEEPING_OFFSET: 136, // u32 consumer: 1 while about to sleep; the word it sleeps on (see ring.h)
  WANT_READ_OFFSET: 140, // u32 a drain found copies in flight: new copies hold off until it has read (see ring.h)
  HEADER_BYTES: 192,
  RECORD_BYTES: 48,
  KIND_OFFSET: 0, // u32 RecordKind
  FD_OFFSET: 4, // i32 uffd
  TIME_OFFSET: 8, // f64 CLOCK_MONOTONIC ns at read
  PAYLOAD_OFFSET: 16, // 32 bytes: struct uffd_msg for UFFD_MSG
  PAYLOAD_BYTES: 32,
} as const;

export const enum RecordKind {
  UFFD_MSG = 1,
  /** payload: i32 pid, i32 host pid (0 = unknown), i32 session (engine.ts) */
  PROCESS = 2,
  /** payload: i32 session whose restorer handed everything over */
  RESTORE_FINISHED = 3,
  /** payload: i32 1 = fail-stop (poison what is still missing), 0 = normal end */
  STOP = 4,
  /** payload: i32 errno (0 = EOF) */
  UFFD_ERROR = 5,
  /** payload: i32 tag, i32 pages, u32 first arena slot, u64 image address (lo, hi) — page-server data */
  PAGES = 7,
  /** payload: i32 session: a restore joins; its images etc. wait on the worker's MessagePort */
  SESSION = 8,
  /** payload: i32 session, i32 1 = fail-stop (poison its missing pages), 0 = normal end */
  STOP_SESSION = 9,
}

/** struct uffd_msg (linux/userfaultfd.h): event byte, then a 24-byte union at offset 8. */
export const UFFD_MSG = {
  BYTES: 32,
  EVENT_PAGEFAULT: 0x12,
  EVENT_FORK: 0x13,
  EVENT_REMAP: 0x14,
  EVENT_REMOVE: 0x15,
  EVENT_UNMAP: 0x16,
  PAGEFAULT_FLAG_WRITE: 1,
} as const;

/** Default ring size: at least one record per faulting thread of the tree plus events; 64k records = 3 MiB. */
export const DEFAULT_RING_CAPACITY = 1 << 16;
