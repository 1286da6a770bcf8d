// Latency histograms (HdrHistogram) for the daemon's hot threads. The package's index loads its
// WASM build, pako and the log writer in every thread that imports it, a start-up cost many times
// that of the plain typed-array class used here (docs/DESIGN.md, "Start-up"); a worker hands its
// histogram to the main thread as (value, count) pairs instead of the compressed encoding.
import Float64Histogram from 'hdr-histogram-js/dist/Float64Histogram';
import type JsHistogram from 'hdr-histogram-js/dist/JsHistogram';

export type Histogram = JsHistogram;

/**
 * Nanosecond latencies to 2 significant digits (1 %), sized from the start for up to 68 s. With 3
 * digits, starting at 16 ms and growing as needed, a histogram was 128 KiB and every new power of two
 * copied it: in an engine serving 32 restores, whose fault latencies reach 100 ms and more, each worker
 * spent 0.2-0.7 s of a run in resizing (and fed the collector). Now 31 KiB, never resized in practice
 * (autoResize stays on for a value past 68 s), ≈ 0.1 ms to create and fill against ≈ 1 ms.
 */
export function newHistogram(): Histogram {
  const h = new Float64Histogram(1, 2 ** 36, 2);
  h.autoResize = true;
  return h;
}

/**
 * Every recorded value with its count: small (one pair per distinct bucket), structured-cloneable.
 * A plain scan of the counts: the package's recordedValuesIterator computes every bucket's value
 * with pow() on its way, and at a session's end in a busy engine its cost was a tenth of a worker's
 * time (docs/DESIGN.md, "The engine's histograms").
 */
export function toPairs(h: Histogram): number[] {
  const out: number[] = [];
  if (h.totalCount === 0) return out;
  for (let i = 0; i < h.countsArrayLength; i++) {
    const count = h.getCountAtIndex(i);
    if (count > 0) out.push(h.highestEquivalentValue(h.valueFromIndex(i)), count);
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
