// The bench report: one JSON file for machines and one self-contained HTML page with SVG charts
// (ECharts rendered server-side, no browser needed to make it): per scenario the first-touch latency
// CDF of faultline vs the baseline, and the restore timeline (resident pages over time).
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as echarts from 'echarts';
import type { ScenarioResult } from './harness';
import { compare, type Comparison, type FloorReport } from './metrics';

export interface BenchReport {
  date: string;
  machine: { cpus: number; kernel: string; node: string };
  reps: number;
  scenarios: (ScenarioResult & { comparison: Comparison[]; floor?: FloorReport })[];
}

const COLORS = { faultline: '#d9480f', baseline: '#1c7ed6' };

function svgChart(option: echarts.EChartsCoreOption, width = 640, height = 320): string {
  const chart = echarts.init(null, null, { renderer: 'svg', ssr: true, width, height });
  chart.setOption({ animation: false, ...option });
  const svg = chart.renderToSVGString();
  chart.dispose();
  return svg;
}

export function cdfChart(s: ScenarioResult): string {
  return svgChart({
    title: { text: `${s.name}: first-touch latency CDF`, left: 'center', textStyle: { fontSize: 13 } },
    legend: { bottom: 0 },
    grid: { left: 60, right: 20, top: 40, bottom: 60 },
    xAxis: { type: 'log', name: 'µs', nameLocation: 'middle', nameGap: 25, min: 0.1 },
    yAxis: { type: 'value', name: 'percentile', min: 0, max: 100 },
    series: (['baseline', 'faultline'] as const).map((k) => ({
      name: k,
      type: 'line',
      step: 'end',
      symbol: 'none',
      color: COLORS[k],
      data: s.cdf[k].map(([us, p]) => [Math.max(us, 0.1), p]),
    })),
  });
}

export function timelineChart(s: ScenarioResult): string {
  return svgChart({
    title: { text: `${s.name}: restore timeline (resident pages, all processes)`, left: 'center', textStyle: { fontSize: 13 } },
    legend: { bottom: 0 },
    grid: { left: 80, right: 20, top: 40, bottom: 60 },
    xAxis: { type: 'value', name: 'ms since the restorer started', nameLocation: 'middle', nameGap: 25 },
    yAxis: { type: 'value', name: 'pages' },
    series: (['baseline', 'faultline'] as const).map((k) => ({
      name: k,
      type: 'line',
      symbol: 'none',
      color: COLORS[k],
      data: s.timeline[k].map((x) => [x.t, Object.values(x.rss).reduce((a, b) => a + b, 0)]),
    })),
  });
}

const esc = (s: string) => s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!);

/** The copy-floor rows of a scenario's values table (idle-drain scenarios only). */
function floorHtml(f: FloorReport | undefined): string {
  if (!f) return '';
  const note = `UFFDIO_COPY alone from ${esc(path.basename(f.pagesFile))}, ${f.pages} pages in ${f.slice}-page slices, median of ${f.reps} verified reps (warm-up ${f.warmup.gbps.toFixed(2)} GB/s)`;
  return [
    `<tr class="floor"><th colspan="6" style="text-align:left">copy floor: ${note}</th></tr>`,
    ...f.rows.map(
      (c) =>
        `<tr class="floor"><th>${esc(c.label)}${c.unit ? ` (${c.unit})` : ''}</th><td>${c.faultline}</td><td>${c.baseline}</td><td>${c.ratio !== null && Number.isFinite(c.ratio) ? c.ratio.toFixed(2) + '×' : '–'}</td><td>${c.spread.faultline.join('–')}</td><td>${c.spread.baseline.join('–')}</td></tr>`,
    ),
  ].join('\n');
}

export function renderHtml(r: BenchReport): string {
  const rows = r.scenarios
    .map((s) => {
      const cells = s.comparison
        .map((c) => {
          const good = Number.isFinite(c.ratio) && (c.better === 'lower' ? c.ratio <= 1 : c.ratio >= 1);
          return `<td class="${Number.isFinite(c.ratio) ? (good ? 'good' : 'bad') : ''}" title="faultline ${c.faultline} ${c.unit} / baseline ${c.baseline} ${c.unit}">${Number.isFinite(c.ratio) ? c.ratio.toFixed(2) + '×' : '–'}</td>`;
        })
        .join('');
      return `<tr><th>${esc(s.name)}</th>${cells}</tr>`;
    })
    .join('\n');
  const head = r.scenarios[0]?.comparison.map((c) => `<th>${esc(c.label)}<br><small>${c.better} is better</small></th>`).join('') ?? '';
  const sections = r.scenarios
    .map(
      (s) => `<section class="scenario" id="${esc(s.name)}">
<h2>${esc(s.name)}</h2><p>${esc(s.what)}</p>
<table class="values"><tr><th></th><th>faultline (median)</th><th>baseline (median)</th><th>ratio</th><th>faultline min–max</th><th>baseline min–max</th></tr>
${s.comparison.map((c) => `<tr><th>${esc(c.label)}${c.unit ? ` (${c.unit})` : ""}</th><td>${c.faultline}</td><td>${c.baseline}</td><td>${Number.isFinite(c.ratio) ? c.ratio.toFixed(2) + '×' : '–'}</td><td>${c.spread.faultline.join('–')}</td><td>${c.spread.baseline.join('–')}</td></tr>`).join('\n')}
${floorHtml(s.floor)}
</table>
<div class="chart cdf">${cdfChart(s)}</div>
<div class="chart timeline">${timelineChart(s)}</div>
</section>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>faultline bench ${esc(r.date)}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f5f5f5}.good{background:#d3f9d8}.bad{background:#ffe3e3}.chart{display:inline-block;margin:0 1em 1em 0}</style></head>
<body><h1>faultline vs C baseline (CRIU's policy), same invocation</h1>
<p>${esc(r.date)} · ${r.machine.cpus} CPUs · kernel ${esc(r.machine.kernel)} · Node ${esc(r.machine.node)} · ${r.reps} repetitions per daemon after a warm-up, interleaved. Ratios are faultline / baseline medians.</p>
<table class="ratios"><tr><th>scenario</th>${head}</tr>
${rows}
</table>
${sections}
</body></html>
`;
}

export function writeReport(r: BenchReport, outDir: string): { json: string; html: string } {
  fs.mkdirSync(outDir, { recursive: true });
  const json = path.join(outDir, 'bench-results.json');
  const html = path.join(outDir, 'bench-report.html');
  fs.writeFileSync(json, JSON.stringify(r, null, 2) + '\n');
  fs.writeFileSync(html, renderHtml(r));
  return { json, html };
}
