// `faultline inspect` (issue 11): a real CRIU 4.2 dump and generated images, checked against what
// the daemon itself reports when it restores the same images; a bad image is one error line.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, runRestore } from '../../src/target/run';
import type { InspectReport } from '../../src/cli/inspect';
import { FIXTURE, MiB, assertRestored, denseTree, makeImages, tempDir, withoutPages } from '../helpers/restore';

const FIXTURE_IMG = path.join(FIXTURE, 'img');

function inspect(dir: string, json = true) {
  return spawnSync(process.execPath, [CLI, 'inspect', '-D', dir, ...(json ? ['--json'] : [])], { encoding: 'utf8', timeout: 30_000 });
}

t.test('a real CRIU 4.2 dump: processes, lazy pages, page images', async (t) => {
  const r = inspect(FIXTURE_IMG);
  t.equal(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout) as InspectReport;
  t.same(rep.processes.map((p) => p.pid).sort(), [23581, 23583], 'both processes of pstree.img');
  t.ok(rep.imgVersion > 0, `image version ${rep.imgVersion}`);
  for (const p of rep.processes) {
    t.ok(p.lazyPages > 0 && p.lazyVmas > 0 && p.vmas >= p.lazyVmas, `pid ${p.pid}: ${p.lazyPages} lazy pages in ${p.lazyVmas} of ${p.vmas} VMAs`);
    t.ok(p.pagemapEntries > 0, `pid ${p.pid}: ${p.pagemapEntries} pagemap entries`);
  }
  t.equal(rep.totals.lazyPages, rep.processes.reduce((n, p) => n + p.lazyPages, 0), 'totals add up');
  t.same(rep.pagesFiles.map((f) => f.file), ['pages-1.img', 'pages-2.img']);
  for (const f of rep.pagesFiles) t.equal(f.bytes, fs.statSync(path.join(FIXTURE_IMG, f.file)).size, `${f.file}: its size`);
  t.same(rep.parents, [], 'no pre-dump parent');
  const table = inspect(FIXTURE_IMG, false);
  t.equal(table.status, 0);
  t.match(table.stdout, /CRIU image version \d+\), 2 processes/);
  t.match(table.stdout, /^\s+23581\s/m);
  t.match(table.stdout, /^\s+total\s/m);
  t.match(table.stdout, /page images: pages-1\.img [\d.]+ MiB, pages-2\.img [\d.]+ MiB/);
});

t.test("generated images: inspect's lazy pages are what the daemon serves when it restores them", async (t) => {
  const dir = tempDir(t, 'inspect');
  const images = makeImages(dir, denseTree(2, 16 * MiB));
  const rep = JSON.parse(inspect(images).stdout) as InspectReport;
  const r = await runRestore({ imagesDir: images, workDir: path.join(dir, 'work'), target: { fraction: 0.1 } });
  assertRestored(t, r, 2);
  t.equal(rep.totals.lazyPages, r.daemon.summary!.lazyPages, `${rep.totals.lazyPages} lazy pages, as the daemon's summary says`);
  // denseTree: each process's sparse region has data in one page of four: 768 of its 1024 are holes
  for (const p of rep.processes) t.equal(p.holePages, 768, `pid ${p.pid}: ${p.holePages} hole pages, those of the sparse region`);

  // the restoring side of a remote restore: no page images here
  const local = withoutPages(images, dir);
  const remote = inspect(local, false);
  t.equal(remote.status, 0, remote.stderr);
  t.match(remote.stdout, /page images: none here \(the data is with a page server\)/);
});

t.test('a damaged image: one error line naming the file, exit 1', async (t) => {
  const dir = tempDir(t, 'inspect-bad');
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  const pm = path.join(images, 'pagemap-1.img');
  fs.truncateSync(pm, fs.statSync(pm).size - 3);
  const r = inspect(images, false);
  t.equal(r.status, 1);
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, r.stderr);
  t.match(lines[0], /^faultline: error: pagemap-1\.img: /);
  t.equal(r.stdout, '');
});
