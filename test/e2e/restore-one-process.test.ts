import t from 'tap';
import { runRestore } from '../../src/target/run';
import { MiB, assertRestored, denseTree, makeImages, tempDir } from '../helpers/restore';

t.test('one 64 MiB process: faults and background fill both serve pages, all verified', async (t) => {
  const dir = tempDir(t, 'one');
  const images = makeImages(dir, denseTree(1, 64 * MiB));
  const r = await runRestore({ imagesDir: images, workDir: dir, target: { pattern: 'random', fraction: 0.2, threads: 2, seed: 7 } });
  assertRestored(t, r, 1);
  const s = r.daemon.summary!;
  t.ok(s.pagesByFault > 0, `pages by fault: ${s.pagesByFault}`);
  t.ok(s.pagesByFill > 0, `pages by fill: ${s.pagesByFill}`);
  t.ok(s.zeroPages > 0, `holes answered with zero pages: ${s.zeroPages}`);
  t.equal(s.pagesByFault + s.pagesByFill + s.existingPages, s.lazyPages, 'every lazy page copied exactly once');
  t.ok(s.faultServiceUs.count > 0, 'fault service latency measured');
  if (process.getuid?.() === 0) t.same([...new Set(s.workerNice)], [-10], 'the workers run at nice -10, above the restored tree');
  else t.comment(`SKIP worker priority: raising it needs root (uid ${process.getuid?.()})`);
});
