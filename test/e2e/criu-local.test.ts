// Real CRIU in the loop, locally: `criu dump` of the project's workload tree, then
// `criu restore --lazy-pages` with `faultline lazy-pages` serving the pages. The restored processes
// check every word of their memory themselves (native/workload/workload.c) and report per process.
import t, { type Test } from 'tap';
import { criuSkip } from '../helpers/criu';
import { assertExits, assertVerified, dumpWorkload, lazyRestore, type LazyRun } from '../helpers/criu-restore';
import { workloadLayout } from '../../src/criu/workload';

const PROCS = 4;
const MIB = 32;

/** What faultline's summary must account for, beyond every word verified by the tree itself. */
function assertSummary(t: Test, run: LazyRun, processes: number, atLeast = processes): void {
  const s = run.daemon.summary;
  t.ok(s, 'faultline printed its summary');
  if (!s) return;
  if (atLeast === processes) t.equal(s.processes, processes, `the daemon restored ${processes} processes`);
  else t.ok(s.processes >= atLeast && s.processes <= processes, `the daemon restored ${s.processes} processes (${atLeast} to ${processes})`);
  // what the workload itself wrote is in the images as lazy pages (stacks, heap and libraries add more)
  const l = workloadLayout(MIB);
  const written = PROCS * (l.dense + l.sparse / 4 + l.zero + l.ro + l.inherit);
  t.ok(s.lazyPages >= written, `lazy pages ${s.lazyPages} >= the ${written} the tree wrote`);
  t.ok(s.pagesByFault > 0, `pages by fault: ${s.pagesByFault}`);
}

t.test('criu dump, faultline lazy-pages, criu restore --lazy-pages: every word verified', { skip: criuSkip() }, async (t) => {
  const d = await dumpWorkload(t, 'criu-local-verify', { procs: PROCS, mib: MIB, action: 'verify' });
  const o = { name: 'local', daemon: 'faultline' as const };
  const run = await lazyRestore(t, d, o);
  assertVerified(t, d, run.results);
  assertExits(t, run, o);
  assertSummary(t, run, PROCS);
  const s = run.daemon.summary!;
  t.equal(s.pagesByFault + s.pagesByFill + s.existingPages, s.lazyPages, 'every lazy page copied exactly once');
  t.comment(`criu restore ${run.restore.restoreMs.toFixed(0)} ms; faultline: ${s.pagesByFault} pages by fault, ${s.pagesByFill} by fill, ${s.timeToRestoredMs} ms to restored`);
});

t.test('the same with fork, mremap, swap, DONTNEED and munmap while pages are still lazy', { skip: criuSkip() }, async (t) => {
  const d = await dumpWorkload(t, 'criu-local-events', { procs: PROCS, mib: MIB, action: 'events' });
  const o = { name: 'local-events', daemon: 'faultline' as const };
  const run = await lazyRestore(t, d, o);
  assertVerified(t, d, run.results);
  for (const r of run.results.filter((r) => !r.index.endsWith('.f'))) {
    const kinds = r.events.map((e) => e.split(':')[0]);
    t.same(kinds, ['fork', 'move', 'grow', 'shrink', 'swap', 'dontneed', 'munmap'], `process ${r.index} ran the whole event script`);
  }
  assertExits(t, run, o);
  // The forked children arrive through UFFD_EVENT_FORK, unless the fill completed their parent
  // first: its uffd is closed then, and the child inherits every page (the kernel copies them).
  assertSummary(t, run, 2 * PROCS, PROCS);
});
