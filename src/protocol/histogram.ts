// Latency histograms (HdrHistogram) for the daemon's hot threads. The package's index loads its
// WASM build, pako and the log writer in every thread that imports it, a start-up cost many times
// that of the plain typed-array class used here (docs/DESIGN.md, "Start-up"); a worker hands its
// histogram to the main thread as (value, count) pairs instead of the compressed encoding.
import Float64Histogram from 'hdr-histogram-js/dist/Float64Histogram';
import type JsHistogram from 'hdr-histogram-js/dist/JsHistogram';

export type Histogram = JsHistogram;

/** Nanosecond latencies, 3 significant digits, growing as needed. */
export function newHistogram(): Histogram {
  const h = new Float64Histogram(1, 2, 3);
  h.autoResize = true;
  return h;
}

/** Every recorded value with its count: small (one pair per distinct bucket), structured-cloneable. */
export function toPairs(h: Histogram): number[] {
  const out: number[] = [];
  const it = h.recordedValuesIterator;
  it.reset();
  while (it.hasNext()) {
    const v = it.next();
    out.push(v.valueIteratedTo, v.countAtValueIteratedTo);
  }
  return out;
}

export function addPairs(h: Histogram, pairs: number[]): void {
  for (let i = 0; i + 1 < pairs.length; i += 2) h.recordValueWithCount(pairs[i], pairs[i + 1]);
}

export interface PercentilesUs {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  count: number;
}

export function percentilesUs(h: Histogram): PercentilesUs {
  const us = (v: number) => Math.round(v / 10) / 100;
  return { p50: us(h.getValueAtPercentile(50)), p90: us(h.getValueAtPercentile(90)), p99: us(h.getValueAtPercentile(99)), max: us(h.maxValue), count: h.totalCount };
}
