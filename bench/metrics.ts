// Reduces repeated runs to medians, spreads and faultline/baseline ratios: the only numbers worth
// comparing on a shared, noisy 2-vCPU VM.
import type { CopyFloor } from './floor';
import type { RunMetrics, ScenarioResult } from './harness';

export interface MetricDef {
  key: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  get(m: RunMetrics): number;
}

export const METRICS: MetricDef[] = [
  { key: 'faultP50', label: 'fault latency p50', unit: 'µs', better: 'lower', get: (m) => m.faultUs.p50 },
  { key: 'faultP99', label: 'fault latency p99', unit: 'µs', better: 'lower', get: (m) => m.faultUs.p99 },
  { key: 'touchP99', label: 'first-touch p99', unit: 'µs', better: 'lower', get: (m) => m.touchUs.p99 },
  { key: 'stalledMs', label: 'threads stalled in faults', unit: 'ms', better: 'lower', get: (m) => m.stalledMs },
  { key: 'serviceP50', label: 'daemon fault service p50', unit: 'µs', better: 'lower', get: (m) => m.serviceP50Us },
  { key: 'serviceP99', label: 'daemon fault service p99', unit: 'µs', better: 'lower', get: (m) => m.serviceP99Us },
  { key: 'faults', label: 'faults taken', unit: '', better: 'lower', get: (m) => m.faults },
  { key: 'timeToRestored', label: 'time to fully restored', unit: 'ms', better: 'lower', get: (m) => m.timeToRestoredMs },
  { key: 'drainGBps', label: 'drain', unit: 'GB/s', better: 'higher', get: (m) => m.drainGBps },
  { key: 'faultsPerSec', label: 'faults/s', unit: '/s', better: 'higher', get: (m) => m.faultsPerSec },
  { key: 'cpuMs', label: 'daemon CPU', unit: 'ms', better: 'lower', get: (m) => m.cpuMs },
  { key: 'cpuAfterHandoverMs', label: 'daemon CPU after the first hand-over', unit: 'ms', better: 'lower', get: (m) => m.cpuAfterHandoverMs },
  { key: 'maxRssMiB', label: 'daemon peak RSS', unit: 'MiB', better: 'lower', get: (m) => m.maxRssKiB / 1024 },
];

export interface Comparison {
  key: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  faultline: number;
  baseline: number;
  /** median(faultline) / median(baseline) */
  ratio: number;
  /** min and max over the repetitions, per daemon */
  spread: { faultline: [number, number]; baseline: [number, number] };
}

export function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function compare(r: ScenarioResult): Comparison[] {
  return METRICS.map((d) => {
    const f = r.runs.faultline.map(d.get);
    const b = r.runs.baseline.map(d.get);
    const mf = median(f);
    const mb = median(b);
    return {
      key: d.key,
      label: d.label,
      unit: d.unit,
      better: d.better,
      faultline: round(mf),
      baseline: round(mb),
      ratio: mb > 0 ? round(mf / mb, 3) : NaN,
      spread: { faultline: [round(Math.min(...f)), round(Math.max(...f))], baseline: [round(Math.min(...b)), round(Math.max(...b))] },
    };
  });
}

/**
 * A row about the copy floor. For the floor itself (a property of the machine, the same for both
 * daemons) both columns hold it and there is no ratio; for "drain / floor" each column is that
 * daemon's median drain over the floor, and the ratio is faultline's fraction over the baseline's.
 */
export interface FloorRow {
  key: string;
  label: string;
  unit: string;
  better?: 'higher';
  faultline: number;
  baseline: number;
  ratio: number | null;
  spread: { faultline: [number, number]; baseline: [number, number] };
}

/** The copy floor as the report keeps it under its scenario: the tool's output and the rows derived from it. */
export interface FloorReport extends CopyFloor {
  rows: FloorRow[];
}

export function floorRows(r: ScenarioResult, floor: CopyFloor): FloorRow[] {
  const drains = { faultline: r.runs.faultline.map((m) => m.drainGBps), baseline: r.runs.baseline.map((m) => m.drainGBps) };
  const rows: FloorRow[] = floor.results.map((f) => {
    const runs: [number, number] = [round(Math.min(...f.runsGBps)), round(Math.max(...f.runsGBps))];
    return {
      key: `copyFloor${f.threads}`,
      label: `copy floor, ${f.threads} thread${f.threads === 1 ? '' : 's'}`,
      unit: 'GB/s',
      faultline: round(f.gbps),
      baseline: round(f.gbps),
      ratio: null,
      spread: { faultline: runs, baseline: runs },
    };
  });
  for (const f of floor.results) {
    const of = (xs: number[]): [number, number] => [round(Math.min(...xs) / f.gbps, 3), round(Math.max(...xs) / f.gbps, 3)];
    const mf = median(drains.faultline) / f.gbps;
    const mb = median(drains.baseline) / f.gbps;
    rows.push({
      key: `drainPerFloor${f.threads}`,
      label: `drain / ${f.threads}-thread floor`,
      unit: '',
      better: 'higher',
      faultline: round(mf, 3),
      baseline: round(mb, 3),
      ratio: mb > 0 ? round(mf / mb, 3) : null,
      spread: { faultline: of(drains.faultline), baseline: of(drains.baseline) },
    });
  }
  return rows;
}

function round(v: number, digits = 2): number {
  const k = 10 ** digits;
  return Math.round(v * k) / k;
}
