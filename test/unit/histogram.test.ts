// The workers hand their latency histograms to the main thread as (value, count) pairs: the scan in
// toPairs must give what the package's own iterator gives, so the summary's percentiles and maximum
// are those of the workers' histograms.
import t from 'tap';
import { addPairs, newHistogram, percentilesUs, toPairs, type Histogram } from '../../src/protocol/histogram';

function iteratorPairs(h: Histogram): number[] {
  const out: number[] = [];
  const it = h.recordedValuesIterator;
  it.reset();
  while (it.hasNext()) {
    const v = it.next();
    out.push(v.valueIteratedTo, v.countAtValueIteratedTo);
  }
  return out;
}

t.test('toPairs gives the recorded-values iterator pairs, and a copy with the same percentiles', async (t) => {
  t.same(toPairs(newHistogram()), [], 'an empty histogram has no pairs');
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (const spread of [1e3, 1e6, 1e9, 6e10]) {
    const h = newHistogram();
    for (let i = 0; i < 5000; i++) h.recordValue(1 + Math.floor(rnd() ** 3 * spread));
    h.recordValueWithCount(7, 3);
    const pairs = toPairs(h);
    t.same(pairs, iteratorPairs(h), `values up to ${spread}: the same pairs`);
    const copy = newHistogram();
    addPairs(copy, pairs);
    const [a, b] = [percentilesUs(copy), percentilesUs(h)];
    t.same({ ...a, max: 0 }, { ...b, max: 0 }, `values up to ${spread}: the same percentiles and count`);
    // a pair stands for its bucket: the copy's maximum is the top of the maximum's bucket
    t.equal(copy.maxValue, h.highestEquivalentValue(h.maxValue), `values up to ${spread}: the maximum, to the histogram's resolution`);
  }
});
