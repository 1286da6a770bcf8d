// The bench report, opened in a real headless Chromium (Debian's, driven by playwright-core):
// its charts render, and a screenshot is taken (bench/results/report-screenshot.png when kept).
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ScenarioResult, RunMetrics } from '../../bench/harness';
import { compare } from '../../bench/metrics';
import { writeReport, type BenchReport } from '../../bench/report';
import { tempDir } from '../helpers/restore';

const CHROMIUM = '/usr/bin/chromium';

function run(scale: number): RunMetrics {
  const p = { p50: 10 * scale, p90: 20 * scale, p99: 50 * scale, p999: 90 * scale, count: 1000 };
  return {
    ok: true, faults: 1000 * scale, pagesByFault: 4000, pagesByFill: 12000, zeroPages: 10, lazyPages: 16000, timeToRestoredMs: 300 * scale,
    drainGBps: 1 / scale, faultsPerSec: 3000 / scale, cpuMs: 250 * scale, cpuAfterHandoverMs: 200 * scale, maxRssKiB: 80000, touches: 5000, touchUs: p, faultUs: p, stalledMs: 100 * scale,
    serviceP50Us: 40 * scale, serviceP99Us: 300 * scale,
  };
}

function scenario(name: string): ScenarioResult {
  const cdf = (k: number): [number, number][] => [1, 10, 50, 90, 99, 100].map((p) => [k * (1 + p / 10), p]);
  const timeline = (k: number) => Array.from({ length: 30 }, (_, i) => ({ t: i * 10, rss: { 100: Math.min(16000, i * 600 * k), 101: Math.min(8000, i * 300 * k) } }));
  return {
    name,
    what: 'synthetic numbers for a rendering test',
    runs: { faultline: [run(0.8), run(0.9), run(1)], baseline: [run(1), run(1.1), run(1.2)] },
    cdf: { faultline: cdf(2), baseline: cdf(5) },
    timeline: { faultline: timeline(2), baseline: timeline(1) },
  };
}

t.test('the HTML report renders its charts in headless Chromium', async (t) => {
  const dir = tempDir(t, 'report');
  const scenarios = ['isolated', 'tree-4'].map((n) => {
    const s = scenario(n);
    return { ...s, comparison: compare(s) };
  });
  const report: BenchReport = { date: new Date().toISOString(), machine: { cpus: 2, kernel: 'test', node: process.version }, reps: 3, scenarios };
  const { html, json } = writeReport(report, dir);
  t.same(JSON.parse(fs.readFileSync(json, 'utf8')).scenarios.length, 2, 'JSON results written');
  t.equal(scenarios[0].comparison.find((c) => c.key === 'timeToRestored')?.ratio, 0.818, 'ratio of medians (270/330)');

  if (!fs.existsSync(CHROMIUM)) {
    t.comment(`SKIP: Debian's chromium is not installed (${CHROMIUM}); scripts/setup-test-deps.sh installs it`);
    t.pass('chart rendering in a browser skipped: no chromium', { skip: `no ${CHROMIUM}` });
    return;
  }
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto('file://' + html);
  const charts = await page.locator('.chart svg').count();
  t.equal(charts, 4, 'a CDF and a timeline per scenario');
  const lines = await page.locator('.chart svg path').count();
  t.ok(lines > 20, `chart paths drawn: ${lines}`);
  const legend = await page.locator('.chart svg text', { hasText: 'faultline' }).count();
  t.ok(legend >= 4, 'every chart has a faultline legend entry');
  const box = await page.locator('.chart.cdf svg').first().boundingBox();
  t.ok(box && box.width >= 600 && box.height >= 300, `chart laid out at its size: ${JSON.stringify(box)}`);
  const shot = path.join(dir, 'report.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.ok(fs.statSync(shot).size > 20_000, 'screenshot taken');
  if (process.env.FAULTLINE_KEEP_SCREENSHOT) fs.copyFileSync(shot, process.env.FAULTLINE_KEEP_SCREENSHOT);
});
