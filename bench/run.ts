// npm run bench [-- --quick] [--reps N] [--only a,b] [--out DIR] [--criu]
// Every scenario against faultline and the C baseline in one invocation; JSON + HTML report.
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { defaultWorkRoot, imagesFor, runScenario } from './harness';
import { runRestore } from '../src/target/run';
import * as fs from 'node:fs';
import { compare, floorRows } from './metrics';
import { formatFloor, runCopyFloor } from './floor';
import { writeReport, type BenchReport } from './report';
import { scenarios } from './scenarios';
import { REMOTE, runRemoteScenario } from './remote';
import { checkUffdAvailable } from '../src/cli/preflight';
import { criuBenchFailed, criuScenarioNames, formatCriuTable, runCriuBench } from './criu';

export async function bench(argv: string[]): Promise<number> {
  const o = new Command('bench')
    .option('--quick', 'the gate-sized scenarios (256 MiB instead of 1 GiB, fewer trees)')
    .option('--reps <n>', 'repetitions per daemon, after one warm-up', '3')
    .option('--only <names>', 'comma-separated scenario names')
    .option('--out <dir>', 'where the JSON and HTML go', path.resolve(__dirname, '../../bench/results'))
    .option('--work <dir>', 'image cache and scratch', defaultWorkRoot())
    .option('--faultline-args <args>', "extra flags for faultline's daemon in every scenario, e.g. '--workers 1' (to measure a variant against the same baseline)")
    .option('--criu', `also the real-CRIU scenarios (bench/criu.ts: ${criuScenarioNames().join(', ')}); naming one in --only selects it too`)
    .parse(argv, { from: 'user' })
    .opts<{ quick?: boolean; reps: string; only?: string; out: string; work: string; criu?: boolean; faultlineArgs?: string }>();
  const faultlineArgs = o.faultlineArgs?.split(' ').filter(Boolean);
  checkUffdAvailable();
  const only = o.only?.split(',');
  // The real-CRIU scenarios run after the others, with their own table and criu-results.json.
  const criuOnly = only?.filter((n) => criuScenarioNames().includes(n));
  const withCriu = !!o.criu || !!criuOnly?.length;
  const onlyCriu = !!only && only.length === criuOnly?.length;
  const list = scenarios(!!o.quick).filter((s) => !only || only.includes(s.name));
  const reps = Number(o.reps);
  const report: BenchReport = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, kernel: os.release(), node: process.version },
    reps,
    scenarios: [],
  };
  for (const s of list) {
    process.stdout.write(`${s.name}: ${s.what}\n`);
    const r = await runScenario(s, { reps, workRoot: o.work, faultlineArgs, log: (l) => process.stdout.write(l + '\n') });
    const entry: BenchReport['scenarios'][number] = { ...r, comparison: compare(r) };
    if (s.name.startsWith('idle-drain-')) {
      // The drain's physical limit on this machine, measured right after the drain itself (same pages
      // file, same page cache, same neighbours on the VM), so the fraction compares like with like.
      const floor = runCopyFloor(imagesFor(s, path.join(o.work, 'cache')));
      entry.floor = { ...floor, rows: floorRows(r, floor) };
      process.stdout.write(
        `  ${s.name} copy floor: ${formatFloor(floor.results)} ` +
          `(median of ${floor.reps}, ${floor.slice}-page slices; warm-up ${floor.warmup.gbps.toFixed(2)} GB/s)\n`,
      );
    }
    report.scenarios.push(entry);
    if (s.name === 'criu-like') {
      // Working-set replay: record the first-fault order of one restore, then restore again
      // filling those pages first (faultline only; the baseline runs as usual for the ratio).
      const trace = path.join(o.work, 'criu-like.trace');
      const rec = await runRestore({
        imagesDir: imagesFor(s, path.join(o.work, 'cache')),
        workDir: path.join(o.work, 'work', 'record'),
        daemonArgs: ['--record-faults', trace],
        target: s.target,
      });
      if (rec.daemon.code !== 0 || !fs.existsSync(trace)) throw new Error(`recording the criu-like trace failed: ${rec.daemon.stderr.trim()}`);
      const replay = { ...s, name: 'criu-like-prefetch', what: `${s.what}; faultline fills the pages a previous run faulted first (--prefetch)`, faultlineArgs: ['--prefetch', trace] };
      process.stdout.write(`${replay.name}: ${replay.what}\n`);
      const rp = await runScenario(replay, { reps, workRoot: o.work, log: (l) => process.stdout.write(l + '\n') });
      report.scenarios.push({ ...rp, comparison: compare(rp) });
    }
  }
  if (!o.quick && (!only || only.includes(REMOTE.name))) {
    process.stdout.write(`${REMOTE.name}: ${REMOTE.what}\n`);
    const r = await runRemoteScenario({ reps, workRoot: o.work, log: (l) => process.stdout.write(l + '\n') });
    if (r) report.scenarios.push({ ...r, comparison: compare(r) });
  }
  if (!onlyCriu) {
    const { json, html } = writeReport(report, o.out);
    process.stdout.write('\n' + formatTable(report) + `\nresults: ${json}\nreport:  ${html}\n`);
  }
  if (withCriu) {
    const criu = await runCriuBench({ quick: !!o.quick, reps, only: criuOnly?.length ? criuOnly : undefined, out: o.out, work: o.work, log: (l) => process.stdout.write(l + '\n') });
    process.stdout.write('\n' + formatCriuTable(criu) + `\nresults: ${path.join(o.out, 'criu-results.json')}\n`);
    if (criuBenchFailed(criu)) return 1;
  }
  return 0;
}

export function formatTable(r: BenchReport): string {
  const metric = (c: { label: string; unit: string }) => c.label + (c.unit ? ` (${c.unit})` : '');
  // The copy floor's labels may be a little longer than the metrics'; the column grows to fit them.
  const width = Math.max(27, ...r.scenarios.flatMap((s) => (s.floor?.rows ?? []).map((c) => metric(c).length)));
  const lines = [`scenario              ${'metric'.padEnd(width)} faultline     baseline     ratio (faultline/baseline)`];
  for (const s of r.scenarios) {
    for (const c of s.comparison) {
      lines.push(
        `${s.name.padEnd(21)} ${metric(c).padEnd(width)} ${String(c.faultline).padStart(9)}    ${String(c.baseline).padStart(9)}    ${Number.isFinite(c.ratio) ? c.ratio.toFixed(2) + '×' : '–'} (${c.better} is better)`,
      );
    }
    for (const c of s.floor?.rows ?? []) {
      const ratio = c.ratio === null ? '– (UFFDIO_COPY alone, no daemon: the same limit for both)' : `${Number.isFinite(c.ratio) ? c.ratio.toFixed(2) + '×' : '–'} (${c.better} is better)`;
      lines.push(`${s.name.padEnd(21)} ${metric(c).padEnd(width)} ${String(c.faultline).padStart(9)}    ${String(c.baseline).padStart(9)}    ${ratio}`);
    }
  }
  return lines.join('\n');
}

if (require.main === module) {
  bench(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      process.stderr.write(`bench: error: ${e.message}\n`);
      process.exitCode = 1;
    },
  );
}
