// Runs one scenario against faultline and the C baseline in the same invocation, interleaved
// (warm-up first, then baseline/faultline alternately), and reduces each run to its metrics.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { newHistogram, type Histogram } from '../src/protocol/histogram';
import { generateImageSet } from '../src/images';
import { spawnSync } from 'node:child_process';
import { TARGET, runRestore, type DaemonKind, type RestoreResult, type RestoreRunOptions, type TimelineSample } from '../src/target/run';
import type { Scenario } from './scenarios';

export const DAEMONS: DaemonKind[] = ['baseline', 'faultline'];
/** A touch slower than this took a fault (a present page reads in well under 1 µs here). */
export const FAULT_THRESHOLD_NS = 2000;

/** Older targets cannot write latency files; then the per-process percentiles are all there is. */
const TARGET_WRITES_LATENCIES = spawnSync(TARGET, ['--help'], { encoding: 'utf8' }).stdout?.includes('--latency-file') ?? false;

export interface RunMetrics {
  ok: boolean;
  error?: string;
  faults: number;
  pagesByFault: number;
  pagesByFill: number;
  zeroPages: number;
  lazyPages: number;
  timeToRestoredMs: number;
  drainGBps: number;
  faultsPerSec: number;
  cpuMs: number;
  /** start-up apart (stand-alone daemon and baseline) */
  cpuAfterHandoverMs: number;
  maxRssKiB: number;
  touches: number;
  /** first-touch latency of every touched page, µs */
  touchUs: Percentiles;
  /** the touches that faulted (≥ FAULT_THRESHOLD_NS), µs: the per-fault service latency seen by the thread */
  faultUs: Percentiles;
  /** total time the restored threads spent stalled in faults (sum of faulting touches), ms */
  stalledMs: number;
  /** the daemon's own fault service time (uffd read → page copied), p50 and p99, µs */
  serviceP50Us: number;
  serviceP99Us: number;
}

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  count: number;
}

export interface ScenarioResult {
  name: string;
  what: string;
  runs: Record<DaemonKind, RunMetrics[]>;
  /** touch-latency CDF of the median run: [µs, percentile] */
  cdf: Record<DaemonKind, [number, number][]>;
  timeline: Record<DaemonKind, TimelineSample[]>;
}

export function imagesFor(s: Scenario, cacheRoot: string): string {
  const key = crypto.createHash('sha256').update(JSON.stringify(s.tree)).digest('hex').slice(0, 12);
  const dir = path.join(cacheRoot, `images-${key}`);
  if (!fs.existsSync(path.join(dir, 'done'))) {
    fs.rmSync(dir, { recursive: true, force: true });
    generateImageSet(path.join(dir, 'images'), s.tree);
    fs.writeFileSync(path.join(dir, 'done'), '');
  }
  return path.join(dir, 'images');
}

function percentiles(h: Histogram): Percentiles {
  const us = (v: number) => Math.round(v / 10) / 100;
  return {
    p50: us(h.getValueAtPercentile(50)),
    p90: us(h.getValueAtPercentile(90)),
    p99: us(h.getValueAtPercentile(99)),
    p999: us(h.getValueAtPercentile(99.9)),
    count: h.totalCount,
  };
}

const CDF_POINTS = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 99, 99.5, 99.9, 99.99, 100];

/** Reads and removes the target's latency files; falls back to the per-process summaries. */
function latencies(prefix: string, r: RestoreResult): { all: Histogram; faults: Histogram; stalledNs: number } {
  const all = newHistogram();
  const faults = newHistogram();
  let stalledNs = 0;
  const dir = path.dirname(prefix);
  const latFiles = fs.readdirSync(dir).filter((f) => f.startsWith(path.basename(prefix) + '.') && f.endsWith('.lat'));
  for (const f of latFiles) {
    const b = fs.readFileSync(path.join(dir, f));
    for (let i = 0; i + 8 <= b.length; i += 8) {
      const ns = Math.max(1, Number(b.readBigUInt64LE(i)));
      all.recordValue(ns);
      if (ns >= FAULT_THRESHOLD_NS) {
        faults.recordValue(ns);
        stalledNs += ns;
      }
    }
    fs.rmSync(path.join(dir, f));
  }
  if (!latFiles.length) {
    for (const p of r.target.processes) if (p.latencyNs.count) all.recordValueWithCount(Math.max(1, p.latencyNs.p50), p.latencyNs.count);
  }
  return { all, faults, stalledNs };
}

export function metricsOf(r: RestoreResult, lat: { all: Histogram; faults: Histogram; stalledNs: number }): RunMetrics {
  const s = r.daemon.summary;
  const t = r.target.summary;
  const ok = r.daemon.code === 0 && r.target.code === 0 && !!s && !!t && t.mismatches === 0;
  const secs = (s?.timeToRestoredMs ?? 0) / 1000;
  return {
    ok,
    ...(ok ? {} : { error: `daemon ${r.daemon.code} ${r.daemon.stderr.trim().split('\n').pop()}; target ${r.target.code} ${r.target.stderr.trim().split('\n').pop()}` }),
    faults: s?.faults ?? 0,
    pagesByFault: s?.pagesByFault ?? 0,
    pagesByFill: s?.pagesByFill ?? 0,
    zeroPages: s?.zeroPages ?? 0,
    lazyPages: s?.lazyPages ?? 0,
    timeToRestoredMs: s?.timeToRestoredMs ?? 0,
    drainGBps: s && s.fillAfterFinishedMs > 0 ? (s.lazyPages * 4096) / 1e9 / (s.fillAfterFinishedMs / 1000) : 0,
    faultsPerSec: secs > 0 ? (s?.faults ?? 0) / secs : 0,
    cpuMs: s?.cpuMs ?? 0,
    cpuAfterHandoverMs: s?.cpuAfterHandoverMs ?? 0,
    maxRssKiB: s?.maxRssKiB ?? 0,
    touches: lat.all.totalCount,
    touchUs: percentiles(lat.all),
    faultUs: percentiles(lat.faults),
    stalledMs: Math.round(lat.stalledNs / 1e4) / 100,
    serviceP50Us: s?.faultServiceUs?.p50 ?? 0,
    serviceP99Us: s?.faultServiceUs?.p99 ?? 0,
  };
}

export interface HarnessOptions {
  reps: number;
  workRoot: string;
  log: (line: string) => void;
  faultlineEnv?: NodeJS.ProcessEnv;
  faultlineArgs?: string[];
  /** Per-side overrides of the restore (the remote scenario compares two faultline client policies). */
  variants?: Partial<Record<DaemonKind, Partial<RestoreRunOptions>>>;
}

export async function runScenario(s: Scenario, o: HarnessOptions): Promise<ScenarioResult> {
  const images = imagesFor(s, path.join(o.workRoot, 'cache'));
  const work = path.join(o.workRoot, 'work', s.name);
  const runs: Record<DaemonKind, RunMetrics[]> = { baseline: [], faultline: [] };
  const cdfs: Record<DaemonKind, { m: RunMetrics; cdf: [number, number][]; timeline: TimelineSample[] }[]> = { baseline: [], faultline: [] };
  // rep -1 warms the page cache, the guest's memory and both binaries; its numbers are dropped.
  for (let rep = -1; rep < o.reps; rep++) {
    const order = rep % 2 === 0 ? DAEMONS : [...DAEMONS].reverse();
    for (const daemon of order) {
      fs.rmSync(work, { recursive: true, force: true });
      const prefix = path.join(work, 'lat');
      const r = await runRestore({
        imagesDir: images,
        workDir: work,
        daemon,
        daemonArgs: daemon === 'faultline' ? [...(s.faultlineArgs ?? []), ...(o.faultlineArgs ?? [])] : [],
        daemonEnv: daemon === 'faultline' ? o.faultlineEnv : undefined,
        target: { ...s.target, ...(TARGET_WRITES_LATENCIES ? { latencyFile: prefix } : {}) },
        sampleEveryMs: 10,
        ...(s.targetCpus && os.availableParallelism() > 1 ? { targetWrap: ['taskset', '-c', s.targetCpus] } : {}),
        ...(daemon === 'baseline' && s.baselineCpus && os.availableParallelism() > 1 ? { daemonWrap: ['taskset', '-c', s.baselineCpus] } : {}),
        timeoutMs: 300_000,
        ...o.variants?.[daemon],
      });
      const lat = latencies(prefix, r);
      const m = metricsOf(r, lat);
      if (!m.ok) throw new Error(`${s.name}: ${daemon} run failed: ${m.error}`);
      if (rep < 0) continue;
      runs[daemon].push(m);
      cdfs[daemon].push({ m, cdf: CDF_POINTS.map((p) => [Math.round(lat.all.getValueAtPercentile(p) / 10) / 100, p]), timeline: r.timeline });
      o.log(
        `  ${s.name} ${daemon.padEnd(9)} rep ${rep + 1}: restored in ${m.timeToRestoredMs.toFixed(0)} ms, ${m.faults} faults, ` +
          `touch p50 ${m.touchUs.p50} µs, fault p50 ${m.faultUs.p50} µs p99 ${m.faultUs.p99} µs`,
      );
    }
  }
  const median = (k: DaemonKind) => {
    const sorted = [...cdfs[k]].sort((a, b) => a.m.timeToRestoredMs - b.m.timeToRestoredMs);
    return sorted[Math.floor(sorted.length / 2)];
  };
  return {
    name: s.name,
    what: s.what,
    runs,
    cdf: { baseline: median('baseline').cdf, faultline: median('faultline').cdf },
    timeline: { baseline: median('baseline').timeline, faultline: median('faultline').timeline },
  };
}

export function defaultWorkRoot(): string {
  return path.join(os.tmpdir(), 'faultline-bench');
}
