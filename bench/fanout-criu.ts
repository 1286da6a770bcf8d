// Real CRIU in the fan-out bench (bench/fanout.ts): one `criu dump` of native/bin/faultline-workload,
// restored N times at once with `criu restore --lazy-pages`, each restore served by its own `criu
// lazy-pages`, its own stand-alone `faultline lazy-pages`, or a client of one `faultline serve`
// (faultline-engine-client, or `lazy-pages --engine` with --engine-client node). Every restored process verifies every word of its memory right after restore.
//
// N restores of one dump at once do not collide: criu restores the dumped pid namespace, so every
// tree has its own; every restore has its own work dir (socket, logs, pidfile, -W); and the dumped
// processes write their results to the directory path they had at dump time, so every `criu restore`
// runs in a private mount namespace (unshare -m) in which that path is bind-mounted over the
// restore's own results directory. The trees inherit that namespace; the dump is only read.
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuDump, criuRestoreLazy, firstCriuError, startLazyDaemon, stderrReason, type DaemonExit, type LazyDaemon } from '../src/criu/run';
import { expectedPages, killTree, signalTree, startWorkload, waitResults, type WorkloadResult } from '../src/criu/workload';
import { CLIENT_NAME, type EngineClient, type EngineProcess, fanoutRound, type FanoutRun, killLeftovers, nowMs, pct, procCpuMs, type ProcSampler, readTimed, reduceRows, type RestoreRow, round, timedWrap } from './fanout-measure';
import { descendants } from '../src/criu/workload';

export interface FanoutDump {
  images: string;
  /** where the dumped tree writes result-<index>.json (baked into its memory) */
  out: string;
  procs: number;
  mib: number;
  threads: number;
  dumpMs: number;
}

/** Starts the workload (action verify) and dumps it with criu; the dump serves every restore. */
export async function dumpForFanout(root: string, o: { procs: number; mib: number; threads: number }): Promise<FanoutDump> {
  fs.rmSync(root, { recursive: true, force: true });
  const out = path.join(root, 'out');
  const images = path.join(root, 'images');
  const w = await startWorkload({ dir: out, procs: o.procs, mib: o.mib, threads: o.threads, action: 'verify', seed: 7, readyTimeoutMs: 180_000 });
  try {
    const { dumpMs } = await criuDump(w.rootPid, images, { timeoutMs: 300_000 });
    return { images, out, ...o, dumpMs };
  } finally {
    // criu dump kills the tree when it succeeds; this is for one that failed
    await killTree(w.rootPid, w.rootStartTime).catch(() => undefined);
  }
}

/** `criu restore` in its own mount namespace, where the dumped results path is the restore's own dir. */
function bindWrap(own: string, dumped: string): string[] {
  return ['unshare', '-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" "$2" && shift 2 && exec "$@"', 'fl-fanout-bind', own, dumped];
}

function readIf(file: string | undefined): string {
  try {
    return file ? fs.readFileSync(file, 'utf8') : '';
  } catch {
    return '';
  }
}

function daemonFailure(d: LazyDaemon, name: string, e: DaemonExit): string | undefined {
  const logErr = d.kind === 'criu' ? firstCriuError(readIf(d.logFile)) : undefined;
  if (e.code === 0 && !logErr) return undefined;
  return `${name} exited ${e.code ?? e.signal}: ${logErr ?? e.error ?? stderrReason(e.stderr) ?? 'no error line'}`;
}

function verification(d: FanoutDump, results: WorkloadResult[]): string | undefined {
  if (results.length !== d.procs) return `${results.length} results for ${d.procs} processes`;
  for (const r of results) {
    if (r.mismatches !== 0) return `process ${r.index}: ${r.mismatches} mismatches (first at ${r.first_mismatch})`;
    if (r.error) return `process ${r.index}: ${r.error}`;
    if (r.pages !== expectedPages(d.mib, 'verify', r.index)) return `process ${r.index}: ${r.pages} pages verified, expected ${expectedPages(d.mib, 'verify', r.index)}`;
    if (!r.ok) return `process ${r.index} reports not ok`;
  }
  return undefined;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no exit after ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

interface CriuRow extends RestoreRow {
  /** per process: SIGUSR1 → first verified word, ms */
  firstTouchMs: number[];
  /** first start → the last process verified everything */
  doneMs?: number;
}

/** One restore of the dump, concurrent with the others; never throws (a failure is in the row). */
async function restoreOne(d: FanoutDump, setup: FanoutRun['setup'], work: string, i: number, t0: number, engine?: EngineProcess, sampler?: ProcSampler, wrappers: ChildProcess[] = [], client: EngineClient = 'c'): Promise<CriuRow> {
  const row: CriuRow = { i, ok: false, endMs: NaN, cpuMs: 0, maxRssKiB: 0, verifiedPages: 0, mismatches: 0, firstTouchMs: [] };
  fs.rmSync(work, { recursive: true, force: true });
  const out = path.join(work, 'out');
  fs.mkdirSync(out, { recursive: true });
  const timesFile = path.join(work, 'daemon.times');
  const restoreTimesFile = path.join(work, 'restore.times');
  const name = setup === 'criu' ? 'criu lazy-pages' : setup === 'engine' ? CLIENT_NAME[client].replace(/`/g, '') : 'faultline lazy-pages';
  let lazy: LazyDaemon | undefined;
  let restored: { rootHostPid: number; rootStartTime?: string } | undefined;
  try {
    lazy = startLazyDaemon(setup === 'criu' ? 'criu' : 'faultline', { imagesDir: d.images, workDir: work, wrap: timedWrap(timesFile), extraArgs: engine ? ['--engine', engine.socket] : [], engineClient: !!engine && client === 'c' });
    wrappers.push(lazy.child);
    sampler?.track(i, lazy.pid);
    await lazy.ready;
    sampler?.sample();
    let ended: DaemonExit | undefined;
    void lazy.exit.then((e) => (ended = e));
    const r = await criuRestoreLazy(d.images, { workDir: work, wrap: [...timedWrap(restoreTimesFile), ...bindWrap(out, d.out)], timeoutMs: 300_000 });
    restored = r;
    signalTree(r.rootHostPid, 'SIGUSR1');
    const results = await waitResults(out, d.procs, 600_000, () => (ended ? daemonFailure(lazy!, name, ended) : undefined));
    const e = await withTimeout(lazy.exit, 600_000, name);
    row.verifiedPages = results.reduce((a, x) => a + x.pages, 0);
    row.mismatches = results.reduce((a, x) => a + x.mismatches, 0);
    row.firstTouchMs = results.map((x) => (x.t_first_verified_ns - x.t_signal_ns) / 1e6);
    row.doneMs = Math.max(...results.map((x) => x.t_done_ns / 1e6)) - t0;
    // the tree's own CPU: criu restore's (and the restorer's it waited for), then the detached tree's,
    // read while it still lives (each process's stat counts its exited threads)
    const restoreCpu = readTimed(restoreTimesFile)?.cpuMs;
    if (restoreCpu !== undefined) row.treeCpuMs = restoreCpu + [r.rootHostPid, ...descendants(r.rootHostPid)].reduce((a, p) => a + procCpuMs(p), 0);
    const why = daemonFailure(lazy, name, e) ?? verification(d, results);
    if (why) return { ...row, error: why };
    const t = readTimed(timesFile);
    if (!t) return { ...row, error: `${name}: no timing from the wrapper in ${timesFile}` };
    const own = setup === 'standalone' ? (e.summary?.maxRssKiB ?? 0) : 0;
    return {
      ...row,
      ok: true,
      endMs: t.endMs - t0,
      ...(e.summary ? { timeToRestoredMs: e.summary.timeToRestoredMs } : {}),
      cpuMs: t.cpuMs,
      maxRssKiB: Math.max(t.maxRssKiB ?? 0, own, sampler?.hwmKiB(i) ?? 0),
    };
  } catch (err) {
    return { ...row, error: (err as Error).message };
  } finally {
    if (restored) await killTree(restored.rootHostPid, restored.rootStartTime).catch(() => undefined);
    if (lazy) killLeftovers([lazy.child]);
  }
}

export interface CriuFanoutOptions {
  work: string;
  coldEngine: boolean;
  engineClient: EngineClient;
  log: (line: string) => void;
}

/** Warms the page cache and every binary with one unmeasured restore served by criu lazy-pages. */
export async function warmCriu(d: FanoutDump, o: CriuFanoutOptions): Promise<void> {
  const dir = path.join(o.work, 'criu-warm');
  const r = await restoreOne(d, 'criu', dir, 0, nowMs());
  if (!r.ok) throw new Error(`real CRIU warm-up restore (criu lazy-pages) failed: ${r.error}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

/** N concurrent `criu restore --lazy-pages` of the dump, served the way `setup` says. */
export async function runCriuFanout(d: FanoutDump, setup: FanoutRun['setup'], n: number, o: CriuFanoutOptions): Promise<FanoutRun> {
  const root = path.join(o.work, `criu-${setup}-${n}`);
  fs.rmSync(root, { recursive: true, force: true });
  const { rows, totals, warmup } = await fanoutRound({
    root,
    n,
    engine: setup === 'engine',
    coldEngine: !!o.coldEngine,
    log: o.log,
    warm: (e) => restoreOne(d, 'engine', path.join(root, 'warm'), 0, nowMs(), e, undefined, [], o.engineClient),
    restore: (i, t0, engine, sampler, wrappers) => restoreOne(d, setup, path.join(root, `r${i}`), i, t0, engine, sampler, wrappers, o.engineClient),
  });
  const touches = rows.flatMap((r) => r.firstTouchMs.map((ms) => ms * 1000));
  const base = reduceRows(rows);
  const done = rows.map((r) => r.doneMs).filter((x): x is number => typeof x === 'number');
  const run: FanoutRun = {
    group: 'criu',
    setup,
    n,
    ...base,
    ...(done.length ? { allVerifiedMs: round(Math.max(...done)) } : {}),
    firstTouchUs: {
      what: "per restored process: SIGUSR1 → its first verified word (the workload's t_first_verified_ns − t_signal_ns), over every process of every restore",
      count: touches.length,
      p50: round(pct(touches, 50)),
      p99: round(pct(touches, 99)),
      max: round(Math.max(...touches)),
    },
    ...totals,
    ...(warmup !== undefined ? { warmup } : {}),
    restores: rows.map(({ firstTouchMs: _f, doneMs: _d, ...r }) => ({ ...r, endMs: round(r.endMs), cpuMs: round(r.cpuMs) })),
  };
  if (run.ok) fs.rmSync(root, { recursive: true, force: true });
  return run;
}
