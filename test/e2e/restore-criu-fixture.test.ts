// The real CRIU 4.2 dump (test/fixtures/criu-4.2-two-procs) restored through the daemon and verified
// page by page by the restore target.
import t from 'tap';
import * as path from 'node:path';
import { runRestore } from '../../src/target/run';
import { FIXTURE, assertRestored, tempDir } from '../helpers/restore';

t.test('the CRIU 4.2 two-process dump restores lazily and byte for byte', async (t) => {
  const dir = tempDir(t, 'fixture');
  const r = await runRestore({
    imagesDir: path.join(FIXTURE, 'img'),
    workDir: dir,
    target: { pattern: 'seq', fraction: 0.5, threads: 2 },
  });
  assertRestored(t, r, 2);
  const s = r.daemon.summary!;
  t.equal(s.processes, 2);
  // The dump is a few pages: whether the fill or a fault gets to one first is timing (every worker
  // fills on leases of several runs now, often all of it before the first touch). What must hold is
  // that each page arrived exactly once and that every byte verified.
  t.comment(`pages by fault: ${s.pagesByFault}, by fill: ${s.pagesByFill}`);
  t.equal(s.pagesByFault + s.pagesByFill + s.existingPages, s.lazyPages, 'every lazy page copied exactly once');
});
