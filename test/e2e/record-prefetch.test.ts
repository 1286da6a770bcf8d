// Working-set record and replay: --record-faults writes each process's first-fault order, and
// --prefetch fills those pages first on the next restore, which still verifies byte for byte.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runRestore } from '../../src/target/run';
import { MiB, assertRestored, denseTree, makeImages, tempDir } from '../helpers/restore';

t.test('record the fault order, then restore again prefetching it', async (t) => {
  const dir = tempDir(t, 'trace');
  // 64 MiB each so that the fill (every worker) cannot take a whole process before its first fault
  // in most runs; a process the fill completed first legitimately records no fault.
  const images = makeImages(dir, denseTree(2, 64 * MiB));
  const trace = path.join(dir, 'faults.trace');
  const target = { pattern: 'random' as const, fraction: 0.2, seed: 5 };
  const first = await runRestore({ imagesDir: images, workDir: path.join(dir, 'w1'), daemonArgs: ['--record-faults', trace], target });
  assertRestored(t, first, 2);
  const lines = fs.readFileSync(trace, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { pid: number; pages: number[] });
  t.same(lines.map((l) => l.pid).sort(), [1, 2], 'one line per process');
  const recorded = lines.reduce((n, l) => n + l.pages.length, 0);
  t.ok(recorded > 0, `${recorded} faulted pages recorded (${lines.map((l) => `pid ${l.pid}: ${l.pages.length}`).join(', ')})`);
  t.ok(recorded <= (first.daemon.summary?.faults ?? 0), `at most one recorded page per fault (${first.daemon.summary?.faults} faults)`);
  for (const l of lines) {
    t.equal(new Set(l.pages).size, l.pages.length, 'each page once');
    t.ok(l.pages.every((a) => a % 4096 === 0), 'page-aligned image addresses');
  }
  const second = await runRestore({ imagesDir: images, workDir: path.join(dir, 'w2'), daemonArgs: ['--prefetch', trace], target });
  assertRestored(t, second, 2);
  t.comment(`faults without prefetch ${first.daemon.summary?.faults}, with ${second.daemon.summary?.faults}`);
});
