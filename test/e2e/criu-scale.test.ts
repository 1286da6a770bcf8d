// Real CRIU at scale, locally with faultline as the lazy-pages daemon: a tree of 16 processes, and
// one process of 1 GiB verified by two threads. Every process checks every word of its memory; the
// comments give each phase's time (the suite's budget is tight: 2 shared CPUs).
import t from 'tap';
import { criuSkip } from '../helpers/criu';
import { assertExits, assertVerified, dumpWorkload, lazyRestore } from '../helpers/criu-restore';
import { workloadLayout } from '../../src/criu/workload';

const skip = criuSkip();

t.test('a tree of 16 processes: criu dump, faultline lazy-pages, criu restore --lazy-pages', { skip }, async (t) => {
  const d = await dumpWorkload(t, 'criu-scale-16', { procs: 16, mib: 4, threads: 1, action: 'verify' });
  const run = await lazyRestore(t, d, { name: 'sixteen', daemon: 'faultline' });
  assertVerified(t, d, run.results);
  assertExits(t, run, { name: 'sixteen', daemon: 'faultline' });
  t.equal(run.daemon.summary?.processes, 16, 'faultline restored 16 processes');
  t.comment(
    `16 x 4 MiB: fill ${d.fillMs.toFixed(0)} ms, dump ${d.dumpMs.toFixed(0)} ms, restore ${run.restore.restoreMs.toFixed(0)} ms, ` +
      `every result ${run.resultsMs.toFixed(0)} ms, daemon exit ${run.daemonExitMs.toFixed(0)} ms after criu restore started`,
  );
});

t.test('one process of 1 GiB, verified by 2 threads', { skip }, async (t) => {
  const d = await dumpWorkload(t, 'criu-scale-1g', { procs: 1, mib: 1024, threads: 2, action: 'verify' });
  const run = await lazyRestore(t, d, { name: 'gib', daemon: 'faultline', restoreTimeoutMs: 60_000, resultsTimeoutMs: 90_000 });
  assertVerified(t, d, run.results);
  assertExits(t, run, { name: 'gib', daemon: 'faultline' });
  const s = run.daemon.summary;
  // what the workload wrote is in the images as lazy pages (as criu-local.test.ts counts it)
  const l = workloadLayout(1024);
  const written = l.dense + l.sparse / 4 + l.zero + l.ro + l.inherit;
  t.ok(s && s.lazyPages >= written, `faultline served ${s?.lazyPages} lazy pages, at least the ${written} the process wrote`);
  t.comment(
    `1 GiB: fill ${d.fillMs.toFixed(0)} ms, dump ${d.dumpMs.toFixed(0)} ms, restore ${run.restore.restoreMs.toFixed(0)} ms, ` +
      `every word verified ${run.resultsMs.toFixed(0)} ms, daemon exit ${run.daemonExitMs.toFixed(0)} ms after criu restore started; ` +
      `${s?.pagesByFault} pages by fault, ${s?.pagesByFill} by fill`,
  );
});
