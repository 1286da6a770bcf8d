// The real-CRIU bench scenarios (issue 8, point 6) and one restore of one of them: the project's
// workload tree is dumped by `criu dump`, then restored with `criu restore --lazy-pages` while a
// lazy-pages daemon serves it: CRIU's own (`criu lazy-pages`), faultline's, or the C baseline.
// Every run is verified by the restored processes themselves (native/workload/workload.c); a run
// whose verification or daemon fails is reported as failed and never measured.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuRestoreLazy, firstCriuError, startLazyDaemon, startPageServer, stderrReason, ROOT, type LazyDaemon } from '../src/criu/run';
import { descendants, expectedPages, killTree, signalTree, waitResults, type WorkloadAction, type WorkloadResult } from '../src/criu/workload';
import { startDaemon } from '../src/target/run';
import { writeTargetPlan } from '../src/target/plan';
import { nowMs, readTimed } from './fanout-measure';

/** Extra flags for faultline's daemon in the local scenarios (A/B runs of a tuning flag). */
const DAEMON_ARGS = (process.env.FAULTLINE_BENCH_DAEMON_ARGS ?? '').split(' ').filter(Boolean);

/**
 * The daemons compared. 'baseline' is native/bin/faultline-baseline (CRIU's policy in small C) fed a
 * plan rendered from the real dump: it speaks the same lazy-pages.socket protocol, so it can serve a
 * real `criu restore --lazy-pages`. It has no page-server client, so it is local only.
 */
export type CriuBenchDaemon = 'criu' | 'faultline' | 'baseline';

export interface CriuScenario {
  name: string;
  what: string;
  procs: number;
  /** Private memory per process, MiB (the workload's --mib). */
  mib: number;
  threads: number;
  action: WorkloadAction;
  /**
   * 'drain': nothing touches the memory while the daemon copies it; the tree verifies all of it
   * only after the daemon exited (unmeasured, but a run still fails on a mismatch).
   * 'signal': the tree runs its action right after `criu restore` returned.
   */
  mode: 'drain' | 'signal';
  remote: boolean;
  daemons: CriuBenchDaemon[];
}

export const REMOTE_DELAY_MS = 2;

export function criuScenarios(quick: boolean): CriuScenario[] {
  const big = quick ? 256 : 1024;
  const tree = quick ? 64 : 256;
  const remote = quick ? 32 : 64;
  return [
    {
      name: 'criu-idle-1g',
      what: `one idle process of ${big} MiB: restore, no access, time until the daemon has copied everything and exits (drain); verified afterwards`,
      procs: 1,
      mib: big,
      threads: 0,
      action: 'verify',
      mode: 'drain',
      remote: false,
      daemons: ['criu', 'faultline', 'baseline'],
    },
    {
      name: 'criu-touch10-1g',
      what: `one process of ${big} MiB that verifies 10 % of its pages in random order right after restore, then idles (a server after restore)`,
      procs: 1,
      mib: big,
      threads: 0,
      action: 'touch:10',
      mode: 'signal',
      remote: false,
      daemons: ['criu', 'faultline', 'baseline'],
    },
    {
      name: 'criu-tree4-verify',
      what: `4-process tree × ${tree} MiB, 2 threads each, verifying every word right after restore`,
      procs: 4,
      mib: tree,
      threads: 2,
      action: 'verify',
      mode: 'signal',
      remote: false,
      daemons: ['criu', 'faultline', 'baseline'],
    },
    {
      name: 'criu-remote-2ms',
      what:
        `4-process tree × ${remote} MiB verifying every word, pages fetched over veth (fl-src → fl-dst) with +${REMOTE_DELAY_MS} ms each way (emulated relay): ` +
        '`criu page-server --lazy-pages` + `criu lazy-pages --page-server` against `faultline page-server --lazy-pages` + `faultline lazy-pages --page-server`',
      procs: 4,
      mib: remote,
      threads: 2,
      action: 'verify',
      mode: 'signal',
      remote: true,
      // the baseline reads local pages files only
      daemons: ['criu', 'faultline'],
    },
  ];
}

/** One verified run, or why it failed. Times are ms from the start of `criu restore`. */
export interface CriuRunMetrics {
  ok: boolean;
  error?: string;
  /** `criu restore --lazy-pages -d` start to exit (the tree runs from then on). */
  restoreMs: number;
  /** restore start → the lazy-pages daemon exited (everything copied). */
  daemonExitMs: number;
  /** restore start → the first page a restored process verified (null: nothing touched it, drain). */
  firstVerifiedMs: number | null;
  /** The lazy-pages daemon's spawn → its --status-fd byte (ready: `criu restore` may start). */
  startToReadyMs: number;
  /**
   * Daemon spawn → the first page a restored process verified: start-up, `criu restore` (started as
   * soon as the daemon is ready) and the first fault served (null for drain).
   */
  startToFirstVerifiedMs: number | null;
  /**
   * Daemon spawn → the daemon's first fault served, from its own log or summary: criu's -v4 log
   * (seconds since its start) at its first `#PF`; faultline's summary when it reports it. Absent when
   * the daemon does not say.
   */
  startToFirstFaultMs?: number;
  /**
   * The first hand-over the daemon received → its first fault, from its own log or summary: criu's
   * -v4 "Received PID" line to its first "#PF" line; faultline's `handoverToFirstFaultMs`. Absent
   * when the daemon does not say (no fault: a drain).
   */
  handoverToFirstFaultMs?: number;
  /** restore start → the last process finished its action (null for drain). */
  actionDoneMs: number | null;
  /** utime + stime of the lazy-pages daemon and every child it waited for (bash `times`). */
  daemonCpuMs: number;
  /** remote only: the same for the page server on the source side. */
  serverCpuMs?: number;
  /** pages the restored processes verified (all processes). */
  verifiedPages: number;
  /** faultline's own summary, when it is the daemon. */
  faultline?: { faults: number; pagesByFault: number; pagesByFill: number; lazyPages: number; cpuMs: number };
}

// The daemon runs as a child of bash, which records, right after the daemon exits, the wall clock
// ($EPOCHREALTIME, no fork) and the CPU time of its waited-for children (`times`, from
// getrusage(RUSAGE_CHILDREN)). That covers every thread and every child the daemon reaps, which
// polling /proc/<pid>/stat cannot do without losing the CPU spent after the last poll. fd 3 (the
// --status-fd pipe) passes through bash unchanged.
const TIMED = 'f=$1; shift; "$@"; rc=$?; end=$EPOCHREALTIME; { echo "end $end"; times; } > "$f"; exit $rc';

function timedWrap(file: string, prefix: string[] = []): string[] {
  return [...prefix, 'bash', '-c', TIMED, 'fl-timed', file];
}

/** A started daemon of any kind, behind one small interface. */
interface Started {
  child: ChildProcess;
  ready: Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
  timesFile: string;
  logFile?: string;
  name: string;
}

function fromLazyDaemon(d: LazyDaemon, timesFile: string, name: string): Started {
  return { child: d.child, ready: d.ready, exit: d.exit, timesFile, logFile: d.logFile, name };
}

/** Kills a wrapped daemon: what bash runs first (its descendants), then bash. */
async function stop(s: Started | undefined): Promise<void> {
  if (!s?.child.pid || s.child.exitCode !== null || s.child.signalCode !== null) return;
  for (const p of descendants(s.child.pid).reverse()) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  s.child.kill('SIGKILL');
  await Promise.race([s.exit, sleep(5000)]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no exit after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function readIf(file: string | undefined): string {
  try {
    return file ? fs.readFileSync(file, 'utf8') : '';
  } catch {
    return '';
  }
}

/** Why a daemon's exit is a failure, or undefined when it exited 0 with nothing wrong in its log. */
function daemonFailure(s: Started, e: { code: number | null; signal: NodeJS.Signals | null; stderr: string }): string | undefined {
  const logErr = s.logFile ? firstCriuError(readIf(s.logFile)) : undefined;
  if (e.code === 0 && !logErr) return undefined;
  return `${s.name} exited ${e.code ?? e.signal}: ${logErr ?? stderrReason(e.stderr) ?? 'no error line'}`;
}

/** Names, sizes and mtimes of the dump: a restore that changed any of them consumed the images. */
export function fingerprint(imagesDir: string): string {
  return fs
    .readdirSync(imagesDir)
    .sort()
    .map((f) => {
      const st = fs.statSync(path.join(imagesDir, f));
      return `${f} ${st.size} ${st.mtimeMs}`;
    })
    .join('\n');
}

/** Where a scenario's dump lives and how to reach it. */
export interface DumpedScenario {
  s: CriuScenario;
  /** The dump. */
  images: string;
  /** The results directory the dumped tree writes to (its path is part of the dump). */
  out: string;
  /** remote: the restoring side's copy (every file but the pages files copied, those hard-linked). */
  dstImages?: string;
}

export interface RemoteNet {
  src: string[];
  dst: string[];
  srcIp: string;
  nextPort(): number;
}

const DELAY_RELAY = path.join(ROOT, 'scripts/delay-relay.mjs');

/** The relay from srcIp:<any> to srcIp:port inside the source namespace; resolves with its port. */
async function startRelay(net: RemoteNet, port: number): Promise<{ port: number; child: ChildProcess }> {
  const child = spawn(net.src[0], [...net.src.slice(1), process.execPath, DELAY_RELAY, '--listen', `${net.srcIp}:0`, '--to', `${net.srcIp}:${port}`, '--delay-ms', String(REMOTE_DELAY_MS)], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  const listening = await withTimeout(
    new Promise<number>((resolve, reject) => {
      let seen = '';
      child.stderr!.on('data', (d: Buffer) => {
        seen += String(d);
        const m = /listening on .*:(\d+)/.exec(seen);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (c) => reject(new Error(`delay-relay exited ${c}: ${seen.trim()}`)));
    }),
    10_000,
    'delay-relay',
  );
  return { port: listening, child };
}

/**
 * One restore of a dumped scenario with one daemon. Never throws for a failed run: the failure is
 * in the result (ok false, error), and everything started here is stopped before it returns.
 */
export async function runOnce(d: DumpedScenario, daemon: CriuBenchDaemon, work: string, net?: RemoteNet): Promise<CriuRunMetrics> {
  const s = d.s;
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  // The tree writes its results where it wrote them before the dump: clear the last run's.
  for (const f of fs.readdirSync(d.out)) if (f.startsWith('result-')) fs.rmSync(path.join(d.out, f));
  const images = s.remote ? d.dstImages! : d.images;
  const failed = (error: string): CriuRunMetrics => ({
    ok: false,
    error,
    restoreMs: NaN,
    daemonExitMs: NaN,
    firstVerifiedMs: null,
    startToReadyMs: NaN,
    startToFirstVerifiedMs: null,
    actionDoneMs: null,
    daemonCpuMs: NaN,
    verifiedPages: 0,
  });

  let lazy: Started | undefined;
  let server: Started | undefined;
  let relay: ChildProcess | undefined;
  let restored: { rootHostPid: number; rootStartTime?: string } | undefined;
  let spawnAt = NaN;
  try {
    const timesFile = path.join(work, 'daemon.times');
    if (s.remote) {
      if (!net) throw new Error('remote scenario without network namespaces');
      if (daemon === 'baseline') throw new Error('the C baseline has no page-server client');
      const srcWork = path.join(work, 'src');
      fs.mkdirSync(srcWork);
      const port = net.nextPort();
      const serverTimes = path.join(work, 'server.times');
      server = fromLazyDaemon(
        startPageServer(daemon, { imagesDir: d.images, workDir: srcWork, address: net.srcIp, port, wrap: timedWrap(serverTimes, net.src) }),
        serverTimes,
        `${daemon} page-server`,
      );
      await server.ready;
      const r = await startRelay(net, port);
      relay = r.child;
      spawnAt = nowMs();
      lazy = fromLazyDaemon(
        startLazyDaemon(daemon, { imagesDir: images, workDir: work, pageServer: { address: net.srcIp, port: r.port }, wrap: timedWrap(timesFile, net.dst) }),
        timesFile,
        `${daemon} lazy-pages --page-server`,
      );
    } else if (daemon === 'baseline') {
      writeTargetPlan(images, path.join(work, 'target.plan'), path.join(work, 'lazy-pages.socket'));
      // startDaemon resolves once the baseline listens, so ready is already settled
      spawnAt = nowMs();
      const b = await startDaemon(images, work, [], 'baseline', undefined, timedWrap(timesFile));
      lazy = { child: b.child, ready: Promise.resolve(), exit: b.exit, timesFile, name: 'faultline-baseline' };
    } else {
      spawnAt = nowMs();
      lazy = fromLazyDaemon(startLazyDaemon(daemon, { imagesDir: images, workDir: work, wrap: timedWrap(timesFile), ...(daemon === 'faultline' ? { extraArgs: DAEMON_ARGS } : {}) }), timesFile, `${daemon} lazy-pages`);
    }
    await lazy.ready;
    const readyAt = nowMs();
    const lazyExit = lazy.exit;
    let lazyEnded: { code: number | null; signal: NodeJS.Signals | null; stderr: string } | undefined;
    void lazyExit.then((e) => (lazyEnded = e));

    const r = await criuRestoreLazy(images, { workDir: work, wrap: s.remote ? net!.dst : undefined, timeoutMs: 120_000 });
    restored = r;
    const check = () => (lazyEnded ? daemonFailure(lazy!, lazyEnded) : undefined);
    if (s.mode === 'signal') signalTree(r.rootHostPid, 'SIGUSR1');
    else {
      // drain: the daemon copies everything while nothing runs; verify once it is done
      const e = await withTimeout(lazyExit, 300_000, lazy.name);
      const why = daemonFailure(lazy, e);
      if (why) return failed(why);
      signalTree(r.rootHostPid, 'SIGUSR1');
    }
    const results = await waitResults(d.out, s.procs, 300_000, check);
    const e = await withTimeout(lazyExit, 300_000, lazy.name);
    const why = daemonFailure(lazy, e);
    if (why) return failed(why);
    const bad = verificationFailure(s, results);
    if (bad) return failed(bad);
    const t = readTimed(lazy.timesFile);
    if (!t) return failed(`${lazy.name}: no timing from the wrapper in ${lazy.timesFile}`);
    let serverCpuMs: number | undefined;
    if (server) {
      const se = await withTimeout(server.exit, 60_000, server.name);
      const swhy = daemonFailure(server, se);
      if (swhy) return failed(swhy);
      serverCpuMs = readTimed(server.timesFile)?.cpuMs;
      if (serverCpuMs === undefined) return failed(`${server.name}: no timing from the wrapper`);
    }
    const summary = daemon === 'faultline' && 'summary' in (e as object) ? (e as { summary?: FaultlineSummary }).summary : undefined;
    const firstVerifiedAt = s.mode === 'drain' ? null : Math.min(...results.map((x) => x.t_first_verified_ns)) / 1e6;
    const criuLog = daemon === 'criu' ? readIf(lazy.logFile) : '';
    const startToFirstFaultMs = daemon === 'criu' ? criuFirstFaultMs(criuLog) : summary?.startToFirstFaultMs;
    const handoverToFirstFaultMs = daemon === 'criu' ? criuHandoverToFirstFaultMs(criuLog) : summary?.handoverToFirstFaultMs;
    return {
      ok: true,
      restoreMs: r.restoreMs,
      daemonExitMs: t.endMs - r.startedAt,
      firstVerifiedMs: firstVerifiedAt === null ? null : firstVerifiedAt - r.startedAt,
      startToReadyMs: readyAt - spawnAt,
      startToFirstVerifiedMs: firstVerifiedAt === null ? null : firstVerifiedAt - spawnAt,
      ...(startToFirstFaultMs !== undefined ? { startToFirstFaultMs } : {}),
      ...(handoverToFirstFaultMs !== undefined ? { handoverToFirstFaultMs } : {}),
      actionDoneMs: s.mode === 'drain' ? null : Math.max(...results.map((x) => x.t_done_ns)) / 1e6 - r.startedAt,
      daemonCpuMs: t.cpuMs,
      ...(serverCpuMs !== undefined ? { serverCpuMs } : {}),
      verifiedPages: results.reduce((a, x) => a + x.pages, 0),
      ...(summary ? { faultline: { faults: summary.faults, pagesByFault: summary.pagesByFault, pagesByFill: summary.pagesByFill, lazyPages: summary.lazyPages, cpuMs: summary.cpuMs } } : {}),
    };
  } catch (err) {
    return failed((err as Error).message);
  } finally {
    if (restored) await killTree(restored.rootHostPid, restored.rootStartTime).catch(() => undefined);
    await stop(lazy);
    await stop(server);
    // the relay also exits when its stdin closes, whatever `ip netns exec` did with the signal
    relay?.stdin?.end();
    relay?.kill('SIGTERM');
  }
}

type FaultlineSummary = { faults: number; pagesByFault: number; pagesByFill: number; lazyPages: number; cpuMs: number; startToFirstFaultMs?: number; handoverToFirstFaultMs?: number };

/**
 * criu lazy-pages at -v4: each line starts with "(SS.UUUUUU)", the time since criu started, and a
 * fault it handles logs "#PF at 0x…" (criu/uffd.c) as it starts serving it. The first one's time, in
 * ms, or undefined without one.
 */
export function criuFirstFaultMs(log: string): number | undefined {
  return criuLineMs(log, /^\((\d+)\.(\d{6})\)[^\n]*#PF/m);
}

/**
 * The same log's first hand-over ("Received PID: N, uffd: M", criu/uffd.c's ud_open, -v4) → its
 * first `#PF`, in ms; undefined without both (a drain has no fault).
 */
export function criuHandoverToFirstFaultMs(log: string): number | undefined {
  const handover = criuLineMs(log, /^\((\d+)\.(\d{6})\)[^\n]*Received PID: \d+/m);
  const fault = criuFirstFaultMs(log);
  return handover === undefined || fault === undefined ? undefined : Math.round((fault - handover) * 1000) / 1000;
}

function criuLineMs(log: string, re: RegExp): number | undefined {
  const m = re.exec(log);
  return m ? Number(m[1]) * 1000 + Number(m[2]) / 1000 : undefined;
}

/** Every process reported, with 0 mismatches, no failed call and exactly the pages it should have verified. */
function verificationFailure(s: CriuScenario, results: WorkloadResult[]): string | undefined {
  if (results.length !== s.procs) return `verification: ${results.length} results for ${s.procs} processes`;
  for (const r of results) {
    const want = expectedPages(s.mib, s.action, r.index);
    if (r.mismatches !== 0) return `verification: process ${r.index}: ${r.mismatches} mismatches (first at ${r.first_mismatch})`;
    if (r.error) return `verification: process ${r.index}: ${r.error}`;
    if (r.pages !== want) return `verification: process ${r.index}: ${r.pages} pages verified, expected ${want}`;
    if (!r.ok) return `verification: process ${r.index} reports not ok`;
  }
  return undefined;
}
