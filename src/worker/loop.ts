// The Piscina task: one long-lived loop per pool thread. It consumes its SAB ring (faults and events
// of the processes in its shard, in order) and serves faults first. The background fill goes through
// fill leases (fill-board.ts): the worker offers ranges of its own processes, and takes leases from
// every board, its own first, so every worker fills every process. It blocks in Atomics.wait, so the
// main thread talks to it only through the ring.
import { newHistogram, toPairs } from '../engine/histogram';
import { RingConsumer, RingWaker, type RingRecord } from '../engine/ring';
import { decode } from '../engine/ring-records';
import { openLocalProcess } from '../source/local';
import type { ProcessPages } from '../source/page-source';
import type { MemoryMap } from '../memory';
import { native } from '../native';
import { LazyProcess, type CopyOutcome, type ProcessCounters, type RemoteLink } from './lazy-process';
import { BOARD_SLOTS, FillBoards, LEASE_RUNS, LeaseState, leaseResultOf, stopOf, type LeaseRun } from './fill-board';
import { FillBudget, HelpThrottle } from './fill-budget';
import { ProgressWriter, PUBLISH_NS } from './progress';
import { RunCopier, type RunsResult } from './uffd-ops';
import type { PageSource } from '../source/page-source';
import { ArenaConsumer } from '../source/arena';
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { FaultTrace, WorkerMessage, WorkerResult, WorkerTask } from './messages';

const IDLE_WAIT_MS = 1000;
/**
 * A deliberate slowdown per fault, for checking that the performance gate catches regressions
 * (`FAULTLINE_FAULT_DELAY_US=300 npm run bench:gate` must fail). Never set in normal use.
 */
const FAULT_DELAY_NS = Number(process.env.FAULTLINE_FAULT_DELAY_US ?? 0) * 1000;
/** A fault held back (EAGAIN, or the copy gate) is retried after this long at most. */
const AGAIN_WAIT_MS = 0.2;
/** After fail-stop, how long an owner waits for leases other workers are copying before poisoning. */
const LEASE_DRAIN_MS = 2000;
/** A helper preempted while helping stays off 1 ms, doubling up to 64 ms (HelpThrottle). */
const HELP_BACKOFF_MIN_NS = 1_000_000;
const HELP_BACKOFF_MAX_NS = 64_000_000;
/** Fill credit never banks more than this: a fault waits at most about this long behind the fill. */
const MAX_FILL_CREDIT_NS = 1_000_000;
interface PendingFault {
  p: LazyProcess;
  address: number;
  timeNs: number;
}

export default function runShard(task: WorkerTask): WorkerResult {
  const ring = new RingConsumer(task.ring);
  const port = task.port;
  const post = (m: WorkerMessage) => port.postMessage(m);
  const processes = new Map<number, LazyProcess>();
  const filling: LazyProcess[] = [];
  let fillIndex = 0;
  let restoreFinished = false;
  let stop = false;
  let failStop = false;
  let retry: PendingFault[] = [];
  const boards = new FillBoards(task.boards, task.rings.length);
  const wakers = task.rings.map((r) => new RingWaker(r));
  /** What each slot of this worker's own board was offered for. */
  const offered: ({ p: LazyProcess; runs: LeaseRun[] } | null)[] = new Array(BOARD_SLOTS).fill(null);
  /** Processes to release once their taken leases are back (a uffd is never closed under a lease). */
  const releasing = new Map<LazyProcess, { how: 'complete' | 'gone'; reason: string }>();
  const copier = new RunCopier();
  const progress = new ProgressWriter(task.progress, task.shard);
  let publishedNs = 0;
  const publish = (force = false) => {
    const now = native.monotonicNs();
    if (!force && now - publishedNs < PUBLISH_NS) return;
    publishedNs = now;
    let missing = 0;
    for (const p of processes.values()) missing += p.map.pages + p.inflight.pages;
    progress.publish(missing, totals, (function* () {
      for (const p of processes.values()) yield p.counters;
    })());
  };
  /** When this worker served its first fault (CLOCK_MONOTONIC ns), 0 if none. */
  let firstFaultNs = 0;
  let filledForOthers = 0;
  let leasesTaken = 0;
  let leasesHelped = 0;
  const budget = new FillBudget(task.tuning.fillShare, MAX_FILL_CREDIT_NS, native.monotonicNs);
  const throttle = new HelpThrottle(HELP_BACKOFF_MIN_NS, HELP_BACKOFF_MAX_NS, native.monotonicNs);
  // Faults are served at the daemon's priority (--nice, above the restored tree). The background
  // fill runs at --fill-nice, by default the same: a tree waiting on its memory gains more from a
  // fill that finishes sooner than a restored thread that already has its pages loses (the
  // trade-off is measured in docs/DESIGN.md, "The fault tail").
  const serveNice = os.getPriority();
  const fillNice = task.fillNice ?? serveNice;
  const setNice = (n: number) => {
    try {
      os.setPriority(n);
    } catch {
      // lowering is always allowed; raising back needs the privilege the main thread had
    }
  };
  const latency = newHistogram();
  /** Read from the uffd → picked up by this worker: the ring hop, and whatever the worker finished first. */
  const pickup = newHistogram();
  const totals: ProcessCounters = { faults: 0, faultPages: 0, fillPages: 0, zeroPages: 0, existingPages: 0, copies: 0, requestedPages: 0 };
  const traces: FaultTrace[] = [];
  const arena = task.arena ? new ArenaConsumer(task.arena) : undefined;
  const remote: RemoteLink | undefined = task.arena
    ? { request: (p, tag, vaddr, pages, urgent) => post({ type: 'get', uffd: p.uffd, pid: p.pid, tag, vaddr, pages, urgent }) }
    : undefined;
  const prefetch = new Map<number, number[]>();
  if (task.prefetchFile) {
    for (const line of fs.readFileSync(task.prefetchFile, 'utf8').split('\n')) if (line.trim()) {
      const t = JSON.parse(line) as FaultTrace;
      prefetch.set(t.pid, t.pages);
    }
  }

  const release = (p: LazyProcess, how: 'complete' | 'gone', reason = '') => {
    if (!processes.has(p.uffd) || processes.get(p.uffd) !== p) return;
    // Offers nobody took are withdrawn; a lease being copied must come back before the main thread
    // may close the uffd (and reuse its number).
    for (let s = 0; s < BOARD_SLOTS; s++) {
      if (offered[s]?.p === p && boards.cancel(task.shard, s)) {
        p.leaseSettled(offered[s]!.runs, { dealt: 0, existing: 0, ioctls: 0, stop: 'done' });
        offered[s] = null;
      }
    }
    if (p.leases > 0) {
      if (!releasing.has(p)) releasing.set(p, { how, reason });
      return;
    }
    releasing.delete(p);
    // Forget the uffd before telling the main thread, which closes it (and may reuse the number).
    processes.delete(p.uffd);
    if (p.trace) traces.push({ pid: p.pid, pages: p.trace });
    const i = filling.indexOf(p);
    if (i >= 0) filling.splice(i, 1);
    for (const k of Object.keys(totals) as (keyof ProcessCounters)[]) totals[k] += p.counters[k];
    publish(true);
    if (how === 'complete') post({ type: 'complete', uffd: p.uffd, pid: p.pid, counters: p.counters });
    else post({ type: 'gone', uffd: p.uffd, pid: p.pid, counters: p.counters, reason });
  };

  const settle = (p: LazyProcess, outcome: CopyOutcome): void => {
    const later = releasing.get(p);
    if (later && p.leases === 0) release(p, later.how, later.reason);
    else if (outcome === 'gone') release(p, 'gone', 'the process exited (ESRCH)');
    else if (p.complete && processes.has(p.uffd)) release(p, 'complete');
  };

  // Serving faults earns the background fill a share of the thread's time (FillBudget), which it
  // may use while faults wait; beyond it, a waiting fault cuts the fill short at the next slice.
  const serveFault = (p: LazyProcess, address: number, timeNs: number, retried = false) => {
    const started = native.monotonicNs();
    if (!retried) pickup.recordValue(Math.max(1, started - timeNs));
    if (FAULT_DELAY_NS > 0 && !retried) for (const until = started + FAULT_DELAY_NS; native.monotonicNs() < until; );
    const outcome = p.fault(address, retried);
    if (outcome === 'again') retry.push({ p, address, timeNs });
    else {
      latency.recordValue(Math.max(1, p.releasedAtNs - timeNs));
      progress.served(p.releasedAtNs - timeNs);
      // Remote: the fault is served when its request leaves (the reply's copy wakes the thread).
      firstFaultNs ||= p.remote ? started : p.releasedAtNs;
    }
    settle(p, outcome);
    budget.earn(native.monotonicNs() - started);
  };

  /** Settles the leases of this worker's board that their takers have finished. */
  const collectLeases = () => {
    for (let s = 0; s < BOARD_SLOTS; s++) {
      if (boards.state(task.shard, s) !== LeaseState.DONE) continue;
      const o = boards.collect(task.shard, s);
      const l = offered[s]!;
      offered[s] = null;
      const stop = stopOf(o);
      const outcome = l.p.leaseSettled(l.runs, { dealt: o.dealt, existing: o.existing, ioctls: o.ioctls, stop });
      if (outcome === 'again') againUntil.set(l.p, native.monotonicNs() + AGAIN_WAIT_MS * 1e6);
      settle(l.p, outcome);
    }
  };
  /** A process whose lease came back with EAGAIN/event waits this long (or for its event) before the next. */
  const againUntil = new Map<LazyProcess, number>();
  let offerIndex = 0;
  /**
   * Keeps this worker's board stocked with leases of its filling processes, round robin: two untaken
   * offers per worker, so that a taker that finishes finds the next at once even while the owner is
   * inside a copy of its own (one per worker left the helper waiting for a wake-up after most leases
   * of a real dump, whose leases are short: docs/DESIGN.md, "A lease of several runs").
   */
  const offerLeases = () => {
    let untaken = 0;
    for (let s = 0; s < BOARD_SLOTS; s++) if (boards.state(task.shard, s) === LeaseState.OFFERED) untaken++;
    let made = 0;
    const now = native.monotonicNs();
    for (let tries = 0; tries < filling.length && untaken < 2 * task.rings.length; ) {
      const slot = boards.freeSlot(task.shard);
      if (slot < 0) break;
      offerIndex %= filling.length;
      const p = filling[offerIndex++];
      tries++;
      if (p.remote || releasing.has(p) || p.gone) continue;
      const until = againUntil.get(p);
      if (until !== undefined) {
        if (now < until) continue;
        againUntil.delete(p);
      }
      const pieces = p.leaseNext(LEASE_RUNS);
      if (!pieces.length) continue;
      tries = 0;
      const runs = pieces.map((r) => ({ dst: r.start, imgStart: r.imgStart, pages: (r.end - r.start) / 4096 }));
      offered[slot] = { p, runs };
      boards.offer(task.shard, slot, { uffd: p.uffd, pid: p.pid, epoch: ring.epoch, runs });
      untaken++;
      made++;
    }
    if (made) for (let w = 0; w < wakers.length; w++) if (w !== task.shard) wakers[w].wake();
  };

  const sources = new Map<number, PageSource>();
  const sourceOf = (pid: number): PageSource => {
    let s = sources.get(pid);
    if (!s) {
      s = openLocalProcess(task.imagesDir, pid).source;
      sources.set(pid, s);
    }
    return s;
  };
  /**
   * Takes one offered lease, this worker's own board first, and copies it; false if none was on
   * offer. The copy gives way to this worker's own ring once the fill budget is spent.
   */
  const takeLease = (): boolean => {
    for (let i = 0; i < wakers.length; i++) {
      // Own board first, then the others, each worker from the next one on.
      const owner = (task.shard + i) % wakers.length;
      if (owner !== task.shard && !throttle.mayHelp()) break;
      for (let s = 0; s < BOARD_SLOTS; s++) {
        if (boards.state(owner, s) !== LeaseState.OFFERED) continue;
        const l = boards.take(owner, s);
        if (!l) continue;
        const started = native.monotonicNs();
        const preemptions = owner === task.shard ? 0 : native.threadPreemptions();
        let r: RunsResult = { dealt: 0, existing: 0, ioctls: 0, stop: 'done', errno: 0 };
        let finished = false;
        if (fillNice !== serveNice) setNice(fillNice);
        try {
          const source = sourceOf(l.pid);
          const yieldAt = budget.yieldAt();
          const epfd = processes.size ? task.epfd : -1;
          // The runs in order; the first that stops short ends the lease there.
          r = copier.copyRuns(source, l.uffd, wakers[owner].bytes, l.epoch, l.runs, task.tuning.fillSlice, ring.bytes, yieldAt, epfd);
          finished = true;
        } finally {
          if (fillNice !== serveNice) setNice(serveNice);
          budget.spend(started);
          // A throw mid-copy: the owner gets the lease back as stopped by an event, so the map is true.
          if (!finished) r = { ...r, stop: 'event' };
          const result = leaseResultOf(r.stop);
          boards.finish(owner, s, { result, dealt: r.dealt, existing: r.existing, errno: r.errno, ioctls: r.ioctls });
          leasesTaken++;
          if (owner === task.shard) collectLeases();
          else {
            leasesHelped++;
            filledForOthers += r.dealt / 4096 - r.existing;
            throttle.helped(native.threadPreemptions() > preemptions);
            wakers[owner].wake();
          }
        }
        return true;
      }
    }
    return false;
  };
  const ownLeasesDone = () => boards.has(task.shard, LeaseState.DONE);
  const hasFillWork = () => ownLeasesDone() || (throttle.mayHelp() ? boards.anyOffered() : boards.has(task.shard, LeaseState.OFFERED));

  const onRecord = (record: RingRecord) => {
    const r = decode(ring, record);
    switch (r.kind) {
      case 'fault': {
        const p = processes.get(r.uffd);
        // A uffd already released: its late messages are moot.
        if (p) serveFault(p, r.address, r.timeNs);
        return;
      }
      case 'fork': {
        const p = processes.get(r.uffd);
        if (!p) return;
        const child = p.forkChild(r.childUffd);
        processes.set(child.uffd, child);
        if (restoreFinished) filling.push(child);
        post({ type: 'forked', uffd: child.uffd, parentUffd: p.uffd, pid: p.pid });
        settle(child, 'ok');
        return;
      }
      case 'remap':
        processes.get(r.uffd)?.remapped(r.from, r.to, r.len);
        return;
      case 'remove': {
        const p = processes.get(r.uffd);
        if (p) settle(p, p.removed(r.start, r.end));
        return;
      }
      case 'unmap': {
        const p = processes.get(r.uffd);
        if (!p) return;
        p.unmapped(r.start, r.end);
        settle(p, 'ok');
        return;
      }
      case 'unknown-event': {
        const p = processes.get(r.uffd);
        if (p) throw new Error(`pid ${p.pid}: unknown uffd event 0x${r.event.toString(16)}`);
        return;
      }
      case 'process': {
        const parsed = preloaded.get(r.pid);
        preloaded.delete(r.pid);
        if (parsed instanceof Error) throw parsed;
        const pages = parsed ?? openLocalProcess(task.imagesDir, r.pid, !!task.arena);
        const p = LazyProcess.fromImages(r.uffd, r.pid, pages.source, pages.lazyRanges, pages.lazyVmas, task.tuning, ring, parsed?.map);
        if (remote) p.remote = remote;
        if (task.recordFaults) p.trace = [];
        const pre = prefetch.get(r.pid);
        if (pre) p.setPrefetch(pre);
        processes.set(r.uffd, p);
        if (restoreFinished) filling.push(p);
        post({ type: 'loaded', uffd: r.uffd, pid: r.pid, lazyPages: p.map.pages });
        settle(p, 'ok');
        return;
      }
      case 'pages': {
        const p = processes.get(r.uffd);
        // A process released meanwhile (exited): its data is dropped, as CRIU does.
        if (p) settle(p, p.received(r.tag, r.imgStart, r.pages, arena!.data, arena!.offset(r.firstSlot)));
        arena!.free(r.firstSlot, r.pages);
        return;
      }
      case 'uffd-error': {
        const p = processes.get(r.uffd);
        if (p) release(p, 'gone', `its uffd failed (${r.errno || 'EOF'})`);
        return;
      }
      case 'restore-finished':
        restoreFinished = true;
        for (const p of processes.values()) if (!filling.includes(p)) filling.push(p);
        return;
      case 'stop':
        stop = true;
        failStop = r.failStop;
        return;
    }
  };

  const preloaded = preload(task, sources);
  post({ type: 'ready', shard: task.shard });
  try {
    while (!stop) {
      publish();
      const n = ring.consume(onRecord);
      if (stop) break;
      collectLeases();
      if (retry.length) {
        // A fault held back by the copy gate: read what is pending in this shard first (the event
        // that made the mm change, or the messages a drain was waiting to read).
        if (processes.size && native.drain(task.epfd, [ring.bytes], task.shard)) {
          ring.consume(onRecord);
          if (stop) break;
        }
        const again = retry;
        retry = [];
        for (const f of again) if (processes.has(f.p.uffd)) serveFault(f.p, f.address, f.timeNs, true);
        if (retry.length && ring.available() === 0) ring.wait(AGAIN_WAIT_MS);
        continue;
      }
      if (!restoreFinished) {
        if (n === 0) ring.wait(IDLE_WAIT_MS);
        continue;
      }
      if (processes.size) {
        // Already running: pick up new faults ourselves instead of waiting for the main thread to
        // be woken and to wake us (two cross-vCPU wakes on this VM, ≈ 50 µs each).
        if (native.drain(task.epfd, [ring.bytes], task.shard)) {
          ring.consume(onRecord);
          if (stop) break;
          if (ring.available()) continue;
        }
      }
      // One fill step per loop, even under a steady stream of faults, as CRIU's loop does: "fill
      // only when the ring is empty" starved the fill (random-1g: every page fetched by its own
      // fault); whole 1 MiB chunks made every isolated fault wait ≈ 0.4 ms. The step's slices stop
      // early for a waiting fault once the fill budget is spent.
      offerLeases();
      if (takeLease()) continue;
      if (arena && fillRemote()) continue;
      const throttled = throttle.waitNs > 0 && boards.anyOffered() ? Math.max(1, Math.ceil(throttle.waitNs / 1e6)) : IDLE_WAIT_MS;
      ring.wait(againUntil.size ? AGAIN_WAIT_MS : Math.min(IDLE_WAIT_MS, throttled), hasFillWork);
    }
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    // Wait for the main thread's STOP so that fail-stop can still poison what this shard misses.
    while (!stop) {
      ring.consume((record) => {
        const r = decode(ring, record);
        if (r.kind === 'stop') {
          stop = true;
          failStop = r.failStop;
        }
      });
      if (!stop) ring.wait(IDLE_WAIT_MS);
    }
  }
  // Withdraw what nobody took, and wait (bounded) for what others are copying, so that the map is
  // true before poisoning and no uffd is closed under a lease.
  for (let s = 0; s < BOARD_SLOTS; s++) {
    if (offered[s] && boards.cancel(task.shard, s)) {
      offered[s]!.p.leaseSettled(offered[s]!.runs, { dealt: 0, existing: 0, ioctls: 0, stop: 'done' });
      offered[s] = null;
    }
  }
  for (const until = native.monotonicNs() + LEASE_DRAIN_MS * 1e6; offered.some((o) => o) && native.monotonicNs() < until; ) {
    collectLeases();
    if (offered.some((o) => o)) ring.wait(1, ownLeasesDone);
  }
  let poisonedPages = 0;
  if (failStop) for (const p of processes.values()) poisonedPages += p.poisonRemaining();
  for (const p of processes.values()) for (const k of Object.keys(totals) as (keyof ProcessCounters)[]) totals[k] += p.counters[k];
  for (const p of processes.values()) if (p.trace) traces.push({ pid: p.pid, pages: p.trace });
  return { shard: task.shard, latency: toPairs(latency), pickup: toPairs(pickup), totals, poisonedPages, traces, filledForOthers, leases: leasesTaken, leasesHelped, nice: os.getPriority(), firstFaultNs };

  /**
   * Remote: one background request for the next process that can take one; processes with a
   * request already on its way are 'busy' and skipped (their reply arrives through the ring).
   */
  function fillRemote(): boolean {
    // Every process gets its turn: one with a request on its way ('busy') or nothing left to ask
    // for ('empty') must not keep the others from asking (one request per round trip otherwise).
    for (let tries = 0; tries < filling.length; tries++) {
      fillIndex = fillIndex % filling.length;
      const p = filling[fillIndex++];
      const outcome = p.fillNext();
      if (outcome === 'busy' || outcome === 'empty') continue;
      settle(p, outcome);
      return true;
    }
    return false;
  }
}

/**
 * The first image load in a fresh thread costs ≈ 16 ms (protobufjs compiles its decoders, V8 is cold)
 * against ≈ 2 ms after; pay it before announcing readiness, not while a restored process waits.
 * Errors are ignored here: the real load at hand-over reports them.
 */
type Preloaded = ProcessPages & { map: MemoryMap };

/**
 * This shard's processes parsed, and their maps built, ahead of their hand-over (an image error is
 * kept for that moment): a fresh worker's first allocations touch guest memory the host has not
 * backed yet (≈ 10 µs a page here), so building even a 4,000-range map at hand-over took 10-20 ms
 * that the restorer spent blocked on its first faults.
 */
function preload(task: WorkerTask, sources: Map<number, PageSource>): Map<number, Preloaded | Error> {
  const out = new Map<number, Preloaded | Error>();
  for (const pid of task.preloadPids) {
    try {
      const pages = openLocalProcess(task.imagesDir, pid, !!task.arena);
      out.set(pid, { ...pages, map: LazyProcess.mapOf(pages.lazyRanges) });
      if (!task.arena) sources.set(pid, pages.source);
    } catch (e) {
      out.set(pid, e as Error);
    }
  }
  // Every other process's page images too: this worker may fill any process on lease, and must
  // not parse images while a restored thread waits.
  if (!task.arena) {
    for (const pid of task.allPids) {
      if (sources.has(pid)) continue;
      try {
        const pages = openLocalProcess(task.imagesDir, pid);
        sources.set(pid, pages.source);
        const r = pages.lazyRanges[0];
        if (r) pages.source.locate(r.start, 1);
      } catch {
        // reported properly by the owner when this process is handed over
      }
    }
  }
  if (!out.size) warmUp(task);
  return out;
}

function warmUp(task: WorkerTask): void {
  if (task.warmUpPid === undefined) return;
  try {
    const p = openLocalProcess(task.imagesDir, task.warmUpPid, !!task.arena);
    const r = p.lazyRanges[0];
    if (r && !task.arena) p.source.locate(r.start, 1);
  } catch {
    // reported properly when this process is handed over
  }
}

module.exports = runShard;
module.exports.default = runShard;
