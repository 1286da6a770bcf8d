// Worker → main thread messages (MessagePort; rare, so not on the SAB ring). The main thread acts on
// them: close a finished uffd, add a forked child's uffd to epoll, or fail-stop the tree.
import type { MessagePort } from 'node:worker_threads';
import type { ProcessCounters } from './counters';
import type { Tuning } from './tuning';

export type WorkerMessage =
  | { type: 'ready'; shard: number }
  | { type: 'loaded'; uffd: number; pid: number; lazyPages: number }
  | { type: 'complete'; uffd: number; pid: number; counters: ProcessCounters }
  | { type: 'gone'; uffd: number; pid: number; counters: ProcessCounters; reason: string }
  | { type: 'forked'; uffd: number; parentUffd: number; pid: number }
  /**
   * A forked child nobody serves: its parent was released complete (poisonedPages null), or its
   * restore was fail-stopped, and then the child's missing pages were poisoned.
   */
  | { type: 'orphan'; uffd: number; parentUffd: number; poisonedPages: number | null }
  /** session: the restore at fault (only it is stopped); none: the worker itself failed (all are). */
  | { type: 'fatal'; message: string; pid?: number; session?: number }
  /** The worker opened a joining restore's images: it may hand over. */
  | { type: 'session-ready'; session: number; shard: number }
  /** A restore's share of this worker's work, once it ended (STOP_SESSION) and its pages were poisoned if asked. */
  | { type: 'session-result'; session: number; result: WorkerResult }
  | { type: 'get'; uffd: number; pid: number; tag: number; vaddr: number; pages: number; urgent: boolean };

export interface WorkerTask {
  shard: number;
  ring: SharedArrayBuffer;
  /** Remote restore: page-server data arrives in this arena (PAGES records). */
  arena?: SharedArrayBuffer;
  /** Every worker's ring (index = shard): a lease's copy gate is its owner's ring, and wakes go there. */
  rings: SharedArrayBuffer[];
  /** The fill boards of all shards (fill-board.ts). */
  boards: SharedArrayBuffer;
  /** Live progress, PROGRESS_SLOTS Float64s per session slot and shard (progress.ts): read by the main thread only. */
  progress: SharedArrayBuffer;
  /** The restore the engine starts with (a stand-alone daemon's one); later ones come as SESSION records. */
  session?: SessionSpec;
  /** This shard's epoll set, drained by the worker itself between background chunks. */
  epfd: number;
  /** The set the main thread watches, which holds `epfd` except while this worker fills (Poller.watchedEpfds). */
  watchedEpfd: number;
  port: MessagePort;
  tuning: Tuning;
  /** The nice value for background fill copies (--fill-nice); faults are served at the thread's own. */
  fillNice?: number;
  /** Session slots the progress buffer holds (the engine's bound on concurrent restores). */
  maxSessions: number;
}

/** One restore, as a worker needs to know it. */
export interface SessionSpec {
  /** Its slot, 0 .. maxSessions-1 (reused once it ended). */
  id: number;
  imagesDir: string;
  /** Every pstree pid: a worker may fill any process on lease, so it opens all their page images. */
  allPids: number[];
  /**
   * The pstree pids this shard will serve (their hand-over goes to this shard): their images are
   * parsed before the worker says it is ready, so that a hand-over costs no parsing while the
   * restorer waits on the first faults (a sparse region's pagemap is thousands of entries).
   */
  preloadPids: number[];
  /** With no pid of its own, a pid whose images the worker reads once at start, to compile the decoders. */
  warmUpPid?: number;
  /** Record the first-fault order per process (--record-faults). */
  recordFaults: boolean;
  /** A trace written by --record-faults: pages to fill first (--prefetch). */
  prefetchFile?: string;
  /** Page contents come from a page server (through the worker's arena), not the images' pages files. */
  remote?: boolean;
}

/** --record-faults file: one JSON object per line. */
export interface FaultTrace {
  pid: number;
  /** dump-time (image) addresses of pages in first-fault order */
  pages: number[];
}

export interface WorkerResult {
  shard: number;
  /** Fault service latency (ring read → copy done), ns, as histogram (value, count) pairs (protocol/histogram.ts). */
  latency: number[];
  /** Fault pickup latency (read from the uffd → this worker starts serving it), the same way. */
  pickup: number[];
  totals: ProcessCounters;
  poisonedPages: number;
  traces: FaultTrace[];
  /** Pages this worker copied on leases of processes other workers own. */
  filledForOthers: number;
  /** Leases this worker took, and how many of them were other workers'. */
  leases: number;
  leasesHelped: number;
  /** This worker thread's nice value (Linux: per thread; inherited from the main thread, see --nice). */
  nice: number;
  /** When this worker served its first fault (CLOCK_MONOTONIC ns), 0 if it served none. */
  firstFaultNs: number;
}
