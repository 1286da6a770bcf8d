// Fill leases: how every worker fills every process while each process keeps one owner.
//
// The owner (the worker whose shard holds the process) alone decides what is missing: it takes a
// range out of the process's MemoryMap, keeps it as in flight (so fork, mremap, madvise and munmap
// move or drop it like any missing range), and offers it on its board. Any worker, the owner
// included, may take an offered lease and UFFDIO_COPY it, entering the owner ring's copy gate with
// the lease's epoch (the number of mm events the owner had handled when it chose the addresses).
// An event published since makes the copy stop before its next ioctl (native fillRuns), and the
// lease comes back with how far it got. Only the owner settles a lease: the copied part leaves the
// in-flight map, the rest goes back to the missing ranges, wherever events have moved them.
//
// One board per shard, a fixed array of slots in one SharedArrayBuffer shared by all workers:
//   FREE → OFFERED (owner) → TAKEN (any worker, CAS) → DONE (the taker) → FREE (owner, settled)
//   OFFERED → FREE (owner, cancelled: the process is going, or the restore stops)
// The owner never lets the main thread close a uffd while one of its leases is taken, so a lease's
// uffd number always names the process it was made for.

export const enum LeaseState {
  FREE = 0,
  OFFERED = 1,
  TAKEN = 2,
  DONE = 3,
}

/** What the taker found (FillStatus of native fillRuns, plus what the taker itself can fail on). */
export const enum LeaseResult {
  DONE = 0,
  YIELDED = 1,
  EVENT = 2,
  ERRNO = 3,
  /** The images hold no data for a lazy page: the owner fails with that. */
  NO_DATA = 4,
}

import { classify, errnoName, type RunsResult } from './uffd-ops';

/** The taker's stop reason as a board result (an errno outcome travels as its errno). */
export function leaseResultOf(stop: RunsResult['stop']): LeaseResult {
  switch (stop) {
    case 'done':
      return LeaseResult.DONE;
    case 'yielded':
      return LeaseResult.YIELDED;
    case 'event':
      return LeaseResult.EVENT;
    case 'no-data':
      return LeaseResult.NO_DATA;
    default:
      return LeaseResult.ERRNO;
  }
}

/** The owner's reading of a board result: the stop reason the taker had. */
export function stopOf(o: Pick<LeaseOutcome, 'result' | 'errno'>): RunsResult['stop'] {
  switch (o.result) {
    case LeaseResult.DONE:
      return 'done';
    case LeaseResult.YIELDED:
      return 'yielded';
    case LeaseResult.EVENT:
      return 'event';
    case LeaseResult.NO_DATA:
      return 'no-data';
    default:
      return classify(errnoName(o.errno)) ?? 'gone';
  }
}

export const BOARD_SLOTS = 16;
/** Runs one lease may carry: a real dump's lazy memory is many short ranges (docs/DESIGN.md). */
export const LEASE_RUNS = 16;
const HEADER_BYTES = 64;
const SLOT_BYTES = HEADER_BYTES + LEASE_RUNS * 24;
// i32 fields of a slot
const STATE = 0;
const UFFD = 1;
const PID = 2;
const EPOCH = 3;
const PAGES = 4;
const RESULT = 5;
const ERRNO = 6;
const EXISTING = 7;
const IOCTLS = 8;
const NRUNS = 9;
const SESSION = 10;
// f64 fields of a slot (index in the Float64Array, relative to the slot); runs follow the header
// as [dst, imgStart, pages] triples.
const DEALT = 6;
const RUNS = HEADER_BYTES / 8;

export function createBoards(shards: number): SharedArrayBuffer {
  return new SharedArrayBuffer(shards * BOARD_SLOTS * SLOT_BYTES);
}

/** Pages at run-time address `dst` whose data is at image address `imgStart`. */
export interface LeaseRun {
  dst: number;
  imgStart: number;
  pages: number;
}

export interface Lease {
  uffd: number;
  pid: number;
  /** The restore it belongs to: whose images its pid names. */
  session: number;
  epoch: number;
  /** In copy order; `dealt` counts bytes through them in this order. */
  runs: LeaseRun[];
}

export interface LeaseOutcome {
  result: LeaseResult;
  /** Bytes dealt with from the start (copied, or found present). */
  dealt: number;
  existing: number;
  errno: number;
  /** UFFDIO_COPY calls the taker made. */
  ioctls: number;
}

/** All boards; `shard` selects whose. Every worker holds the same one. */
export class FillBoards {
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;
  constructor(
    readonly sab: SharedArrayBuffer,
    readonly shards: number,
  ) {
    this.i32 = new Int32Array(sab);
    this.f64 = new Float64Array(sab);
  }

  private base(shard: number, slot: number): number {
    return (shard * BOARD_SLOTS + slot) * (SLOT_BYTES / 4);
  }

  state(shard: number, slot: number): LeaseState {
    return Atomics.load(this.i32, this.base(shard, slot) + STATE);
  }

  /** Owner: a free slot, or -1. */
  freeSlot(shard: number): number {
    for (let s = 0; s < BOARD_SLOTS; s++) if (this.state(shard, s) === LeaseState.FREE) return s;
    return -1;
  }

  /** Owner: publishes a lease in a FREE slot (fields first, state last). */
  offer(shard: number, slot: number, l: Lease): void {
    if (l.runs.length < 1 || l.runs.length > LEASE_RUNS) throw new RangeError(`a lease carries 1 to ${LEASE_RUNS} runs, got ${l.runs.length}`);
    const b = this.base(shard, slot);
    this.i32[b + UFFD] = l.uffd;
    this.i32[b + PID] = l.pid;
    this.i32[b + SESSION] = l.session;
    this.i32[b + EPOCH] = l.epoch | 0;
    this.i32[b + PAGES] = l.runs.reduce((n, r) => n + r.pages, 0);
    this.i32[b + NRUNS] = l.runs.length;
    l.runs.forEach((r, i) => {
      const at = b / 2 + RUNS + 3 * i;
      this.f64[at] = r.dst;
      this.f64[at + 1] = r.imgStart;
      this.f64[at + 2] = r.pages;
    });
    Atomics.store(this.i32, b + STATE, LeaseState.OFFERED);
  }

  /** Any worker: claims an offered lease; null if someone else was first (or it was cancelled). */
  take(shard: number, slot: number): Lease | null {
    const b = this.base(shard, slot);
    if (Atomics.compareExchange(this.i32, b + STATE, LeaseState.OFFERED, LeaseState.TAKEN) !== LeaseState.OFFERED) return null;
    const runs: LeaseRun[] = [];
    for (let i = 0; i < this.i32[b + NRUNS]; i++) {
      const at = b / 2 + RUNS + 3 * i;
      runs.push({ dst: this.f64[at], imgStart: this.f64[at + 1], pages: this.f64[at + 2] });
    }
    return { uffd: this.i32[b + UFFD], pid: this.i32[b + PID], session: this.i32[b + SESSION], epoch: this.i32[b + EPOCH] >>> 0, runs };
  }

  /** The taker: reports how far it got (results first, state last). */
  finish(shard: number, slot: number, o: LeaseOutcome): void {
    const b = this.base(shard, slot);
    this.i32[b + RESULT] = o.result;
    this.i32[b + ERRNO] = o.errno;
    this.i32[b + EXISTING] = o.existing;
    this.i32[b + IOCTLS] = o.ioctls;
    this.f64[b / 2 + DEALT] = o.dealt;
    Atomics.store(this.i32, b + STATE, LeaseState.DONE);
  }

  /** Owner: the outcome of a DONE slot, which becomes FREE. */
  collect(shard: number, slot: number): LeaseOutcome {
    const b = this.base(shard, slot);
    const o = { result: this.i32[b + RESULT], errno: this.i32[b + ERRNO], existing: this.i32[b + EXISTING], ioctls: this.i32[b + IOCTLS], dealt: this.f64[b / 2 + DEALT] };
    Atomics.store(this.i32, b + STATE, LeaseState.FREE);
    return o;
  }

  /** Owner: withdraws an offer nobody took yet; false if it is taken (or done) already. */
  cancel(shard: number, slot: number): boolean {
    return Atomics.compareExchange(this.i32, this.base(shard, slot) + STATE, LeaseState.OFFERED, LeaseState.FREE) === LeaseState.OFFERED;
  }

  /** Whether `shard`'s board has a slot in `state`. */
  has(shard: number, state: LeaseState): boolean {
    for (let s = 0; s < BOARD_SLOTS; s++) if (this.state(shard, s) === state) return true;
    return false;
  }

  /** Whether any board has an offer. */
  anyOffered(): boolean {
    for (let sh = 0; sh < this.shards; sh++) if (this.has(sh, LeaseState.OFFERED)) return true;
    return false;
  }
}
