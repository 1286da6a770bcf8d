// Layout of the SharedArrayBuffer rings that carry events from the main thread to a worker.
// Declared twice, here and in src/protocol/ring-layout.ts, with the same offsets; test/unit/ring-layout
// checks that the addon reports exactly these numbers.
//
// One producer at a time (READING is the producer lock: the main thread's drain and control records,
// the worker draining its own shard, another worker's nudge), single consumer (one worker). HEAD and TAIL are free-running u32 record counts on separate cache
// lines so producer and consumer do not share a line they both write.
#pragma once
#include <stdint.h>

#define RING_HEAD_OFFSET 0        // u32, written by the producer (release), records published
#define RING_EVENTS_OFFSET 4      // u32, producer: non-PAGEFAULT uffd messages published (FORK, REMAP, ...)
#define RING_TAIL_OFFSET 64       // u32, written by the consumer (release), records consumed
#define RING_COPYING_OFFSET 68    // u32, workers: how many are inside an ioctl into this shard's processes
#define RING_CAPACITY_OFFSET 128  // u32, power of two, set once at creation
#define RING_READING_OFFSET 132   // u32, main thread: 1 while it reads this ring's uffds
#define RING_SLEEPING_OFFSET 136  // u32, consumer: 1 while it is about to sleep (it sleeps on this word)
#define RING_WANT_READ_OFFSET 140 // u32, a drain found copies in flight: fill copies hold off until it reads
// COPYING and READING make reading a uffd and copying into its mm mutually exclusive (Dekker, all
// seq_cst). COPYING is a count: the shard's own worker and any worker filling one of its processes
// on lease (src/worker/fill-board.ts) may copy at once. A copier also holds back while EVENTS is
// ahead of the events the owner had handled when it chose the addresses (its epoch). Without it the
// main thread could read a FORK or REMAP event (which lets the kernel finish the fork/mremap) while
// a worker, not having seen the event yet, copies into the old layout: pages a forked child never
// gets, or data landing in the region that moved there.
// SLEEPING: the consumer sets it, re-checks for work, then sleeps on it; whoever gives it work
// (a record, a lease offered, a lease finished) clears it and wakes it, so no wake is lost.
#define RING_HEADER_BYTES 192
#define RING_RECORD_BYTES 48

// One record.
#define REC_KIND_OFFSET 0     // u32: RecordKind
#define REC_FD_OFFSET 4       // i32: the uffd the record is about
#define REC_TIME_OFFSET 8     // f64: CLOCK_MONOTONIC ns when the main thread read it
#define REC_PAYLOAD_OFFSET 16 // 32 bytes: struct uffd_msg verbatim for REC_UFFD_MSG
#define REC_PAYLOAD_BYTES 32

enum RecordKind {
  REC_UFFD_MSG = 1,       // payload: struct uffd_msg
  REC_PROCESS = 2,        // payload: i32 pid, i32 host pid (0 = unknown), i32 session
  REC_RESTORE_FINISHED = 3, // payload: i32 session
  REC_STOP = 4,
  REC_UFFD_ERROR = 5,     // payload: i32 errno (0 = EOF) of a failed read of the uffd
  REC_PAGES = 7,          // page-server data in the worker's arena (written by JS only)
  REC_SESSION = 8,        // a restore joins the engine (JS only; its details on the worker's port)
  REC_STOP_SESSION = 9,   // one restore ends, or is fail-stopped (JS only)
};
