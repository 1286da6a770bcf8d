import t from 'tap';
import { runRestore } from '../../src/target/run';
import { MiB, assertRestored, denseTree, makeImages, tempDir } from '../helpers/restore';

t.test('three 64 MiB processes with two threads each restore in parallel, all verified', async (t) => {
  const dir = tempDir(t, 'three');
  const images = makeImages(dir, denseTree(3, 64 * MiB));
  const r = await runRestore({ imagesDir: images, workDir: dir, target: { pattern: 'stride', stride: 8, fraction: 0.3, threads: 2 } });
  assertRestored(t, r, 3);
  const s = r.daemon.summary!;
  t.equal(s.processes, 3);
  t.ok(s.pagesByFault > 0, `pages by fault: ${s.pagesByFault}`);
  t.ok(s.pagesByFill > 0, `pages by fill: ${s.pagesByFill}`);
  t.equal(s.pagesByFault + s.pagesByFill + s.existingPages, s.lazyPages, 'every lazy page copied exactly once');
  t.equal(s.workers, 2);
});
