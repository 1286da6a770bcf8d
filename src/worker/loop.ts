// The Piscina task: one long-lived loop per pool thread. It consumes its SAB ring (faults and events
// of the processes in its shard, in order) and serves faults first. The background fill goes through
// fill leases (fill-board.ts): the worker offers ranges of its own processes, and takes leases from
// every board, its own first, so every worker fills every process. It blocks in Atomics.wait, so the
// main thread talks to it only through the ring. One loop serves every restore of its engine
// (engine/engine.ts): each is a session, whose images, counters and end are its own, and an error
// in one (a bad image, a protocol violation) stops that one only.
import { newHistogram, toPairs } from '../protocol/histogram';
import { RingConsumer, RingWaker, type RingRecord } from '../protocol/ring';
import { decode, type DecodedRecord } from '../protocol/ring-records';
import { openCachedProcess, processesParsed } from '../source/local';
import type { ProcessPages } from '../source/page-source';
import type { MemoryMap } from '../memory';
import { isErrno, native } from '../native';
import { LazyProcess, type CopyOutcome, type RemoteLink } from './lazy-process';
import { addCounters, newCounters, type ProcessCounters } from '../protocol/counters';
import { BOARD_SLOTS, FillBoards, LEASE_RUNS, LeaseState, leaseResultOf, stopOf, type LeaseRun } from './fill-board';
import { FillBudget, HelpThrottle } from './fill-budget';
import { ProgressWriter, PUBLISH_NS } from '../protocol/progress';
import { RunCopier, type RunsResult } from './uffd-ops';
import { warmFaultPath } from './warm-up';
import type { PageSource } from '../source/page-source';
import { ArenaConsumer } from '../source/arena';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { receiveMessageOnPort } from 'node:worker_threads';
import type { FaultTrace, SessionSpec, WorkerMessage, WorkerResult, WorkerTask } from '../protocol/worker-messages';

type ForkRecord = Extract<DecodedRecord, { kind: 'fork' }>;

const IDLE_WAIT_MS = 1000;
/**
 * A deliberate slowdown per fault, for checking that the performance gate catches regressions
 * (`FAULTLINE_FAULT_DELAY_US=300 npm run bench:gate` must fail). Never set in normal use.
 */
const FAULT_DELAY_NS = Number(process.env.FAULTLINE_FAULT_DELAY_US ?? 0) * 1000;
/**
 * Measurement switch: the main thread stays woken by this worker's uffds while the worker fills, as
 * before the worker took its set out of the watched one (the "before" of DESIGN.md, "One wake per
 * fault"). Never set in normal use.
 */
const MAIN_WATCHES_WHILE_FILLING = process.env.FAULTLINE_EXPERIMENT_MAIN_WATCHES_WHILE_FILLING === '1';
/**
 * Test hook: a FORK record is handled this long after it is read, so that a test can end the
 * parent's restore in between (engine.test.ts, "a child forked by a process whose restore was
 * fail-stopped"). Records of the parent read meanwhile are handled first. Never set in normal use.
 */
const TEST_DEFER_FORK_NS = Number(process.env.FAULTLINE_TEST_DEFER_FORK_MS ?? 0) * 1e6;
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

type Histogram = ReturnType<typeof newHistogram>;

/** One restore as this worker serves it. */
interface Session {
  spec: SessionSpec;
  /** Its restorer handed everything over: its processes are filled in the background. */
  finished: boolean;
  /** STOP_SESSION read: it ends once no lease of it is out (failStop: poison first). */
  stopping: { failStop: boolean } | null;
  /** An error of its own was reported: nothing more is done for it until its STOP_SESSION. */
  broken: boolean;
  sources: Map<number, PageSource>;
  preloaded: Map<number, Preloaded | Error>;
  prefetch: Map<number, number[]>;
  latency: Histogram;
  /** Read from the uffd → picked up by this worker: the ring hop, and whatever the worker finished first. */
  pickup: Histogram;
  /** Counters of its processes already released. */
  totals: ProcessCounters;
  traces: FaultTrace[];
  firstFaultNs: number;
  filledForOthers: number;
  leases: number;
  leasesHelped: number;
  progress: ProgressWriter;
  publishedNs: number;
}

export default function runShard(task: WorkerTask): WorkerResult {
  const ring = new RingConsumer(task.ring);
  const port = task.port;
  const post = (m: WorkerMessage) => port.postMessage(m);
  const processes = new Map<number, LazyProcess>();
  const filling: LazyProcess[] = [];
  let fillIndex = 0;
  /** Some restore finished its hand-over: from then on this worker fills (and helps fill). */
  let restoreFinished = false;
  const sessions = new Map<number, Session>();
  const sessionOf = (p: LazyProcess): Session | undefined => sessions.get(p.session);
  /** Faults and fills of a restore that is ending, or reported broken, are not served any more. */
  const idle = (s: Session | undefined) => !s || s.broken || s.stopping !== null;
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
  const publish = (s: Session, force = false) => {
    const now = native.monotonicNs();
    if (!force && now - s.publishedNs < PUBLISH_NS) return;
    s.publishedNs = now;
    let missing = 0;
    const live: ProcessCounters[] = [];
    for (const p of processes.values()) {
      if (p.session !== s.spec.id) continue;
      missing += p.map.pages + p.inflight.pages;
      live.push(p.counters);
    }
    s.progress.publish(missing, s.totals, live);
  };
  /** When this worker served its first fault (CLOCK_MONOTONIC ns), 0 if none. */
  let firstFaultNs = 0;
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
  const arena = task.arena ? new ArenaConsumer(task.arena) : undefined;
  const remote: RemoteLink | undefined = task.arena
    ? { request: (p, tag, vaddr, pages, urgent) => post({ type: 'get', uffd: p.uffd, pid: p.pid, tag, vaddr, pages, urgent }) }
    : undefined;

  /** A restore joins: its images are opened (and its own processes' maps built) before it says so. */
  const openSession = (spec: SessionSpec): Session => {
    const s: Session = {
      spec,
      finished: false,
      stopping: null,
      broken: false,
      sources: new Map(),
      preloaded: new Map(),
      prefetch: new Map(),
      latency: newHistogram(),
      pickup: newHistogram(),
      totals: newCounters(),
      traces: [],
      firstFaultNs: 0,
      filledForOthers: 0,
      leases: 0,
      leasesHelped: 0,
      progress: new ProgressWriter(task.progress, task.shard, spec.id, task.rings.length),
      publishedNs: 0,
    };
    sessions.set(spec.id, s);
    try {
      if (spec.prefetchFile) {
        for (const line of fs.readFileSync(spec.prefetchFile, 'utf8').split('\n')) if (line.trim()) {
          const t = JSON.parse(line) as FaultTrace;
          s.prefetch.set(t.pid, t.pages);
        }
      }
    } catch (e) {
      sessionFailed(s, e);
    }
    const parsedBefore = processesParsed();
    s.preloaded = preload(spec, !!spec.remote, s.sources);
    // Images parsed afresh (not cached from an earlier restore) left garbage, and each mapped pages
    // file is an external buffer V8 counts as memory pressure: the first allocations after the wait
    // for the restorer started a 20-30 ms collection, on the hand-over's first faults (--trace-gc;
    // docs/DESIGN.md, "A collection before ready"). Collected now, before anyone can connect.
    if (processesParsed() !== parsedBefore) collectGarbage();
    return s;
  };

  /** An error of one restore: it alone is stopped (the main thread fail-stops its tree). */
  const sessionFailed = (s: Session | undefined, e: unknown) => {
    if (!s) throw e;
    if (!s.broken) post({ type: 'fatal', message: (e as Error).message, session: s.spec.id });
    s.broken = true;
  };
  /** Runs `fn` for one restore: what it throws stops that restore only. */
  const guarded = <T>(s: Session | undefined, fn: () => T): T | undefined => {
    try {
      return fn();
    } catch (e) {
      sessionFailed(s, e);
      return undefined;
    }
  };

  /**
   * Processes forgotten while the main thread may still read a FORK of theirs, by uffd, until the
   * number names another process here: 'complete' for one released complete (its child has nothing
   * lazy), the process itself for one whose restore was fail-stopped (its map as it was when its
   * missing pages were poisoned: a child is poisoned the same way). The 'fork' record.
   */
  const forgotten = new Map<number, 'complete' | LazyProcess>();
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
    const s = sessionOf(p);
    if (p.trace) s?.traces.push({ pid: p.pid, pages: p.trace });
    const i = filling.indexOf(p);
    if (i >= 0) filling.splice(i, 1);
    if (s) {
      addCounters(s.totals, p.counters);
      publish(s, true);
    }
    if (how === 'complete') {
      forgotten.set(p.uffd, 'complete');
      post({ type: 'complete', uffd: p.uffd, pid: p.pid, counters: p.counters });
    } else post({ type: 'gone', uffd: p.uffd, pid: p.pid, counters: p.counters, reason });
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
    const s = sessionOf(p)!;
    if (idle(s)) return;
    const started = native.monotonicNs();
    if (!retried) s.pickup.recordValue(Math.max(1, started - timeNs));
    if (FAULT_DELAY_NS > 0 && !retried) for (const until = started + FAULT_DELAY_NS; native.monotonicNs() < until; );
    const outcome = guarded(s, () => p.fault(address, retried));
    if (outcome === undefined) return;
    if (outcome === 'again') retry.push({ p, address, timeNs });
    else {
      s.latency.recordValue(Math.max(1, p.releasedAtNs - timeNs));
      s.progress.served(p.releasedAtNs - timeNs);
      // Remote: the fault is served when its request leaves (the reply's copy wakes the thread).
      s.firstFaultNs ||= p.remote ? started : p.releasedAtNs;
      firstFaultNs ||= s.firstFaultNs;
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
      const outcome = guarded(sessionOf(l.p), () => l.p.leaseSettled(l.runs, { dealt: o.dealt, existing: o.existing, ioctls: o.ioctls, stop }));
      if (outcome === undefined) continue;
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
      if (p.remote || releasing.has(p) || p.gone || idle(sessionOf(p))) continue;
      const until = againUntil.get(p);
      if (until !== undefined) {
        if (now < until) continue;
        againUntil.delete(p);
      }
      const pieces = guarded(sessionOf(p), () => p.leaseNext(LEASE_RUNS)) ?? [];
      if (!pieces.length) continue;
      tries = 0;
      const runs = pieces.map((r) => ({ dst: r.start, imgStart: r.imgStart, pages: (r.end - r.start) / 4096 }));
      offered[slot] = { p, runs };
      boards.offer(task.shard, slot, { uffd: p.uffd, pid: p.pid, session: p.session, epoch: ring.epoch, runs });
      untaken++;
      made++;
    }
    if (made) for (let w = 0; w < wakers.length; w++) if (w !== task.shard) wakers[w].wake();
  };

  const sourceOf = (session: Session, pid: number): PageSource => {
    let src = session.sources.get(pid);
    if (!src) {
      src = openCachedProcess(session.spec.imagesDir, pid).source;
      session.sources.set(pid, src);
    }
    return src;
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
        const session = sessions.get(l.session);
        if (fillNice !== serveNice) setNice(fillNice);
        try {
          // A restore this worker has not opened (it ended here already) or that is ending: handed back.
          if (!session) throw new LeaseBack();
          const source = sourceOf(session, l.pid);
          const yieldAt = budget.yieldAt();
          const epfd = processes.size ? task.epfd : -1;
          if (epfd >= 0) fillingAlone();
          // The runs in order; the first that stops short ends the lease there.
          r = copier.copyRuns(source, l.uffd, wakers[owner].bytes, l.epoch, l.runs, task.tuning.fillSlice, ring.bytes, yieldAt, epfd);
          finished = true;
        } catch (e) {
          // Its images failed here: that restore is stopped; the lease goes back as stopped by an event.
          if (!(e instanceof LeaseBack)) sessionFailed(session, e);
        } finally {
          if (fillNice !== serveNice) setNice(serveNice);
          budget.spend(started);
          // A throw mid-copy: the owner gets the lease back as stopped by an event, so the map is true.
          if (!finished) r = { ...r, stop: 'event' };
          const result = leaseResultOf(r.stop);
          boards.finish(owner, s, { result, dealt: r.dealt, existing: r.existing, errno: r.errno, ioctls: r.ioctls });
          if (session) session.leases++;
          if (owner === task.shard) collectLeases();
          else {
            if (session) {
              session.leasesHelped++;
              session.filledForOthers += r.dealt / 4096 - r.existing;
            }
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

  const onFork = (r: ForkRecord) => {
    // The child's uffd number is the child's now, served or not.
    forgotten.delete(r.childUffd);
    const p = processes.get(r.uffd);
    if (!p) {
      const f = forgotten.get(r.uffd);
      if (f === 'complete') {
        // Its parent was released complete (it forked between its last copy and the main thread's
        // close of its uffd): the child inherited every page, so it has nothing lazy either. Its
        // uffd must still be let go, or its first fault on a never-lazy page waits for ever in an
        // engine.
        post({ type: 'orphan', uffd: r.childUffd, parentUffd: r.uffd, poisonedPages: null });
      } else if (f) {
        // Its parent's restore was fail-stopped: the child is killed with the tree, but it may have
        // pages missing, and closing its uffd as it is would let them read as zeros should it run
        // first (signals.test.ts caught a first version that closed it). Poisoned like its parent
        // (SIGBUS, never zeros), it can be let go: an engine would otherwise hold its uffd for ever.
        const child = f.forkChild(r.childUffd);
        forgotten.set(child.uffd, child);
        post({ type: 'orphan', uffd: r.childUffd, parentUffd: r.uffd, poisonedPages: child.poisonRemaining() });
      }
      // A parent never known here (its restore was stopping when its PROCESS record came, and the
      // main thread kills it): without its map the child cannot be poisoned, so its uffd, should a
      // FORK of it be read before the kill, stays with the main thread (DESIGN.md, the engine).
      return;
    }
    const child = p.forkChild(r.childUffd);
    processes.set(child.uffd, child);
    if (sessionOf(p)?.finished) filling.push(child);
    post({ type: 'forked', uffd: child.uffd, parentUffd: p.uffd, pid: p.pid });
    settle(child, 'ok');
  };
  /**
   * Whether this shard's set is out of the main thread's watched set (Poller.watchedEpfds): while
   * this worker fills, it reads its uffds itself between slices, and a fault need not also wake the
   * main thread. Back in before every wait, so that nothing read while this worker sleeps waits.
   */
  let unwatched = false;
  const fillingAlone = () => {
    if (unwatched || MAIN_WATCHES_WHILE_FILLING) return;
    native.epollDel(task.watchedEpfd, task.epfd);
    unwatched = true;
  };
  const watchedAgain = () => {
    if (!unwatched) return;
    unwatched = false;
    try {
      native.epollAdd(task.watchedEpfd, task.epfd, task.shard);
    } catch (e) {
      // The engine is closing (its sets are closed, their numbers maybe reused): nothing more to read.
      if (!stop && (!isErrno(e) || e.code !== 'EBADF')) throw e;
    }
  };
  const sleep = (ms: number, until?: () => boolean) => {
    watchedAgain();
    ring.wait(ms, until);
  };

  /** FORK records held back by the test hook TEST_DEFER_FORK_NS, in the order read. */
  const deferredForks: { r: ForkRecord; atNs: number }[] = [];
  const handleDeferredForks = () => {
    while (deferredForks.length && deferredForks[0].atNs <= native.monotonicNs()) onFork(deferredForks.shift()!.r);
  };

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
        if (TEST_DEFER_FORK_NS > 0) {
          deferredForks.push({ r, atNs: native.monotonicNs() + TEST_DEFER_FORK_NS });
          return;
        }
        onFork(r);
        return;
      }
      case 'remap': {
        const p = processes.get(r.uffd);
        if (p) guarded(sessionOf(p), () => p.remapped(r.from, r.to, r.len));
        return;
      }
      case 'remove': {
        const p = processes.get(r.uffd);
        const outcome = p && guarded(sessionOf(p), () => p.removed(r.start, r.end));
        if (p && outcome) settle(p, outcome);
        return;
      }
      case 'unmap': {
        const p = processes.get(r.uffd);
        if (!p) return;
        if (guarded(sessionOf(p), () => (p.unmapped(r.start, r.end), true))) settle(p, 'ok');
        return;
      }
      case 'unknown-event': {
        const p = processes.get(r.uffd);
        if (p) sessionFailed(sessionOf(p), new Error(`pid ${p.pid}: unknown uffd event 0x${r.event.toString(16)}`));
        return;
      }
      case 'process': {
        // The number is a new process's now, whether or not it is served.
        forgotten.delete(r.uffd);
        const s = sessions.get(r.session);
        // Its restore is ending (fail-stop) or unknown: the main thread kills the process.
        if (!s || s.stopping) return;
        const p = guarded(s, () => {
          const parsed = s.preloaded.get(r.pid);
          s.preloaded.delete(r.pid);
          if (parsed instanceof Error) throw parsed;
          const pages = parsed ?? openCachedProcess(s.spec.imagesDir, r.pid, !!s.spec.remote);
          return LazyProcess.fromImages(r.uffd, r.pid, pages.source, pages.lazyRanges, pages.lazyVmas, task.tuning, ring, parsed?.map);
        });
        if (!p) return;
        p.session = s.spec.id;
        // A page server's restore: its pages come through this worker's arena.
        if (s.spec.remote) {
          if (!remote) return sessionFailed(s, new Error('a remote restore on an engine without arenas'));
          p.remote = remote;
        }
        if (s.spec.recordFaults) p.trace = [];
        const pre = s.prefetch.get(r.pid);
        if (pre) p.setPrefetch(pre);
        processes.set(r.uffd, p);
        if (s.finished) filling.push(p);
        post({ type: 'loaded', uffd: r.uffd, pid: r.pid, lazyPages: p.map.pages });
        settle(p, 'ok');
        return;
      }
      case 'pages': {
        const p = processes.get(r.uffd);
        // A process released meanwhile (exited): its data is dropped, as CRIU does.
        const outcome = p && !idle(sessionOf(p)) ? guarded(sessionOf(p), () => p.received(r.tag, r.imgStart, r.pages, arena!.data, arena!.offset(r.firstSlot))) : undefined;
        if (p && outcome) settle(p, outcome);
        arena!.free(r.firstSlot, r.pages);
        return;
      }
      case 'uffd-error': {
        const p = processes.get(r.uffd);
        if (p) release(p, 'gone', `its uffd failed (${r.errno || 'EOF'})`);
        return;
      }
      case 'restore-finished': {
        const s = sessions.get(r.session);
        if (!s) return;
        s.finished = true;
        restoreFinished = true;
        for (const p of processes.values()) if (p.session === r.session && !filling.includes(p)) filling.push(p);
        return;
      }
      case 'session': {
        // Its spec was posted on this port just before the record was pushed.
        for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) {
          const spec = (m.message as { session?: SessionSpec }).session;
          if (!spec) continue;
          openSession(spec);
          post({ type: 'session-ready', session: spec.id, shard: task.shard });
          if (spec.id === r.session) break;
        }
        return;
      }
      case 'stop-session': {
        const s = sessions.get(r.session);
        if (!s) return;
        s.stopping = { failStop: r.failStop };
        // Offers nobody took go now; taken ones come back before the restore's uffds may close.
        for (let slot = 0; slot < BOARD_SLOTS; slot++) {
          const o = offered[slot];
          if (o && o.p.session === r.session && boards.cancel(task.shard, slot)) {
            o.p.leaseSettled(o.runs, { dealt: 0, existing: 0, ioctls: 0, stop: 'done' });
            offered[slot] = null;
          }
        }
        retry = retry.filter((f) => f.p.session !== r.session);
        return;
      }
      case 'stop':
        stop = true;
        failStop = r.failStop;
        return;
    }
  };

  /**
   * A restore that is ending, once no lease of its processes is out: its missing pages poisoned if
   * it is fail-stopped, its processes forgotten (the main thread closes their uffds), its share of
   * this worker's work reported.
   */
  const endSessions = () => {
    for (const s of sessions.values()) {
      if (!s.stopping) continue;
      if (offered.some((o) => o && o.p.session === s.spec.id)) continue;
      sessions.delete(s.spec.id);
      post({ type: 'session-result', session: s.spec.id, result: endSession(s, s.stopping.failStop) });
    }
  };
  const endSession = (s: Session, poison: boolean): WorkerResult => {
    let poisonedPages = 0;
    const totals = { ...s.totals };
    for (const p of [...processes.values()]) {
      if (p.session !== s.spec.id) continue;
      if (poison) {
        poisonedPages += p.poisonRemaining();
        forgotten.set(p.uffd, p);
      }
      addCounters(totals, p.counters);
      if (p.trace) s.traces.push({ pid: p.pid, pages: p.trace });
      processes.delete(p.uffd);
      releasing.delete(p);
      againUntil.delete(p);
      const i = filling.indexOf(p);
      if (i >= 0) filling.splice(i, 1);
    }
    return { shard: task.shard, latency: toPairs(s.latency), pickup: toPairs(s.pickup), totals, poisonedPages, traces: s.traces, filledForOthers: s.filledForOthers, leases: s.leases, leasesHelped: s.leasesHelped, nice: os.getPriority(), firstFaultNs: s.firstFaultNs };
  };

  if (task.session) openSession(task.session);
  // Before ready: a restored thread's first fault must not wait while V8 compiles the fault path.
  warmFaultPath(task.tuning);
  post({ type: 'ready', shard: task.shard });
  try {
    while (!stop) {
      if (deferredForks.length) handleDeferredForks();
      for (const s of sessions.values()) publish(s);
      const n = ring.consume(onRecord);
      if (stop) break;
      collectLeases();
      endSessions();
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
        if (retry.length && ring.available() === 0) sleep(AGAIN_WAIT_MS);
        continue;
      }
      if (!restoreFinished) {
        if (n === 0) sleep(IDLE_WAIT_MS);
        continue;
      }
      if (processes.size) {
        // Already running: pick up new faults ourselves instead of waiting for the main thread to
        // be woken and to wake us (two cross-vCPU wakes, each tens of µs on a VM).
        if (native.drain(task.epfd, [ring.bytes], task.shard)) {
          ring.consume(onRecord);
          if (stop) break;
          if (ring.available()) continue;
        }
      }
      // One fill step per loop, even under a steady stream of faults, as CRIU's loop does: "fill
      // only when the ring is empty" starves the fill of a process that faults at random (every
      // page fetched by its own fault), and whole chunks make an isolated fault wait behind one. The
      // step's slices stop early for a waiting fault once the fill budget is spent.
      offerLeases();
      if (takeLease()) continue;
      if (arena && fillRemote()) continue;
      const throttled = throttle.waitNs > 0 && boards.anyOffered() ? Math.max(1, Math.ceil(throttle.waitNs / 1e6)) : IDLE_WAIT_MS;
      sleep(againUntil.size ? AGAIN_WAIT_MS : Math.min(IDLE_WAIT_MS, throttled), hasFillWork);
    }
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    watchedAgain();
    // Wait for the main thread's STOP (or each restore's STOP_SESSION) so that fail-stop can still
    // poison what this shard misses.
    while (!stop) {
      ring.consume((record) => {
        const r = decode(ring, record);
        if (r.kind === 'stop') {
          stop = true;
          failStop = r.failStop;
        } else if (r.kind === 'stop-session') {
          const s = sessions.get(r.session);
          if (!s) return;
          sessions.delete(r.session);
          post({ type: 'session-result', session: r.session, result: endSession(s, r.failStop) });
        }
      });
      if (!stop) sleep(IDLE_WAIT_MS);
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
    if (offered.some((o) => o)) sleep(1, ownLeasesDone);
  }
  // The engine's end: every restore still here ends with it (poisoned if it is a fail-stop).
  for (const s of [...sessions.values()]) {
    sessions.delete(s.spec.id);
    post({ type: 'session-result', session: s.spec.id, result: endSession(s, failStop || (s.stopping?.failStop ?? false)) });
  }
  return { shard: task.shard, latency: [], pickup: [], totals: newCounters(), poisonedPages: 0, traces: [], filledForOthers: 0, leases: 0, leasesHelped: 0, nice: os.getPriority(), firstFaultNs };

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
      if (!p.remote || idle(sessionOf(p))) continue;
      const outcome = guarded(sessionOf(p), () => p.fillNext());
      if (outcome === undefined || outcome === 'busy' || outcome === 'empty') continue;
      settle(p, outcome);
      return true;
    }
    return false;
  }
}

/**
 * The first image load in a fresh thread costs several times a later one (V8 is cold; docs/DESIGN.md,
 * "Start-up"): pay it before announcing readiness, not while a restored process waits.
 * Errors are ignored here: the real load at hand-over reports them.
 */
type Preloaded = ProcessPages & { map: MemoryMap };

/**
 * This shard's processes parsed, and their maps built, ahead of their hand-over (an image error is
 * kept for that moment): a fresh worker's first allocations touch guest memory the host has not
 * backed yet (≈ 10 µs a page here), so building even a 4,000-range map at hand-over took 10-20 ms
 * that the restorer spent blocked on its first faults.
 */
function preload(task: SessionSpec, remote: boolean, sources: Map<number, PageSource>): Map<number, Preloaded | Error> {
  const out = new Map<number, Preloaded | Error>();
  for (const pid of task.preloadPids) {
    try {
      const pages = openCachedProcess(task.imagesDir, pid, remote);
      out.set(pid, { ...pages, map: LazyProcess.mapOf(pages.lazyRanges) });
      if (!remote) {
        sources.set(pid, pages.source);
        mapPagesFile(pages);
      }
    } catch (e) {
      out.set(pid, e as Error);
    }
  }
  // Every other process's page images too: this worker may fill any process on lease, and must
  // not parse images while a restored thread waits.
  if (!remote) {
    for (const pid of task.allPids) {
      if (sources.has(pid)) continue;
      try {
        const pages = openCachedProcess(task.imagesDir, pid);
        sources.set(pid, pages.source);
        mapPagesFile(pages);
      } catch {
        // reported properly by the owner when this process is handed over
      }
    }
  }
  if (!out.size) parseOneAhead(task, remote);
  return out;
}

/**
 * The first locate in a process's images maps its pages file (open, mmap, the populating thread):
 * 0.5-2.2 ms that the first fault of a real CRIU restore, which criu restore itself waits on, used
 * to pay when the preload left it to the fault.
 */
function mapPagesFile(pages: ProcessPages): void {
  const r = pages.lazyRanges[0];
  if (r) pages.source.locate(r.start, 1);
}

/** A worker that owns no process of this restore reads one's images once, to compile the decoders (the fault path's first run is warm-up.ts). */
function parseOneAhead(task: SessionSpec, remote: boolean): void {
  if (task.warmUpPid === undefined) return;
  try {
    const p = openCachedProcess(task.imagesDir, task.warmUpPid, remote);
    if (!remote) mapPagesFile(p);
  } catch {
    // reported properly when this process is handed over
  }
}

/** Thrown inside a lease's copy to hand the lease back untouched. */
class LeaseBack extends Error {}

module.exports = runShard;
module.exports.default = runShard;

let gc: (() => void) | undefined;
/** A full collection (V8's `gc`, reached without --expose-gc on the command line). */
function collectGarbage(): void {
  try {
    if (!gc) {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    }
    gc();
  } catch {
    // a V8 without the flag: the collection simply happens later
  }
}
