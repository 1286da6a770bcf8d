// Reduces repeated runs to medians, spreads and faultline/baseline ratios: the only numbers worth
// comparing on a shared, noisy 2-vCPU VM.
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
  { key: 'faults', label: 'faults taken', unit: '', better: 'lower', get: (m) => m.faults },
  { key: 'timeToRestored', label: 'time to fully restored', unit: 'ms', better: 'lower', get: (m) => m.timeToRestoredMs },
  { key: 'drainGBps', label: 'drain', unit: 'GB/s', better: 'higher', get: (m) => m.drainGBps },
  { key: 'faultsPerSec', label: 'faults/s', unit: '/s', better: 'higher', get: (m) => m.faultsPerSec },
  { key: 'cpuMs', label: 'daemon CPU', unit: 'ms', better: 'lower', get: (m) => m.cpuMs },
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

function round(v: number, digits = 2): number {
  const k = 10 ** digits;
  return Math.round(v * k) / k;
}
