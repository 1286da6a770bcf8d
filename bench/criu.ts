// node dist/bench/criu.js [--quick] [--reps N] [--only a,b] [--out DIR] [--work DIR]
// faultline against real CRIU (issue 8, point 6): each scenario is dumped once by `criu dump` from
// native/bin/faultline-workload, then restored repeatedly with `criu restore --lazy-pages`, the
// lazy-pages daemon alternating between `criu lazy-pages`, `faultline lazy-pages` and (locally) the
// C baseline, warm-up first, then N interleaved repetitions. Medians, min–max and ratios to CRIU
// from the same invocation; absolute times on this shared 2-vCPU VM mean little.
// Start-up is measured from the daemon's spawn on the bench's wall clock, the same way for every
// daemon: to its --status-fd byte (ready; `criu restore` starts right then) and to the first page a
// restored process verified; and, from the daemon's own account, to its first fault (criu's -v4 log,
// first "#PF" line; faultline's summary startToFirstFaultMs when it has one), and from its first
// hand-over to its first fault (criu: -v4 "Received PID" → first "#PF"; faultline:
// handoverToFirstFaultMs), the part of issue 9's "restore → first fault" a daemon's start-up is not in.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { findCriu } from '../src/criu/find';
import { ROOT, criuDump, whilePipeMaxSizeRaised } from '../src/criu/run';
import { killTree, startWorkload } from '../src/criu/workload';
import { criuScenarios, fingerprint, runOnce, type CriuBenchDaemon, type CriuRunMetrics, type CriuScenario, type DumpedScenario, type RemoteNet } from './criu-scenarios';
import { formatFloor, runCopyFloor } from './floor';
import { median } from './metrics';

export interface CriuMetricDef {
  key: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  get(m: CriuRunMetrics): number | null | undefined;
}

export const CRIU_METRICS: CriuMetricDef[] = [
  { key: 'daemonExitMs', label: 'restore → daemon exit', unit: 'ms', better: 'lower', get: (m) => m.daemonExitMs },
  { key: 'firstVerifiedMs', label: 'restore → first verified', unit: 'ms', better: 'lower', get: (m) => m.firstVerifiedMs },
  { key: 'actionDoneMs', label: 'restore → all verified', unit: 'ms', better: 'lower', get: (m) => m.actionDoneMs },
  { key: 'startToReadyMs', label: 'daemon start → ready', unit: 'ms', better: 'lower', get: (m) => m.startToReadyMs },
  { key: 'startToFirstFaultMs', label: 'daemon start → first #PF (own log)', unit: 'ms', better: 'lower', get: (m) => m.startToFirstFaultMs },
  { key: 'handoverToFirstFaultMs', label: 'first hand-over → first fault (own log)', unit: 'ms', better: 'lower', get: (m) => m.handoverToFirstFaultMs },
  { key: 'startToFirstVerifiedMs', label: 'daemon start → first verified', unit: 'ms', better: 'lower', get: (m) => m.startToFirstVerifiedMs },
  { key: 'daemonCpuMs', label: 'daemon CPU', unit: 'ms', better: 'lower', get: (m) => m.daemonCpuMs },
  { key: 'serverCpuMs', label: 'page server CPU', unit: 'ms', better: 'lower', get: (m) => m.serverCpuMs },
  { key: 'restoreMs', label: 'criu restore itself', unit: 'ms', better: 'lower', get: (m) => m.restoreMs },
];

export interface CriuStat {
  median: number;
  min: number;
  max: number;
}

export interface CriuComparison {
  key: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  /** per daemon: median, min, max over the verified repetitions; absent where the metric does not apply */
  values: Partial<Record<CriuBenchDaemon, CriuStat>>;
  /** median(daemon) / median(criu) */
  ratioToCriu: Partial<Record<CriuBenchDaemon, number>>;
}

export interface CriuScenarioReport {
  name: string;
  what: string;
  procs: number;
  mib: number;
  action: string;
  daemons: CriuBenchDaemon[];
  skipped?: string;
  /** Why a daemon is not in the comparison (e.g. its warm-up failed). */
  dropped: Partial<Record<CriuBenchDaemon, string>>;
  dumpMs?: number;
  imagesUnchanged?: boolean;
  runs: Partial<Record<CriuBenchDaemon, CriuRunMetrics[]>>;
  failures: { daemon: CriuBenchDaemon; rep: number; error: string }[];
  comparison: CriuComparison[];
  /**
   * Drain scenarios: the copy floor on this dump's pages file, and the restore → daemon exit that a
   * daemon copying every lazy byte at the all-CPU floor, with no start-up or teardown, would reach.
   */
  floor?: { results: { threads: number; gbps: number }[]; lazyBytes: number; restoreMs: number; boundMs: number; boundToCriu: number | null };
}

export interface CriuBenchReport {
  date: string;
  command: string;
  machine: { cpus: number; kernel: string; node: string };
  criu: { bin: string; version: string };
  reps: number;
  quick: boolean;
  scenarios: CriuScenarioReport[];
}

const NETNS = path.join(ROOT, 'scripts/netns.sh');

function round(v: number, digits = 2): number {
  const k = 10 ** digits;
  return Math.round(v * k) / k;
}

export function compareCriu(runs: Partial<Record<CriuBenchDaemon, CriuRunMetrics[]>>): CriuComparison[] {
  const out: CriuComparison[] = [];
  for (const d of CRIU_METRICS) {
    const values: Partial<Record<CriuBenchDaemon, CriuStat>> = {};
    for (const [k, rs] of Object.entries(runs) as [CriuBenchDaemon, CriuRunMetrics[]][]) {
      const xs = rs.map(d.get).filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
      if (xs.length) values[k] = { median: round(median(xs), 1), min: round(Math.min(...xs), 1), max: round(Math.max(...xs), 1) };
    }
    if (!Object.keys(values).length) continue;
    const ratioToCriu: Partial<Record<CriuBenchDaemon, number>> = {};
    const c = values.criu?.median;
    for (const [k, v] of Object.entries(values) as [CriuBenchDaemon, CriuStat][]) {
      if (k !== 'criu' && c && c > 0) ratioToCriu[k] = round(v.median / c, 3);
    }
    out.push({ key: d.key, label: d.label, unit: d.unit, better: d.better, values, ratioToCriu });
  }
  return out;
}

/** Dumps the scenario's tree with real CRIU (the tree is killed by the dump). */
async function dumpScenario(s: CriuScenario, root: string, log: (l: string) => void): Promise<DumpedScenario & { dumpMs: number }> {
  const dir = path.join(root, s.name);
  fs.rmSync(dir, { recursive: true, force: true });
  const out = path.join(dir, 'out');
  const images = path.join(dir, 'images');
  const w = await startWorkload({ dir: out, procs: s.procs, mib: s.mib, threads: s.threads, action: s.action, seed: 7, readyTimeoutMs: 180_000 });
  let dumpMs: number;
  try {
    ({ dumpMs } = await criuDump(w.rootPid, images, { timeoutMs: 300_000 }));
  } finally {
    // criu dump kills the tree when it succeeds; this is for one that failed
    await killTree(w.rootPid, w.rootStartTime).catch(() => undefined);
  }
  log(`  dumped ${s.procs} × ${s.mib} MiB in ${dumpMs.toFixed(0)} ms (${images})`);
  let dstImages: string | undefined;
  if (s.remote) {
    // The restoring side gets its own directory. `criu restore` itself still reads the pages that
    // are not lazy (pagemap entries without PE_LAZY), so the pages files are hard-linked there; both
    // lazy-pages daemons fetch every lazy page from the page server, never from these files.
    dstImages = path.join(dir, 'dst-images');
    fs.mkdirSync(dstImages);
    for (const f of fs.readdirSync(images)) {
      if (f.startsWith('pages-')) fs.linkSync(path.join(images, f), path.join(dstImages, f));
      else if (f.endsWith('.img')) fs.copyFileSync(path.join(images, f), path.join(dstImages, f));
    }
  }
  return { s, images, out, dstImages, dumpMs };
}

/** Network namespaces for the remote scenario, or why there are none. */
function remoteNet(): { net?: RemoteNet; why?: string; down: () => void } {
  const check = spawnSync('bash', [NETNS, 'check'], { encoding: 'utf8' });
  if (check.status !== 0) return { why: check.stderr.trim() || `scripts/netns.sh check exited ${check.status}`, down: () => undefined };
  // Other users of this checkout (tests) may have them up already: only take down what we made.
  const existed = /\bfl-src\b/.test(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '');
  execFileSync('bash', [NETNS, 'up']);
  let port = 29000 + (process.pid % 500) * 4;
  return {
    net: { src: ['ip', 'netns', 'exec', 'fl-src'], dst: ['ip', 'netns', 'exec', 'fl-dst'], srcIp: '10.77.0.1', nextPort: () => (port = port >= 30999 ? 29000 : port + 1) },
    down: () => {
      if (!existed) spawnSync('bash', [NETNS, 'down']);
    },
  };
}

export interface CriuBenchOptions {
  quick: boolean;
  reps: number;
  only?: string[];
  out: string;
  work: string;
  /** Keep every scenario's dump under work/criu/<scenario>/images, to restore it again by hand. */
  keepDumps?: boolean;
  log: (line: string) => void;
}

export function criuScenarioNames(): string[] {
  return criuScenarios(false).map((s) => s.name);
}

export async function runCriuBench(o: CriuBenchOptions): Promise<CriuBenchReport> {
  const { found, why } = findCriu();
  if (!found) throw new Error(`the real-CRIU bench needs criu: ${why}`);
  const report: CriuBenchReport = {
    date: new Date().toISOString(),
    command: ['node', path.relative(ROOT, process.argv[1] ?? 'dist/bench/criu.js'), ...process.argv.slice(2)].join(' '),
    machine: { cpus: os.cpus().length, kernel: os.release(), node: process.version },
    criu: found,
    reps: o.reps,
    quick: o.quick,
    scenarios: [],
  };
  const list = criuScenarios(o.quick).filter((s) => !o.only || o.only.includes(s.name));
  // criu's page server and lazy-pages daemon move pages through 4 MiB pipes
  await whilePipeMaxSizeRaised(async () => {
    for (const s of list) {
      o.log(`${s.name}: ${s.what}`);
      report.scenarios.push(await runCriuScenario(s, o));
    }
  });
  fs.mkdirSync(o.out, { recursive: true });
  fs.writeFileSync(path.join(o.out, 'criu-results.json'), JSON.stringify(report, null, 2) + '\n');
  return report;
}

async function runCriuScenario(s: CriuScenario, o: CriuBenchOptions): Promise<CriuScenarioReport> {
  const rep: CriuScenarioReport = { name: s.name, what: s.what, procs: s.procs, mib: s.mib, action: s.action, daemons: [...s.daemons], dropped: {}, runs: {}, failures: [], comparison: [] };
  let net: ReturnType<typeof remoteNet> | undefined;
  if (s.remote) {
    net = remoteNet();
    if (!net.net) {
      rep.skipped = `network namespaces unavailable: ${net.why}`;
      o.log(`  skipped: ${rep.skipped}`);
      return rep;
    }
  }
  const root = path.join(o.work, 'criu');
  try {
    const dumped = await dumpScenario(s, root, o.log);
    rep.dumpMs = round(dumped.dumpMs, 0);
    const before = fingerprint(dumped.images);
    const work = path.join(root, s.name, 'work');
    let daemons = [...s.daemons];
    // rep -1 is the warm-up (page cache, the guest's memory, every binary); its numbers are dropped.
    // A daemon whose warm-up fails is dropped with the reason; later failures are counted as such.
    for (let r = -1; r < o.reps; r++) {
      const k = ((r % daemons.length) + daemons.length) % daemons.length;
      const order = [...daemons.slice(k), ...daemons.slice(0, k)];
      for (const d of order) {
        const m = await runOnce(dumped, d, work, net?.net);
        if (fingerprint(dumped.images) !== before) {
          // not seen with CRIU 4.2: a lazy restore reads the dump and leaves it as it was
          throw new Error(`${s.name}: the restore with ${d} changed the dump in ${dumped.images}; the images cannot be reused between runs`);
        }
        if (!m.ok) {
          o.log(`  ${s.name} ${d.padEnd(9)} ${r < 0 ? 'warm-up' : `rep ${r + 1}`}: FAILED: ${m.error}`);
          if (r < 0) {
            rep.dropped[d] = `warm-up failed: ${m.error}`;
            daemons = daemons.filter((x) => x !== d);
          } else rep.failures.push({ daemon: d, rep: r + 1, error: m.error ?? '' });
          continue;
        }
        const line = `start → ready ${m.startToReadyMs.toFixed(0)} ms, restore ${m.restoreMs.toFixed(0)} ms, daemon exit ${m.daemonExitMs.toFixed(0)} ms, first verified ${m.firstVerifiedMs === null ? 'n/a' : m.firstVerifiedMs.toFixed(0) + ' ms'}, daemon CPU ${m.daemonCpuMs.toFixed(0)} ms${m.serverCpuMs !== undefined ? `, server CPU ${m.serverCpuMs.toFixed(0)} ms` : ''}, ${m.verifiedPages} pages verified`;
        o.log(`  ${s.name} ${d.padEnd(9)} ${r < 0 ? 'warm-up' : `rep ${r + 1}`}: ${line}`);
        if (r >= 0) (rep.runs[d] ??= []).push(m);
      }
      // without CRIU's own daemon there is nothing to compare against: say so and go on
      if (!daemons.includes('criu')) break;
    }
    rep.imagesUnchanged = true;
    rep.comparison = compareCriu(rep.runs);
    if (s.mode === 'drain') rep.floor = floorBound(rep, dumped.images, o.log);
    // the dump of a 1 GiB scenario is large: keep only the last scenario's scratch
    if (!o.keepDumps) fs.rmSync(path.join(root, s.name), { recursive: true, force: true });
  } finally {
    net?.down();
  }
  return rep;
}

/**
 * What bounds a drain on this machine: criu restore's own time (the same for every daemon) plus the
 * lazy bytes at the copy floor of all CPUs. The floor copies the pages file as one region, so the
 * bound is optimistic for a dump of many short runs.
 */
function floorBound(rep: CriuScenarioReport, images: string, log: (l: string) => void): CriuScenarioReport['floor'] {
  const fl = rep.runs.faultline?.[0]?.faultline;
  const restore = rep.comparison.find((c) => c.key === 'restoreMs')?.values;
  const exit = rep.comparison.find((c) => c.key === 'daemonExitMs')?.values.criu?.median;
  const lazyBytes = (fl?.lazyPages ?? 0) * 4096;
  if (!lazyBytes || !restore) return undefined;
  const floor = runCopyFloor(images);
  const all = floor.results[floor.results.length - 1]!;
  const restoreMs = Math.min(...Object.values(restore).map((v) => v!.median));
  const boundMs = restoreMs + lazyBytes / 1e9 / all.gbps * 1000;
  const boundToCriu = exit ? boundMs / exit : null;
  log(
    `  ${rep.name} copy floor on this dump: ${formatFloor(floor.results)}; ` +
      `criu restore ${restoreMs.toFixed(0)} ms + ${(lazyBytes / 2 ** 20).toFixed(0)} MiB at ${all.gbps.toFixed(2)} GB/s = ${boundMs.toFixed(0)} ms ` +
      `as the least restore → daemon exit${boundToCriu ? ` (${boundToCriu.toFixed(2)}× criu's)` : ''}`,
  );
  return { results: floor.results.map(({ threads, gbps }) => ({ threads, gbps })), lazyBytes, restoreMs, boundMs, boundToCriu };
}

const COLS: CriuBenchDaemon[] = ['criu', 'faultline', 'baseline'];

export function formatCriuTable(r: CriuBenchReport): string {
  const cell = (v?: CriuStat) => (v ? `${v.median} [${v.min}–${v.max}]` : 'n/a');
  const ratio = (x?: number) => (x === undefined ? '–' : `${x.toFixed(2)}×`);
  const rows: string[][] = [['scenario', 'metric', ...COLS, 'faultline/criu', 'baseline/criu']];
  const notes: string[] = [];
  for (const s of r.scenarios) {
    if (s.skipped) notes.push(`${s.name}: skipped: ${s.skipped}`);
    const all = s.floor?.results.at(-1);
    if (s.floor && all) notes.push(`${s.name}: at the ${all.threads}-thread copy floor (${all.gbps.toFixed(2)} GB/s) restore → daemon exit could be no less than ${s.floor.boundMs.toFixed(0)} ms${s.floor.boundToCriu ? ` = ${s.floor.boundToCriu.toFixed(2)}× criu's` : ''}`);
    for (const c of s.comparison) {
      rows.push([s.name, `${c.label} (${c.unit})`, ...COLS.map((k) => cell(c.values[k])), ratio(c.ratioToCriu.faultline), ratio(c.ratioToCriu.baseline)]);
    }
    for (const [d, why] of Object.entries(s.dropped)) notes.push(`${s.name}: ${d} not compared: ${why}`);
    for (const f of s.failures) notes.push(`${s.name}: ${f.daemon} rep ${f.rep} FAILED (not measured): ${f.error}`);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const lines = rows.map((row) => row.map((v, i) => (i >= row.length - 2 ? v.padStart(widths[i]) : v.padEnd(widths[i]))).join('  ').trimEnd());
  lines.push(...notes);
  lines.push('values: median [min–max] ms over the verified repetitions; ratios are of medians from this invocation (lower is better for every metric)');
  return lines.join('\n');
}

/**
 * A failed repetition, or faultline dropped because its warm-up failed. The baseline is a reference
 * only: when it cannot serve a dump, the reason is in the table and the run still passes.
 */
export function criuBenchFailed(r: CriuBenchReport): boolean {
  return r.scenarios.some((s) => s.failures.length > 0 || s.dropped.faultline !== undefined || s.dropped.criu !== undefined);
}

export async function criuBench(argv: string[]): Promise<number> {
  const o = new Command('bench-criu')
    .option('--quick', '256 MiB instead of 1 GiB, smaller trees')
    .option('--reps <n>', 'repetitions per daemon, after one warm-up', '3')
    .option('--only <names>', `comma-separated scenario names (${criuScenarioNames().join(', ')})`)
    .option('--out <dir>', 'where criu-results.json goes', path.resolve(__dirname, '../../bench/results'))
    .option('--work <dir>', 'dumps and scratch', path.join(os.tmpdir(), 'faultline-bench'))
    .option('--keep-dumps', 'keep each dump in --work/criu/<scenario>/images (removed by default: 1 GiB each)')
    .parse(argv, { from: 'user' })
    .opts<{ quick?: boolean; reps: string; only?: string; out: string; work: string; keepDumps?: boolean }>();
  const only = o.only?.split(',').filter(Boolean);
  const unknown = only?.filter((n) => !criuScenarioNames().includes(n)) ?? [];
  if (unknown.length) throw new Error(`unknown scenario ${unknown.join(', ')} (have ${criuScenarioNames().join(', ')})`);
  const report = await runCriuBench({ quick: !!o.quick, reps: Number(o.reps), only, out: o.out, work: o.work, keepDumps: !!o.keepDumps, log: (l) => process.stdout.write(l + '\n') });
  process.stdout.write('\n' + formatCriuTable(report) + `\nresults: ${path.join(o.out, 'criu-results.json')}\n`);
  return criuBenchFailed(report) ? 1 : 0;
}

if (require.main === module) {
  criuBench(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      process.stderr.write(`bench-criu: error: ${e.message}\n`);
      process.exitCode = 1;
    },
  );
}
