// The restore-fanout bench (bench/fanout.ts) end to end, small: 2 concurrent restores of a 32 MiB
// checkpoint through one `faultline serve` and through 2 stand-alone daemons, real CRIU left out.
// Checks the JSON report's shape and that every restore verified every page; never a speed threshold.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import type { FanoutReport } from '../../bench/fanout';
import { checkUffdAvailable } from '../../src/cli/preflight';
import { ROOT, tempDir } from '../helpers/restore';

function uffdWhy(): string | undefined {
  try {
    checkUffdAvailable();
    return undefined;
  } catch (e) {
    return `${(e as Error).message}: the bench restores with real userfaultfd`;
  }
}
const skip = uffdWhy();
if (skip) t.comment(`SKIP: ${skip}`);

t.test('bench:fanout --quick --n 2 --json --no-criu: both set-ups, every restore verified', { skip }, async (t) => {
  const work = tempDir(t, 'bench-fanout');
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/bench/fanout.js'), '--quick', '--n', '2', '--json', '--no-criu', '--work', work], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, `exit 0 ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  const report = JSON.parse(r.stdout) as FanoutReport;
  t.same(report.ns, [2]);
  t.equal(report.checkpoint.mib, 32, '--quick: 32 MiB');
  t.match(report.criu, { skipped: /--no-criu/ }, 'real CRIU left out, and said so');
  t.same(report.runs.map((x) => `${x.group}/${x.setup}/${x.n}`).sort(), ['target/engine/2', 'target/standalone/2']);
  for (const run of report.runs) {
    const name = `${run.setup} N=${run.n}`;
    t.ok(run.ok, `${name}: ok ${run.errors.join('; ')}`);
    t.equal(run.mismatches, 0, `${name}: 0 mismatches`);
    t.equal(run.restores.length, 2, `${name}: one row per restore`);
    for (const x of run.restores) {
      t.ok(x.ok, `${name} restore ${x.i}: ok ${x.error ?? ''}`);
      t.equal(x.mismatches, 0, `${name} restore ${x.i}: 0 mismatches`);
      t.equal(x.verifiedPages, 32 * 256, `${name} restore ${x.i}: every page of the checkpoint verified`);
      t.ok(x.endMs > 0 && x.cpuMs > 0 && x.maxRssKiB > 0, `${name} restore ${x.i}: end, CPU and RSS measured`);
    }
    t.ok(run.allRestoredMs >= Math.max(...run.restores.map((x) => x.endMs)), `${name}: all restored = the last restore's end`);
    t.ok(run.timeToRestoredMs && run.timeToRestoredMs.max > 0, `${name}: the summaries' time to restored`);
    t.ok(run.firstTouchUs.count > 0 && run.firstTouchUs.p99 > 0, `${name}: first-touch p99 over ${run.firstTouchUs.count} touches`);
    t.ok(run.daemonCpuMs > 0 && run.daemonPeakRssMiB > 0 && run.daemonPeakAnonMiB > 0, `${name}: daemon CPU and RSS`);
  }
  const engine = report.runs.find((x) => x.setup === 'engine')!;
  t.ok(engine.clients && engine.clients.cpuMs > 0 && engine.clients.peakRssMiB > 0, 'the engine clients are measured apart');
  t.equal(engine.warmup, 1, 'the engine served one warm-up restore first');
  const time = report.ratios.find((x) => x.group === 'target' && x.n === 2 && x.key === 'allRestoredMs');
  t.ok(time && time.engineToStandalone! > 0, `engine/stand-alone ratio of the time until all restored: ${time?.engineToStandalone}`);
  for (const key of ['firstTouchP99', 'daemonCpuMs', 'daemonPeakRssMiB']) {
    const r = report.ratios.find((x) => x.key === key && x.n === 2);
    t.ok(r && r.engine > 0 && r.standalone! > 0 && r.engineToStandalone! > 0, `${key} ratio: ${r?.engine} / ${r?.standalone} = ${r?.engineToStandalone}`);
  }
  t.equal(report.targets.length, 4, "the issue's targets, each measured or said why not");
});
