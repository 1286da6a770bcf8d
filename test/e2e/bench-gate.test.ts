// The performance gate judges ratios against bench/gate.json, and it catches a deliberate slowdown
// (FAULTLINE_FAULT_DELAY_US adds a busy delay per fault in every worker).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { judge } from '../../bench/gate';
import type { Comparison } from '../../bench/metrics';
import { ROOT } from '../helpers/restore';

const cmp = (ratio: number, better: 'lower' | 'higher'): Comparison => ({
  key: 'm', label: 'metric', unit: 'µs', better, faultline: ratio, baseline: 1, ratio, spread: { faultline: [ratio, ratio], baseline: [1, 1] },
});

t.test('judge: regressions beyond the tolerance fail, naming the metric', async (t) => {
  const check = { scenario: 'isolated', metric: 'faultP50', expected: 2, tolerance: 0.5 };
  t.equal(judge(check, cmp(2.9, 'lower')), null, 'within tolerance');
  t.match(judge(check, cmp(3.1, 'lower')), /^isolated\.faultP50 \(metric\) regressed: ratio 3\.10× > allowed 3\.00×/);
  t.equal(judge(check, cmp(1.1, 'higher')), null);
  t.match(judge(check, cmp(0.9, 'higher')), /regressed: ratio 0\.90× < allowed 1\.00×/);
  t.match(judge(check, cmp(NaN, 'lower')), /no ratio/);
});

t.test('an injected delay per fault makes the gate fail', async (t) => {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/bench/gate.js'), '--only', 'isolated', '--reps', '1'], {
    encoding: 'utf8',
    env: { ...process.env, FAULTLINE_FAULT_DELAY_US: '3000' },
    timeout: 180_000,
  });
  t.equal(r.status, 1, `gate exits 1 ${r.stdout}`);
  t.match(r.stderr, /gate: isolated\.(faultP50|timeToRestored|stalledMs|serviceP50) \([^)]+\) regressed/, 'names the metric');
  t.match(r.stdout, /FAIL, measuring again/, 'a failing scenario is measured a second time before it counts');
  t.match(r.stdout, /gate: FAILED/);
});
