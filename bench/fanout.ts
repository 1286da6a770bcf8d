// npm run bench:fanout [-- --quick] [--n 1,8,32] [--json] [--no-criu] [--criu-max-n 8] [--cold-engine] [--engine-client c|node] [--out FILE]
// restore-fanout (issue 11, item 4): N concurrent restores of one checkpoint, in the same invocation
//  - target: a generated checkpoint restored by faultline's restore target (native/bin/faultline-target,
//    which verifies every page) through one `faultline serve` ('engine': N clients, by default
//    native/bin/faultline-engine-client, with --engine-client node `faultline lazy-pages --engine`)
//    and through N stand-alone `faultline lazy-pages` daemons, all N started at once;
//  - real CRIU: one `criu dump` of the self-verifying workload restored N times at once by `criu
//    restore --lazy-pages`, served by N `criu lazy-pages`, N stand-alone faultline daemons, or the engine
//    (bench/fanout-criu.ts).
// Per set-up and N: the time from the first start until every daemon (or engine client) exited, each
// restore complete; first-touch p99 over all restores; the daemons' total CPU and peak RSS (the engine:
// its one process; see bench/fanout-measure.ts for how each is read); and the ratios. Every restore
// is verified; a run with a failure is reported as failed and exits 1. See docs/notes-fanout.md.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { Command } from 'commander';
import { newHistogram, type Histogram } from '../src/protocol/histogram';
import { findCriu } from '../src/criu/find';
import { ROOT, whilePipeMaxSizeRaised } from '../src/criu/run';
import { TARGET, runRestore, type RestoreResult, type TargetOptions } from '../src/target/run';
import { checkUffdAvailable } from '../src/cli/preflight';
import type { GenerateSpec } from '../src/images';
import { imagesFor } from './harness';
import { dumpForFanout, runCriuFanout, warmCriu, type FanoutDump } from './fanout-criu';
import { CLIENT_NAME, type EngineClient, type EngineProcess, fanoutRound, type FanoutRun, HAS_GNU_TIME, nowMs, type ProcSampler, readTimed, reduceRows, type RestoreRow, round, timedWrap } from './fanout-measure';

const PAGES_PER_MIB = 256;
const BASE = 0x2000_0000_0000;
const TARGET_WRITES_LATENCIES = spawnSync(TARGET, ['--help'], { encoding: 'utf8' }).stdout?.includes('--latency-file') ?? false;

/** The checkpoint: 4 processes sharing `mib` MiB of dense memory (generated, fixed seeds). */
function checkpoint(mib: number): GenerateSpec {
  const n = 4;
  const pages = Math.floor((mib * PAGES_PER_MIB) / n);
  return { processes: Array.from({ length: n }, (_, i) => ({ pid: i + 1, ppid: i ? 1 : 0, regions: [{ name: 'dense', start: BASE, pages, kind: 'dense' as const, seed: 41 + i }] })) };
}

/** Each restored process: 2 threads touch a quarter of its pages at random while the daemon fills the rest; every page is verified after. */
const TOUCH: TargetOptions = { threads: 2, pattern: 'random', fraction: 0.25, seed: 5 };

export interface FanoutReport {
  date: string;
  command: string;
  machine: { cpus: number; kernel: string; node: string; memMiB: number };
  quick: boolean;
  /** what each engine restore's client was: native/bin/faultline-engine-client ('c') or `faultline lazy-pages --engine` ('node') */
  engineClient: EngineClient;
  ns: number[];
  checkpoint: { mib: number; what: string };
  criu: { bin: string; version: string; ns: number[]; dump: { procs: number; mib: number; threads: number; dumpMs: number } } | { skipped: string };
  measured: string[];
  runs: FanoutRun[];
  ratios: Ratio[];
  targets: TargetCheck[];
}

export interface Ratio {
  group: FanoutRun['group'];
  n: number;
  key: string;
  label: string;
  unit: string;
  engine: number;
  standalone?: number;
  criu?: number;
  engineToStandalone?: number;
  engineToCriu?: number;
}

export interface TargetCheck {
  what: string;
  ratio?: number;
  limit: number;
  met?: boolean;
  note?: string;
}

interface Ctx {
  work: string;
  coldEngine: boolean;
  engineClient: EngineClient;
  log: (line: string) => void;
}

function failedRun(group: FanoutRun['group'], setup: FanoutRun['setup'], n: number, error: string): FanoutRun {
  return { group, setup, n, ok: false, errors: [error], allRestoredMs: NaN, firstTouchUs: { what: '', count: 0, p50: NaN, p99: NaN, max: NaN }, daemonCpuMs: NaN, daemonPeakRssMiB: NaN, daemonPeakAnonMiB: NaN, verifiedPages: 0, mismatches: 0, restores: [] };
}

/** Reads and removes one restore's latency files (u64 ns per first touch) into the histogram. */
function readLatencies(workDir: string, into: Histogram): number {
  let n = 0;
  for (const f of fs.readdirSync(workDir).filter((x) => x.startsWith('lat.') && x.endsWith('.lat'))) {
    const b = fs.readFileSync(path.join(workDir, f));
    for (let i = 0; i + 8 <= b.length; i += 8, n++) into.recordValue(Math.max(1, Number(b.readBigUInt64LE(i))));
    fs.rmSync(path.join(workDir, f));
  }
  return n;
}

/** One restore through the restore target, measured; never throws. */
async function targetRestore(images: string, work: string, i: number, t0: number, hist: Histogram, setup: 'engine' | 'standalone', engine?: EngineProcess, sampler?: ProcSampler, wrappers: ChildProcess[] = [], client: EngineClient = 'c'): Promise<RestoreRow> {
  const timesFile = `${work}.times`;
  const row: RestoreRow = { i, ok: false, endMs: NaN, cpuMs: 0, maxRssKiB: 0, verifiedPages: 0, mismatches: 0 };
  let r: RestoreResult;
  try {
    fs.rmSync(work, { recursive: true, force: true });
    r = await runRestore({
      imagesDir: images,
      workDir: work,
      daemon: engine && client === 'c' ? 'engine-client' : 'faultline',
      daemonArgs: engine ? ['--engine', engine.socket] : [],
      daemonWrap: timedWrap(timesFile),
      target: { ...TOUCH, ...(TARGET_WRITES_LATENCIES ? { latencyFile: path.join(work, 'lat') } : {}) },
      timeoutMs: 900_000,
      onStarted: (daemon) => {
        wrappers.push(daemon);
        sampler?.track(i, daemon.pid);
        // it is ready (runRestore starts the target once it is): alive, and sampled at least once
        sampler?.sample();
      },
    });
  } catch (e) {
    return { ...row, error: (e as Error).message };
  }
  const s = r.daemon.summary;
  const t = r.target.summary;
  if (TARGET_WRITES_LATENCIES) readLatencies(work, hist);
  else for (const p of r.target.processes) if (p.latencyNs.count) hist.recordValueWithCount(Math.max(1, p.latencyNs.p50), p.latencyNs.count);
  row.verifiedPages = t?.verified ?? 0;
  row.mismatches = t?.mismatches ?? 0;
  const timed = readTimed(timesFile);
  const last = (x: string) => x.trim().split('\n').pop();
  const error =
    r.daemon.code !== 0 || !s ? `daemon exit ${r.daemon.code ?? r.daemon.signal}: ${r.daemon.error ?? last(r.daemon.stderr)}`
    : r.target.code !== 0 || !t ? `restore target exit ${r.target.code ?? r.target.signal}: ${last(r.target.stderr)}`
    : t.mismatches !== 0 ? `${t.mismatches} pages differ from the checkpoint`
    : !timed ? `no timing from the wrapper in ${timesFile}`
    : undefined;
  if (error) return { ...row, error };
  return {
    ...row,
    ok: true,
    endMs: timed!.endMs - t0,
    timeToRestoredMs: s!.timeToRestoredMs,
    cpuMs: timed!.cpuMs,
    ...(t!.cpuMs !== undefined ? { treeCpuMs: t!.cpuMs } : {}),
    // a stand-alone daemon's own getrusage at its end is its peak; an engine client's summary is the engine's
    maxRssKiB: Math.max(timed!.maxRssKiB ?? 0, setup === 'standalone' ? s!.maxRssKiB : 0, sampler?.hwmKiB(i) ?? 0),
  };
}

async function runTargetFanout(images: string, setup: 'engine' | 'standalone', n: number, c: Ctx): Promise<FanoutRun> {
  const root = path.join(c.work, `target-${setup}-${n}`);
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true });
  const hist = newHistogram();
  const { rows, totals, warmup } = await fanoutRound({
    root,
    n,
    engine: setup === 'engine',
    coldEngine: c.coldEngine,
    log: c.log,
    warm: (e) => targetRestore(images, path.join(root, 'warm'), 0, nowMs(), newHistogram(), 'engine', e, undefined, [], c.engineClient),
    restore: (i, t0, engine, sampler, wrappers) => targetRestore(images, path.join(root, `r${i}`), i, t0, hist, setup, engine, sampler, wrappers, c.engineClient),
  });
  const us = (p: number) => round(hist.getValueAtPercentile(p) / 1000, 1);
  const run: FanoutRun = {
    group: 'target',
    setup,
    n,
    ...reduceRows(rows),
    firstTouchUs: {
      what: TARGET_WRITES_LATENCIES
        ? 'first touch of every page a restored thread touched (restore target --latency-file), over all restores'
        : 'per-process first-touch p50 weighted by touches (this restore target cannot write latency files)',
      count: hist.totalCount,
      p50: us(50),
      p99: us(99),
      max: round(hist.maxValue / 1000, 1),
    },
    ...totals,
    ...(warmup !== undefined ? { warmup } : {}),
    restores: rows.map((r) => ({ ...r, endMs: round(r.endMs), cpuMs: round(r.cpuMs) })),
  };
  if (run.ok) fs.rmSync(root, { recursive: true, force: true });
  return run;
}

const SETUP_NAME: Record<FanoutRun['setup'], string> = { engine: 'engine', standalone: 'stand-alone', criu: 'criu lazy-pages' };

function describe(r: FanoutRun): string {
  if (!r.ok) return `FAILED: ${r.errors.slice(0, 3).join('; ')}${r.errors.length > 3 ? ` (+${r.errors.length - 3} more)` : ''}`;
  const ttr = r.timeToRestoredMs ? `, hand-over → restored p50 ${r.timeToRestoredMs.p50} max ${r.timeToRestoredMs.max} ms` : '';
  const done = r.allVerifiedMs !== undefined ? `, all verified ${r.allVerifiedMs.toFixed(0)} ms` : '';
  const cl = r.clients ? ` (+ ${r.n} clients: ${r.clients.cpuMs.toFixed(0)} ms CPU, ${r.clients.peakRssMiB.toFixed(0)} MiB)` : '';
  return (
    `all restored in ${r.allRestoredMs.toFixed(0)} ms${ttr}${done}, first-touch p99 ${r.firstTouchUs.p99} µs, ` +
    `${r.setup === 'engine' ? 'engine' : 'daemons'} ${r.daemonCpuMs.toFixed(0)} ms CPU, peak RSS ${r.daemonPeakRssMiB.toFixed(0)} MiB (anon ${r.daemonPeakAnonMiB.toFixed(0)})${cl}, ` +
    `${r.verifiedPages} pages verified, ${r.mismatches} mismatches`
  );
}

interface MetricDef {
  key: string;
  label: string;
  unit: string;
  get(r: FanoutRun, withClients: boolean): number | undefined;
}

const METRICS: MetricDef[] = [
  { key: 'allRestoredMs', label: 'time until all restored', unit: 'ms', get: (r) => r.allRestoredMs },
  { key: 'allVerifiedMs', label: 'time until all verified', unit: 'ms', get: (r) => r.allVerifiedMs },
  { key: 'slowestRestoreMs', label: 'slowest hand-over → restored', unit: 'ms', get: (r) => r.timeToRestoredMs?.max },
  { key: 'firstTouchP99', label: 'first-touch p99', unit: 'µs', get: (r) => r.firstTouchUs.p99 },
  { key: 'daemonCpuMs', label: 'daemon CPU, total', unit: 'ms', get: (r) => r.daemonCpuMs },
  { key: 'daemonPeakRssMiB', label: 'daemon peak RSS, total', unit: 'MiB', get: (r) => r.daemonPeakRssMiB },
  { key: 'daemonPeakAnonMiB', label: 'daemon anon RSS, peak of sum', unit: 'MiB', get: (r) => r.daemonPeakAnonMiB },
  { key: 'treesCpuMs', label: "restored trees' CPU, total", unit: 'ms', get: (r) => r.treesCpuMs },
  {
    key: 'cpuBoundMs',
    label: '(daemon + trees CPU) / CPUs',
    unit: 'ms',
    // the least time until all restored on this machine were every CPU busy throughout
    get: (r, withClients) => (r.treesCpuMs === undefined ? undefined : (r.daemonCpuMs + r.treesCpuMs + (withClients ? (r.clients?.cpuMs ?? 0) : 0)) / os.availableParallelism()),
  },
  { key: 'cpuWithClientsMs', label: 'CPU incl. engine clients', unit: 'ms', get: (r) => r.daemonCpuMs + (r.clients?.cpuMs ?? 0) },
  { key: 'rssWithClientsMiB', label: 'peak RSS incl. engine clients', unit: 'MiB', get: (r) => r.daemonPeakRssMiB + (r.clients?.peakRssMiB ?? 0) },
];

export function ratios(runs: FanoutRun[]): Ratio[] {
  const out: Ratio[] = [];
  const keys = [...new Set(runs.map((r) => `${r.group} ${r.n}`))];
  for (const k of keys) {
    const [group, ns] = k.split(' ');
    const n = Number(ns);
    const of = (setup: FanoutRun['setup']) => runs.find((r) => r.group === group && r.n === n && r.setup === setup && r.ok);
    const e = of('engine');
    if (!e) continue;
    const s = of('standalone');
    const c = of('criu');
    for (const m of METRICS) {
      const ev = m.get(e, true);
      if (ev === undefined || !Number.isFinite(ev)) continue;
      const sv = s && m.get(s, false);
      const cv = c && m.get(c, false);
      // Three significant digits, not decimals: a warm engine's first-touch p99 can be 1/2000 of the daemons'.
      const q = (a: number, b: number | undefined) => (b !== undefined && Number.isFinite(b) && b > 0 ? Number((a / b).toPrecision(3)) : undefined);
      out.push({
        group: group as FanoutRun['group'],
        n,
        key: m.key,
        label: m.label,
        unit: m.unit,
        engine: ev,
        ...(sv !== undefined ? { standalone: sv, engineToStandalone: q(ev, sv) } : {}),
        ...(cv !== undefined ? { criu: cv, engineToCriu: q(ev, cv) } : {}),
      });
    }
  }
  return out;
}

export function targetChecks(rs: Ratio[], ns: number[], criuNs: number[]): TargetCheck[] {
  const find = (group: string, n: number, key: string) => rs.find((r) => r.group === group && r.n === n && r.key === key);
  const check = (what: string, limit: number, v: number | undefined, missing: string, note?: string): TargetCheck =>
    v === undefined ? { what, limit, note: missing } : { what, ratio: v, limit, met: v <= limit, ...(note ? { note } : {}) };
  const nMax = ns.includes(32) ? 32 : Math.max(...ns);
  const cMax = criuNs.includes(8) ? 8 : criuNs.length ? Math.max(...criuNs) : 8;
  return [
    check(`${nMax} restores: engine's time until all restored ≤ 0.5× ${nMax} stand-alone daemons'`, 0.5, find('target', nMax, 'allRestoredMs')?.engineToStandalone, 'not measured', nMax === 32 ? undefined : 'the issue sets it for N = 32'),
    check(`${nMax} restores: engine's peak RSS ≤ 0.2× the stand-alone daemons' total`, 0.2, find('target', nMax, 'daemonPeakRssMiB')?.engineToStandalone, 'not measured', nMax === 32 ? undefined : 'the issue sets it for N = 32'),
    check(`${cMax} real-CRIU restores: engine's time until all restored ≤ 0.5× ${cMax} criu lazy-pages'`, 0.5, find('criu', cMax, 'allRestoredMs')?.engineToCriu, 'not measured (real CRIU skipped or failed)', cMax === 8 ? undefined : 'the issue sets it for N = 8'),
    check('1 restore: through the engine no slower than stand-alone (within noise)', 1.1, find('target', 1, 'allRestoredMs')?.engineToStandalone, 'not measured (needs N = 1)', 'limit 1.1: "within noise"'),
  ];
}

export function formatFanout(r: FanoutReport): string {
  const fmt = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? 'n/a' : String(round(v, v >= 100 ? 0 : 1)));
  const x = (v: number | undefined) => (v === undefined ? '–' : `${v.toFixed(2)}×`);
  const rows: string[][] = [['scenario', 'metric', 'engine', 'stand-alone', 'criu lazy-pages', 'engine/stand-alone', 'engine/criu']];
  for (const q of r.ratios) {
    rows.push([`${q.group === 'criu' ? 'criu-fanout' : 'fanout'}-${q.n}`, `${q.label} (${q.unit})`, fmt(q.engine), fmt(q.standalone), q.group === 'criu' ? fmt(q.criu) : '–', x(q.engineToStandalone), x(q.engineToCriu)]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const lines = rows.map((row) => row.map((v, i) => (i >= 2 ? v.padStart(widths[i]) : v.padEnd(widths[i]))).join('  ').trimEnd());
  for (const f of r.runs.filter((run) => !run.ok)) lines.push(`${f.group === 'criu' ? 'criu-fanout' : 'fanout'}-${f.n} ${SETUP_NAME[f.setup]}: FAILED (not in the table): ${f.errors.join('; ')}`);
  if ('skipped' in r.criu) lines.push(`criu-fanout: skipped: ${r.criu.skipped}`);
  lines.push(`lower is better for every metric; ratios from this invocation; the engine column is one \`faultline serve\` (CPU and RSS of that process; "incl. engine clients" adds its N ${CLIENT_NAME[r.engineClient ?? 'node']} processes)`);
  for (const t of r.targets) lines.push(`target: ${t.what}: ${t.ratio === undefined ? t.note : `${t.ratio.toFixed(2)}× — ${t.met ? 'met' : 'NOT met'}${t.note ? ` (${t.note})` : ''}`}`);
  return lines.join('\n');
}

export async function fanout(argv: string[]): Promise<number> {
  const o = new Command('bench-fanout')
    .option('--n <list>', 'concurrent restores, comma-separated', '1,8,32')
    .option('--quick', 'a 32 MiB checkpoint (256 MiB by default)')
    .option('--mib <n>', 'checkpoint size in MiB (overrides --quick)')
    .option('--json', 'the report as JSON on stdout (progress on stderr)')
    .option('--no-criu', 'leave out the real-CRIU set-ups')
    .option('--no-target', 'leave out the restore-target set-ups (only real CRIU)')
    .option('--setups <list>', 'which set-ups to run, comma-separated: engine, standalone, criu (profiling one of them)', 'engine,standalone,criu')
    .option('--criu-max-n <n>', 'largest N for real CRIU (larger N are left out, said so)', '8')
    .option('--cold-engine', "no warm-up restore through each engine before the measured ones")
    .option('--engine-client <c|node>', "the engine's clients: native/bin/faultline-engine-client (c) or `faultline lazy-pages --engine` (node)", process.env.FAULTLINE_BENCH_ENGINE_CLIENT ?? 'c')
    .option('--work <dir>', 'checkpoints and scratch', path.join(os.tmpdir(), 'faultline-bench', 'fanout'))
    .option('--out <file>', 'also write the JSON report to this file')
    .parse(argv, { from: 'user' })
    .opts<{ n: string; quick?: boolean; mib?: string; json?: boolean; criu: boolean; criuMaxN: string; target: boolean; setups: string; coldEngine?: boolean; engineClient: string; work: string; out?: string }>();
  const ns = o.n.split(',').filter(Boolean).map(Number);
  if (!ns.length || ns.some((n) => !Number.isInteger(n) || n < 1 || n > 256)) throw new Error(`--n: a comma-separated list of whole numbers 1-256, got '${o.n}'`);
  const mib = o.mib ? Number(o.mib) : o.quick ? 32 : 256;
  if (!Number.isInteger(mib) || mib < 4) throw new Error(`--mib: a whole number ≥ 4, got '${o.mib}'`);
  const criuMaxN = Number(o.criuMaxN);
  const setups = o.setups.split(',').filter(Boolean);
  const unknownSetup = setups.find((x) => !['engine', 'standalone', 'criu'].includes(x));
  if (!setups.length || unknownSetup !== undefined) throw new Error(`--setups: a comma-separated list of engine, standalone, criu, got '${o.setups}'`);
  const wanted = (x: FanoutRun['setup']) => setups.includes(x);
  const log = (l: string) => (o.json ? process.stderr : process.stdout).write(l + '\n');
  checkUffdAvailable();
  const work = path.resolve(o.work);
  if (/\s/.test(work)) throw new Error(`--work ${work}: the restore target's plan cannot carry a path with whitespace`);
  if (o.engineClient !== 'c' && o.engineClient !== 'node') throw new Error(`--engine-client: 'c' or 'node', got '${o.engineClient}'`);
  const engineClient: EngineClient = o.engineClient;
  const c: Ctx = { work, coldEngine: !!o.coldEngine, engineClient, log };
  const what = `4 processes sharing ${mib} MiB (generated); each restored process: ${TOUCH.threads} threads touch ${(TOUCH.fraction! * 100).toFixed(0)} % of its pages at random, then every page is verified`;
  const report: FanoutReport = {
    date: new Date().toISOString(),
    command: ['node', path.relative(ROOT, process.argv[1] ?? 'dist/bench/fanout.js'), ...argv].join(' '),
    machine: { cpus: os.cpus().length, kernel: os.release(), node: process.version, memMiB: Math.round(os.totalmem() / 2 ** 20) },
    quick: !!o.quick,
    engineClient,
    ns,
    checkpoint: { mib, what },
    criu: { skipped: '--no-criu' },
    measured: [
      'time until all restored: from the first start (the first daemon or engine client spawned; a running engine is not started in it) until the last daemon or engine client exited, each after its restore completed (its wall clock at exit, bash $EPOCHREALTIME); "slowest hand-over → restored" is the largest timeToRestoredMs of the faultline summaries',
      'first-touch p99: restore target: every first touch of a page by a restored thread (--latency-file); real CRIU: per restored process, SIGUSR1 → first verified word',
      'daemon CPU: engine: utime+stime of the serve process (and its guardian) over the measured restores (/proc/PID/stat); otherwise the sum over the N daemons of what each used, read at its exit by a bash wrapper (`times`: every thread and reaped child)',
      `daemon peak RSS: engine: the serve process's VmHWM, reset (clear_refs 5) before the measured restores; otherwise the sum of each daemon's peak RSS (${HAS_GNU_TIME ? "GNU time's ru_maxrss, " : ''}the daemon's own summary, VmHWM sampled every 100 ms: the largest). It counts the mmapped page images (shared page cache) once per daemon; "anon RSS, peak of sum" is the largest sum of RssAnon seen at one instant`,
      `engine: each restore is asked for by ${CLIENT_NAME[engineClient]} (--engine-client ${engineClient}); its CPU and RSS are the "clients" figures, not the engine's`,
      "engine runs get one unmeasured warm-up restore first (a long-running service has served restores before; --cold-engine leaves it out); one unmeasured stand-alone (and criu lazy-pages) restore first warms the page cache for every set-up",
    ],
    runs: [],
    ratios: [],
    targets: [],
  };

  // --- the restore target on a generated checkpoint ---
  const images = imagesFor({ name: `fanout-${mib}`, what, tree: checkpoint(mib), target: TOUCH }, path.join(work, 'cache'));
  log(`restore-fanout: ${what}; N = ${ns.join(', ')}; engine clients: ${CLIENT_NAME[engineClient]}`);
  const warm = await targetRestore(images, path.join(work, 'warm'), 0, nowMs(), newHistogram(), 'standalone');
  if (!warm.ok) throw new Error(`warm-up restore failed: ${warm.error}`);
  for (const f of ['warm', 'warm.times', 'warm.times.rss']) fs.rmSync(path.join(work, f), { recursive: true, force: true });
  for (const [k, n] of (o.target ? ns : []).entries()) {
    const order: ('engine' | 'standalone')[] = k % 2 === 0 ? ['engine', 'standalone'] : ['standalone', 'engine'];
    for (const setup of order.filter(wanted)) {
      const r = await runTargetFanout(images, setup, n, c).catch((e: Error) => failedRun('target', setup, n, e.message));
      report.runs.push(r);
      log(`  fanout-${n} ${SETUP_NAME[setup].padEnd(11)}: ${describe(r)}`);
    }
  }

  // --- real CRIU ---
  const criuNs = ns.filter((n) => n <= criuMaxN);
  const found = findCriu();
  if (!o.criu) log('criu-fanout: skipped (--no-criu)');
  else if (!found.found) {
    report.criu = { skipped: `no real CRIU: ${found.why}` };
    log(`criu-fanout: skipped: ${report.criu.skipped}`);
  } else if (!criuNs.length) {
    report.criu = { skipped: `every N is above --criu-max-n ${criuMaxN}` };
    log(`criu-fanout: skipped: ${report.criu.skipped}`);
  } else {
    const left = ns.filter((n) => n > criuMaxN);
    const procs = 4;
    const cmib = Math.max(1, Math.floor(mib / procs));
    log(`criu-fanout: one criu dump of faultline-workload (${procs} processes × ${cmib} MiB, 2 threads each, verifying every word right after restore), N = ${criuNs.join(', ')} concurrent \`criu restore --lazy-pages\` (criu ${found.found.version})${left.length ? `; N = ${left.join(', ')} left out: above --criu-max-n ${criuMaxN}` : ''}`);
    // criu's lazy-pages daemon moves pages through pipes of up to 4 MiB
    const criu = found.found;
    await whilePipeMaxSizeRaised(async () => {
      let d: FanoutDump | undefined;
      try {
        d = await dumpForFanout(path.join(work, 'criu-dump'), { procs, mib: cmib, threads: 2 });
        report.criu = { ...criu, ns: criuNs, dump: { procs, mib: cmib, threads: 2, dumpMs: round(d.dumpMs, 0) } };
        log(`  dumped in ${d.dumpMs.toFixed(0)} ms`);
        await warmCriu(d, c);
      } catch (e) {
        report.criu = { skipped: `the dump or its warm-up restore failed: ${(e as Error).message}` };
        log(`criu-fanout: FAILED: ${report.criu.skipped}`);
        report.runs.push(failedRun('criu', 'criu', criuNs[0], report.criu.skipped));
        d = undefined;
      }
      if (d) {
        for (const [k, n] of criuNs.entries()) {
          const all: FanoutRun['setup'][] = ['criu', 'standalone', 'engine'];
          const order = [...all.slice(k % 3), ...all.slice(0, k % 3)];
          for (const setup of order.filter(wanted)) {
            const r = await runCriuFanout(d, setup, n, c).catch((e: Error) => failedRun('criu', setup, n, e.message));
            report.runs.push(r);
            log(`  criu-fanout-${n} ${SETUP_NAME[setup].padEnd(15)}: ${describe(r)}`);
          }
        }
        fs.rmSync(path.join(work, 'criu-dump'), { recursive: true, force: true });
      }
    });
  }

  report.ratios = ratios(report.runs);
  report.targets = targetChecks(report.ratios, ns, 'ns' in report.criu ? report.criu.ns : []);
  if (o.out) {
    fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
    fs.writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
  }
  if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else process.stdout.write('\n' + formatFanout(report) + (o.out ? `\nresults: ${o.out}\n` : '\n'));
  return report.runs.every((r) => r.ok) ? 0 : 1;
}

if (require.main === module) {
  fanout(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      process.stderr.write(`bench-fanout: error: ${e.message}\n`);
      process.exitCode = 1;
    },
  );
}
