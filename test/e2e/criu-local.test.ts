// Real CRIU in the loop, locally: `criu dump` of the project's workload tree, then
// `criu restore --lazy-pages` with `faultline lazy-pages` serving the pages. The restored processes
// check every word of their memory themselves (native/workload/workload.c) and report per process.
import t, { type Test } from 'tap';
import * as path from 'node:path';
import { criuSkip } from '../helpers/criu';
import { tempDir } from '../helpers/restore';
import { criuDump, criuRestoreLazy, startLazyDaemon, type DaemonExit } from '../../src/criu/run';
import {
  WORDS_PER_PAGE,
  expectedPages,
  killTree,
  signalTree,
  startWorkload,
  waitResults,
  workloadLayout,
  type WorkloadAction,
  type WorkloadResult,
} from '../../src/criu/workload';

const PROCS = 4;
const MIB = 32;

interface LocalRun {
  results: WorkloadResult[];
  daemon: DaemonExit;
  restoreMs: number;
}

async function dumpAndRestore(t: Test, action: WorkloadAction): Promise<LocalRun> {
  const dir = tempDir(t, `criu-local-${action}`);
  const images = path.join(dir, 'images');
  const out = path.join(dir, 'out');
  const w = await startWorkload({ dir: out, procs: PROCS, mib: MIB, threads: 2, action });
  // criu dump kills the tree when it succeeds; this is for a dump that failed
  t.teardown(() => killTree(w.rootPid, w.rootStartTime));
  await criuDump(w.rootPid, images);

  const daemon = startLazyDaemon('faultline', { imagesDir: images });
  t.teardown(() => daemon.kill());
  await daemon.ready;
  const restored = await criuRestoreLazy(images);
  t.teardown(() => killTree(restored.rootHostPid, restored.rootStartTime));

  signalTree(restored.rootHostPid, 'SIGUSR1');
  let daemonEnded: DaemonExit | undefined;
  void daemon.exit.then((e) => (daemonEnded = e));
  const count = action === 'events' ? 2 * PROCS : PROCS;
  const results = await waitResults(out, count, 15_000, () =>
    daemonEnded && daemonEnded.code !== 0 ? `faultline lazy-pages exited ${daemonEnded.code ?? daemonEnded.signal}: ${daemonEnded.stderr.trim()}` : undefined,
  );
  let timer: NodeJS.Timeout | undefined;
  const exit = await Promise.race([daemon.exit, new Promise<undefined>((r) => (timer = setTimeout(r, 15_000, undefined)))]);
  clearTimeout(timer);
  if (!exit) throw new Error('faultline lazy-pages did not exit within 15 s of the results');
  return { results, daemon: exit, restoreMs: restored.restoreMs };
}

function assertVerified(t: Test, results: WorkloadResult[], action: WorkloadAction): void {
  for (const r of results) {
    const pages = expectedPages(MIB, action, r.index);
    t.equal(r.mismatches, 0, `process ${r.index}: 0 mismatches (first: ${r.first_mismatch})`);
    t.equal(r.error, null, `process ${r.index}: every system call of the action succeeded`);
    t.equal(r.pages, pages, `process ${r.index}: ${pages} pages verified`);
    t.equal(r.words, pages * WORDS_PER_PAGE, `process ${r.index}: every word verified`);
    t.ok(r.ok, `process ${r.index} reports ok`);
  }
}

function assertDaemon(t: Test, run: LocalRun, processes: number): void {
  const d = run.daemon;
  t.equal(d.code, 0, `faultline lazy-pages exits 0 ${d.stderr.trim()}`);
  const s = d.summary;
  t.ok(s, 'faultline printed its summary');
  if (!s) return;
  t.equal(s.processes, processes, `the daemon restored ${processes} processes`);
  // what the workload itself wrote is in the images as lazy pages (stacks, heap and libraries add more)
  const l = workloadLayout(MIB);
  const written = PROCS * (l.dense + l.sparse / 4 + l.zero + l.ro + l.inherit);
  t.ok(s.lazyPages >= written, `lazy pages ${s.lazyPages} >= the ${written} the tree wrote`);
  t.ok(s.pagesByFault > 0, `pages by fault: ${s.pagesByFault}`);
}

t.test('criu dump, faultline lazy-pages, criu restore --lazy-pages: every word verified', { skip: criuSkip() }, async (t) => {
  const run = await dumpAndRestore(t, 'verify');
  t.equal(run.results.length, PROCS, `${PROCS} results`);
  t.same(run.results.map((r) => r.index), ['0', '1', '2', '3'], 'one result per process of the tree');
  assertVerified(t, run.results, 'verify');
  assertDaemon(t, run, PROCS);
  const s = run.daemon.summary!;
  t.equal(s.pagesByFault + s.pagesByFill + s.existingPages, s.lazyPages, 'every lazy page copied exactly once');
  t.comment(`criu restore ${run.restoreMs.toFixed(0)} ms; faultline: ${s.pagesByFault} pages by fault, ${s.pagesByFill} by fill, ${s.timeToRestoredMs} ms to restored`);
});

t.test('the same with fork, mremap, swap, DONTNEED and munmap while pages are still lazy', { skip: criuSkip() }, async (t) => {
  const run = await dumpAndRestore(t, 'events');
  t.same(
    run.results.map((r) => r.index),
    ['0', '0.f', '1', '1.f', '2', '2.f', '3', '3.f'],
    'every process and the child it forked after restore reported',
  );
  assertVerified(t, run.results, 'events');
  for (const r of run.results.filter((r) => !r.index.endsWith('.f'))) {
    const kinds = r.events.map((e) => e.split(':')[0]);
    t.same(kinds, ['fork', 'move', 'grow', 'shrink', 'swap', 'dontneed', 'munmap'], `process ${r.index} ran the whole event script`);
  }
  // the forked children arrive through UFFD_EVENT_FORK
  assertDaemon(t, run, 2 * PROCS);
});
