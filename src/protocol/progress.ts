// Live progress of a restore, for the progress bar and the metrics: each worker publishes its own
// slots of one SharedArrayBuffer (a few stores, at most every PUBLISH_NS), the main thread adds them
// up. Nothing here is exact at any instant (a worker may be mid-copy); at the end the summary is.
import type { ProcessCounters } from './counters';

/**
 * Upper bounds (seconds) of the fault-service histogram the metrics export: read from the uffd →
 * the faulting thread released, as the summary's fault service.
 */
export const FAULT_BUCKETS_S = [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3];
const BUCKETS_AT = 6;
const SUM_AT = BUCKETS_AT + FAULT_BUCKETS_S.length + 1;
/** Per shard: pages still missing in its processes, the counters below, then the fault histogram (a count per bucket, +Inf last) and its sum. */
export const PROGRESS_SLOTS = SUM_AT + 1;
const enum Slot {
  MISSING = 0,
  FAULTS = 1,
  FAULT_PAGES = 2,
  FILL_PAGES = 3,
  ZERO_PAGES = 4,
  EXISTING_PAGES = 5,
}
/** A worker publishes at most this often: a restore's progress moves in milliseconds, not µs. */
export const PUBLISH_NS = 20_000_000;

/** Slots for `sessions` restores (an engine's bound on concurrent ones) of `shards` workers each. */
export function createProgress(shards: number, sessions = 1): SharedArrayBuffer {
  return new SharedArrayBuffer(sessions * shards * PROGRESS_SLOTS * Float64Array.BYTES_PER_ELEMENT);
}

/** One worker's writer for its own slots of one restore. */
export class ProgressWriter {
  private readonly slots: Float64Array;
  constructor(sab: SharedArrayBuffer, shard: number, session = 0, shards = 1) {
    this.slots = new Float64Array(sab, (session * shards + shard) * PROGRESS_SLOTS * Float64Array.BYTES_PER_ELEMENT, PROGRESS_SLOTS);
    // a slot reused by a later restore starts from nothing
    this.slots.fill(0);
  }

  /** One fault served in `ns`: its bucket, counted as it happens (a single writer per slot). */
  served(ns: number): void {
    const s = ns / 1e9;
    let b = 0;
    while (b < FAULT_BUCKETS_S.length && s > FAULT_BUCKETS_S[b]!) b++;
    this.slots[BUCKETS_AT + b]!++;
    this.slots[SUM_AT] += s;
  }

  /** `released`: the counters of this shard's processes already finished; `live`: the others. */
  publish(missing: number, released: ProcessCounters, live: Iterable<ProcessCounters>): void {
    let faults = released.faults;
    let faultPages = released.faultPages;
    let fillPages = released.fillPages;
    let zeroPages = released.zeroPages;
    let existingPages = released.existingPages;
    for (const c of live) {
      faults += c.faults;
      faultPages += c.faultPages;
      fillPages += c.fillPages;
      zeroPages += c.zeroPages;
      existingPages += c.existingPages;
    }
    this.slots[Slot.MISSING] = missing;
    this.slots[Slot.FAULTS] = faults;
    this.slots[Slot.FAULT_PAGES] = faultPages;
    this.slots[Slot.FILL_PAGES] = fillPages;
    this.slots[Slot.ZERO_PAGES] = zeroPages;
    this.slots[Slot.EXISTING_PAGES] = existingPages;
  }
}

export interface Progress {
  /** Lazy pages in place: copied by a fault or the fill, zero-filled, or found present. */
  done: number;
  /** done + the pages still missing (grows when a fork gives a child its parent's missing pages). */
  total: number;
  faults: number;
  faultPages: number;
  fillPages: number;
  zeroPages: number;
  /** Faults served per FAULT_BUCKETS_S bucket (not cumulative; +Inf last), and their total seconds. */
  faultBuckets: number[];
  faultSeconds: number;
}

/** The sum of one restore's slots over the shards. */
export function readProgress(sab: SharedArrayBuffer, session = 0, shards = sab.byteLength / (PROGRESS_SLOTS * Float64Array.BYTES_PER_ELEMENT)): Progress {
  const all = new Float64Array(sab, session * shards * PROGRESS_SLOTS * Float64Array.BYTES_PER_ELEMENT, shards * PROGRESS_SLOTS);
  const p: Progress = { done: 0, total: 0, faults: 0, faultPages: 0, fillPages: 0, zeroPages: 0, faultBuckets: new Array<number>(FAULT_BUCKETS_S.length + 1).fill(0), faultSeconds: 0 };
  let missing = 0;
  let existing = 0;
  for (let at = 0; at < all.length; at += PROGRESS_SLOTS) {
    missing += all[at + Slot.MISSING]!;
    p.faults += all[at + Slot.FAULTS]!;
    p.faultPages += all[at + Slot.FAULT_PAGES]!;
    p.fillPages += all[at + Slot.FILL_PAGES]!;
    p.zeroPages += all[at + Slot.ZERO_PAGES]!;
    existing += all[at + Slot.EXISTING_PAGES]!;
    for (let b = 0; b <= FAULT_BUCKETS_S.length; b++) p.faultBuckets[b] += all[at + BUCKETS_AT + b]!;
    p.faultSeconds += all[at + SUM_AT]!;
  }
  p.done = p.faultPages + p.fillPages + p.zeroPages + existing;
  p.total = p.done + missing;
  return p;
}
