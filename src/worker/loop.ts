// The Piscina task: one long-lived loop per pool thread. It consumes its SAB ring (faults and events
// of the processes in its shard, in order), serves faults first, and fills in the background while
// the ring is empty. It blocks in Atomics.wait, so the main thread talks to it only through the ring.
import * as hdr from 'hdr-histogram-js';
import { RingConsumer, type RingRecord } from '../engine/ring';
import { RecordKind, UFFD_MSG } from '../engine/ring-layout';
import { openLocalProcess } from '../source/local';
import type { ProcessPages } from '../source/page-source';
import type { MemoryMap } from '../memory';
import { native } from '../native';
import { LazyProcess, type CopyOutcome, type ProcessCounters, type RemoteLink } from './lazy-process';
import { ArenaConsumer } from '../source/arena';
import * as fs from 'node:fs';
import type { FaultTrace, WorkerMessage, WorkerResult, WorkerTask } from './messages';

const IDLE_WAIT_MS = 1000;
/**
 * A deliberate slowdown per fault, for checking that the performance gate catches regressions
 * (`FAULTLINE_FAULT_DELAY_US=300 npm run bench:gate` must fail). Never set in normal use.
 */
const FAULT_DELAY_NS = Number(process.env.FAULTLINE_FAULT_DELAY_US ?? 0) * 1000;
const AGAIN_WAIT_MS = 1;
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
  const latency = hdr.build({ bitBucketSize: 64, numberOfSignificantValueDigits: 3, autoResize: true });
  const totals: ProcessCounters = { faults: 0, faultPages: 0, fillPages: 0, zeroPages: 0, existingPages: 0, copies: 0 };
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
    // Forget the uffd before telling the main thread, which closes it (and may reuse the number).
    processes.delete(p.uffd);
    if (p.trace) traces.push({ pid: p.pid, pages: p.trace });
    const i = filling.indexOf(p);
    if (i >= 0) filling.splice(i, 1);
    for (const k of Object.keys(totals) as (keyof ProcessCounters)[]) totals[k] += p.counters[k];
    if (how === 'complete') post({ type: 'complete', uffd: p.uffd, pid: p.pid, counters: p.counters });
    else post({ type: 'gone', uffd: p.uffd, pid: p.pid, counters: p.counters, reason });
  };

  const settle = (p: LazyProcess, outcome: CopyOutcome): void => {
    if (outcome === 'gone') release(p, 'gone', 'the process exited (ESRCH)');
    else if (p.complete && processes.has(p.uffd)) release(p, 'complete');
  };

  // Fill credit (ns): serving faults earns the background fill a share of the thread's time, which it
  // may use while faults wait; beyond it, a waiting fault cuts the chunk short at the next slice.
  let fillCredit = 0;
  const creditPerFaultNs = task.tuning.fillShare / (1 - task.tuning.fillShare);
  const serveFault = (p: LazyProcess, address: number, timeNs: number, retried = false) => {
    const started = native.monotonicNs();
    if (FAULT_DELAY_NS > 0 && !retried) for (const until = started + FAULT_DELAY_NS; native.monotonicNs() < until; );
    const outcome = p.fault(address, retried);
    if (outcome === 'again') retry.push({ p, address, timeNs });
    else latency.recordValue(Math.max(1, p.releasedAtNs - timeNs));
    settle(p, outcome);
    fillCredit = Math.min(fillCredit + (native.monotonicNs() - started) * creditPerFaultNs, MAX_FILL_CREDIT_NS);
  };
  // Only the ring, no epoll_wait per slice: that syscall per 64 KiB measured slower (isolated p50
  // ≈ 140 µs against ≈ 116 µs), the main thread's drain is fast enough to feed the ring meanwhile.
  const faultWaiting = () => ring.available() > 0;

  const onRecord = (r: RingRecord) => {
    switch (r.kind) {
      case RecordKind.UFFD_MSG: {
        const p = processes.get(r.fd);
        if (!p) return; // a uffd already released: its late messages are moot
        const event = ring.u8(r.at);
        const a = r.at + 8;
        switch (event) {
          case UFFD_MSG.EVENT_PAGEFAULT:
            serveFault(p, ring.u64(a + 8), r.timeNs);
            break;
          case UFFD_MSG.EVENT_FORK: {
            const child = p.forkChild(ring.i32At(a));
            processes.set(child.uffd, child);
            if (restoreFinished) filling.push(child);
            post({ type: 'forked', uffd: child.uffd, parentUffd: p.uffd, pid: p.pid });
            settle(child, 'ok');
            break;
          }
          case UFFD_MSG.EVENT_REMAP:
            p.remapped(ring.u64(a), ring.u64(a + 8), ring.u64(a + 16));
            break;
          case UFFD_MSG.EVENT_REMOVE:
            settle(p, p.removed(ring.u64(a), ring.u64(a + 8)));
            break;
          case UFFD_MSG.EVENT_UNMAP:
            p.unmapped(ring.u64(a), ring.u64(a + 8));
            settle(p, 'ok');
            break;
          default:
            throw new Error(`pid ${p.pid}: unknown uffd event 0x${event.toString(16)}`);
        }
        return;
      }
      case RecordKind.PROCESS: {
        const pid = ring.i32At(r.at);
        const parsed = preloaded.get(pid);
        preloaded.delete(pid);
        if (parsed instanceof Error) throw parsed;
        const pages = parsed ?? openLocalProcess(task.imagesDir, pid, !!task.arena);
        const p = LazyProcess.fromImages(r.fd, pid, pages.source, pages.lazyRanges, pages.lazyVmas, task.tuning, ring, parsed?.map);
        if (remote) p.remote = remote;
        if (task.recordFaults) p.trace = [];
        const pre = prefetch.get(pid);
        if (pre) p.setPrefetch(pre);
        processes.set(r.fd, p);
        if (restoreFinished) filling.push(p);
        post({ type: 'loaded', uffd: r.fd, pid, lazyPages: p.map.pages });
        settle(p, 'ok');
        return;
      }
      case RecordKind.PAGES: {
        const tag = ring.i32At(r.at);
        const got = ring.i32At(r.at + 4);
        const first = ring.i32At(r.at + 8) >>> 0;
        const imgStart = ring.u64(r.at + 12);
        const p = processes.get(r.fd);
        // A process released meanwhile (exited): its data is dropped, as CRIU does.
        if (p) settle(p, p.received(tag, imgStart, got, arena!.data, arena!.offset(first)));
        arena!.free(first, got);
        return;
      }
      case RecordKind.UFFD_ERROR: {
        const p = processes.get(r.fd);
        if (p) release(p, 'gone', `its uffd failed (${ring.i32At(r.at) || 'EOF'})`);
        return;
      }
      case RecordKind.RESTORE_FINISHED:
        restoreFinished = true;
        for (const p of processes.values()) if (!filling.includes(p)) filling.push(p);
        return;
      case RecordKind.STOP:
        stop = true;
        failStop = ring.i32At(r.at) === 1;
        return;
    }
  };

  const preloaded = preload(task);
  post({ type: 'ready', shard: task.shard });
  try {
    while (!stop) {
      const n = ring.consume(onRecord);
      if (stop) break;
      if (retry.length) {
        const again = retry;
        retry = [];
        for (const f of again) if (processes.has(f.p.uffd)) serveFault(f.p, f.address, f.timeNs, true);
        if (retry.length && ring.available() === 0) ring.wait(AGAIN_WAIT_MS);
        continue;
      }
      if (restoreFinished && filling.length) {
        // Already running: pick up new faults ourselves instead of waiting for the main thread to
        // be woken and to wake us (two cross-vCPU wakes on this VM, ≈ 50 µs each).
        if (native.drain(task.epfd, [ring.bytes], task.shard)) {
          ring.consume(onRecord);
          if (stop) break;
        }
        // Then one background chunk per loop, even under a steady stream of faults, as CRIU's loop
        // does: "fill only when the ring is empty" starved the fill (random-1g: every page fetched
        // by its own fault); gating the fill to once per ms was worse still (13×); whole 1 MiB
        // chunks made every isolated fault wait ≈ 0.4 ms (the gate: p50 50× the baseline's).
        // One chunk for the next process that can take one; remote processes with a request
        // already on its way are 'busy' and skipped (their reply arrives through the ring).
        // Its slices stop early for a waiting fault once the fill's credit is spent.
        let sliceFrom = native.monotonicNs();
        const yieldNow = () => {
          const now = native.monotonicNs();
          fillCredit = Math.max(0, fillCredit - (now - sliceFrom));
          sliceFrom = now;
          return fillCredit === 0 && faultWaiting();
        };
        let outcome: ReturnType<LazyProcess['fillNext']> = 'busy';
        let p: LazyProcess | undefined;
        for (let tries = 0; tries < filling.length && outcome === 'busy'; tries++) {
          fillIndex = fillIndex % filling.length;
          p = filling[fillIndex++];
          outcome = p.fillNext(yieldNow);
        }
        if (outcome === 'busy') ring.wait(IDLE_WAIT_MS);
        else if (outcome === 'again') ring.wait(AGAIN_WAIT_MS);
        else settle(p!, outcome === 'empty' ? 'ok' : outcome);
        continue;
      }
      if (n > 0) continue;
      ring.wait(IDLE_WAIT_MS);
    }
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    // Wait for the main thread's STOP so that fail-stop can still poison what this shard misses.
    while (!stop) {
      ring.consume((r) => {
        if (r.kind === RecordKind.STOP) {
          stop = true;
          failStop = ring.i32At(r.at) === 1;
        }
      });
      if (!stop) ring.wait(IDLE_WAIT_MS);
    }
  }
  let poisonedPages = 0;
  if (failStop) for (const p of processes.values()) poisonedPages += p.poisonRemaining();
  for (const p of processes.values()) for (const k of Object.keys(totals) as (keyof ProcessCounters)[]) totals[k] += p.counters[k];
  for (const p of processes.values()) if (p.trace) traces.push({ pid: p.pid, pages: p.trace });
  return { shard: task.shard, latency: hdr.encodeIntoCompressedBase64(latency), totals, poisonedPages, traces };
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
function preload(task: WorkerTask): Map<number, Preloaded | Error> {
  const out = new Map<number, Preloaded | Error>();
  for (const pid of task.preloadPids) {
    try {
      const pages = openLocalProcess(task.imagesDir, pid, !!task.arena);
      out.set(pid, { ...pages, map: LazyProcess.mapOf(pages.lazyRanges) });
    } catch (e) {
      out.set(pid, e as Error);
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
