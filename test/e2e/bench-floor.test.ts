// The bench's copy floor (native/floor/copy-floor.c, bench/floor.ts): UFFDIO_COPY alone from a pages
// file into fresh memory, every rep verified byte for byte; bad input gives one line naming the file.
// Never a speed threshold: speed on this shared VM is the bench's business, not a test's.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { COPY_FLOOR, pagesFileOf, runCopyFloor, type CopyFloor } from '../../bench/floor';
import type { RunMetrics, ScenarioResult } from '../../bench/harness';
import { floorRows } from '../../bench/metrics';
import type { GenerateSpec } from '../../src/images';
import { checkUffdAvailable } from '../../src/cli/preflight';
import { BASE, makeImages, tempDir } from '../helpers/restore';

/** pid 1's pages file is the larger (4096 dense pages = 16 MiB), pid 2's holds 1024. */
const spec: GenerateSpec = {
  processes: [
    { pid: 1, ppid: 0, regions: [{ name: 'dense', start: BASE, pages: 4096, kind: 'dense', seed: 7 }] },
    { pid: 2, ppid: 1, regions: [{ name: 'dense', start: BASE, pages: 1024, kind: 'dense', seed: 8 }] },
  ],
};

function uffdWhy(): string | undefined {
  try {
    checkUffdAvailable();
    return undefined;
  } catch (e) {
    return `${(e as Error).message}: the copy floor copies with real userfaultfd`;
  }
}
const skip = uffdWhy();
if (skip) t.comment(`SKIP: ${skip}`);

const floor = (...args: string[]) => spawnSync(COPY_FLOOR, args, { encoding: 'utf8', timeout: 120_000 });

t.test('copies the pages file with 1 and 2 threads, verified, and reports JSON', { skip }, async (t) => {
  const images = makeImages(tempDir(t, 'floor'), spec);
  const pagesFile = pagesFileOf(images);
  t.equal(path.basename(pagesFile), 'pages-1.img', 'the largest pages file of the set');
  const r = floor('--pages-file', pagesFile, '--threads', '1,2', '--reps', '1', '--json');
  t.equal(r.status, 0, `exit 0 ${r.stderr.trim()}`);
  t.equal(r.stderr, '', 'nothing on stderr');
  const out = JSON.parse(r.stdout) as CopyFloor;
  t.equal(out.pagesFile, pagesFile);
  t.equal(out.pages, 4096, 'all of the file by default');
  t.equal(out.slice, 256, 'default slice');
  t.equal(out.verified, true, 'every rep compared byte for byte with the pages file');
  t.ok(out.warmup.gbps > 0, 'the warm-up rep is reported apart');
  t.same(out.results.map((x) => x.threads), [1, 2], 'one result per thread count');
  for (const x of out.results) {
    t.ok(x.gbps > 0 && x.pagesPerSec > 0, `${x.threads} thread(s): ${x.gbps} GB/s, ${x.pagesPerSec} pages/s`);
    t.equal(x.runsGBps.length, 1, 'one run per rep');
  }

  // A slice that does not divide the shares, and part of the file only: still every byte verified.
  const odd = floor('--pages-file', pagesFile, '--pages', '1000', '--threads', '3', '--slice', '7', '--reps', '2', '--json');
  t.equal(odd.status, 0, `odd slice and page count: exit 0 ${odd.stderr.trim()}`);
  const o = JSON.parse(odd.stdout) as CopyFloor;
  t.equal(o.pages, 1000);
  t.equal(o.verified, true);
  t.equal(o.results[0].runsGBps.length, 2);

  const text = floor('--pages-file', pagesFile, '--threads', '1', '--reps', '1');
  t.equal(text.status, 0, 'text output: exit 0');
  t.match(text.stdout, /every copy verified/);
  t.match(text.stdout, /1 thread : +[\d.]+ GB\/s median/);
});

t.test("bench/floor.ts: the scenario's floor and the drain as a fraction of it", { skip }, async (t) => {
  const images = makeImages(tempDir(t, 'floor-bench'), spec);
  const f = runCopyFloor(images, { threads: [1, 2], reps: 1 });
  t.equal(f.pages, 4096);
  t.same(f.results.map((x) => x.threads), [1, 2]);
  // Synthetic drains against a synthetic floor: the rows are arithmetic, checked exactly.
  const run = (drainGBps: number) => ({ drainGBps }) as RunMetrics;
  const s = { runs: { faultline: [run(1), run(2), run(3)], baseline: [run(1), run(1), run(4)] } } as ScenarioResult;
  const synthetic: CopyFloor = { ...f, results: [{ threads: 1, gbps: 4, pagesPerSec: 1, runsGBps: [3, 4, 5] }, { threads: 2, gbps: 8, pagesPerSec: 2, runsGBps: [8] }] };
  const rows = floorRows(s, synthetic);
  t.same(
    rows.map((r) => [r.key, r.faultline, r.baseline, r.ratio]),
    [
      ['copyFloor1', 4, 4, null],
      ['copyFloor2', 8, 8, null],
      ['drainPerFloor1', 0.5, 0.25, 2],
      ['drainPerFloor2', 0.25, 0.125, 2],
    ],
    'floor rows, then median drain / floor per daemon',
  );
  t.same(rows[0].spread.faultline, [3, 5], "the floor's min–max over its reps");
});

t.test('a pages file that does not exist: non-zero exit, one line naming the file', async (t) => {
  const missing = path.join(tempDir(t, 'floor-missing'), 'pages-9.img');
  const r = floor('--pages-file', missing, '--json');
  t.not(r.status, 0, 'non-zero exit');
  t.equal(r.stdout, '', 'no JSON');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr.trim()}`);
  t.ok(r.stderr.includes(missing), 'names the file');
  t.match(r.stderr, /No such file/);
});

t.test('an empty pages file: non-zero exit, one line naming the file', async (t) => {
  const empty = path.join(tempDir(t, 'floor-empty'), 'pages-1.img');
  fs.writeFileSync(empty, '');
  const r = floor('--pages-file', empty, '--threads', '1,2', '--reps', '1', '--json');
  t.not(r.status, 0, 'non-zero exit');
  t.equal(r.stdout, '', 'no JSON');
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr.trim()}`);
  t.ok(r.stderr.includes(empty), 'names the file');
  t.match(r.stderr, /empty/);
});
