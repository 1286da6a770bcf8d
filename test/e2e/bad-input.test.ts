// Bad images met mid-restore: each gives one clear error line naming the file, a non-zero exit, and
// the restored processes are killed — none is left to read zeros where the image has data. The
// target's plan is written from the good images first; the images are damaged just before the
// restorer starts, so the daemon meets the damage when the process is handed over.
import t, { type Test } from "tap";
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PE_LAZY, PE_PARENT, PE_PRESENT, expectedPage, writeImageSet } from '../../src/images';
import { CLI, runRestore } from '../../src/target/run';
import { BASE, MiB, assertRestored, assertStopped, denseTree, makeImages, tempDir } from '../helpers/restore';

const small = () => denseTree(2, 12 * MiB);

async function restoreDamaged(t: Test, name: string, damage: (images: string) => void, mentions: RegExp) {
  const dir = tempDir(t, name);
  const pristine = makeImages(dir, small());
  const images = path.join(dir, 'damaged');
  fs.cpSync(pristine, images, { recursive: true });
  damage(images);
  const r = await runRestore({ imagesDir: images, planImagesDir: pristine, workDir: dir, target: { fraction: 0.5, threads: 2 } });
  assertStopped(t, r, mentions);
}

t.test('truncated pagemap', (t) =>
  restoreDamaged(t, 'trunc', (d) => {
    const f = path.join(d, 'pagemap-2.img');
    fs.truncateSync(f, fs.statSync(f).size - 3);
  }, /pagemap-2\.img/));

t.test('wrong magic in mm', (t) =>
  restoreDamaged(t, 'magic', (d) => {
    const f = path.join(d, 'mm-2.img');
    const b = fs.readFileSync(f);
    b.writeUInt32LE(0x12345678, 4);
    fs.writeFileSync(f, b);
  }, /mm-2\.img.*magic/i));

t.test('pagemap pointing past the end of the pages file', (t) =>
  restoreDamaged(t, 'short', (d) => {
    const f = path.join(d, 'pages-2.img');
    fs.truncateSync(f, fs.statSync(f).size - 8192);
  }, /pages-2\.img/));

t.test('missing pages file', (t) => restoreDamaged(t, 'nopages', (d) => fs.rmSync(path.join(d, 'pages-2.img')), /pages-2\.img/));

/** pre1/ holds the whole region; images/ re-dumps its upper half (lazy) and points at pre1 for the rest. */
function parentChain(dir: string): string {
  const pages = 512;
  const vmas = [{ start: BASE, end: BASE + pages * 4096 }];
  const region = (from: number, n: number, seed: number) => {
    const b = Buffer.alloc(n * 4096);
    for (let i = 0; i < n; i++) expectedPage(BASE + (from + i) * 4096, from + i, seed).copy(b, i * 4096);
    return b;
  };
  writeImageSet(path.join(dir, 'pre1'), {
    processes: [{ pid: 1, ppid: 0, vmas, entries: [{ vaddr: BASE, nrPages: pages, flags: PE_LAZY | PE_PRESENT, data: region(0, pages, 1) }] }],
  });
  const half = pages / 2;
  writeImageSet(path.join(dir, 'images'), {
    parent: '../pre1',
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas,
        entries: [
          { vaddr: BASE, nrPages: half, flags: PE_PARENT },
          { vaddr: BASE + half * 4096, nrPages: half, flags: PE_LAZY | PE_PRESENT, data: region(half, half, 2) },
        ],
      },
    ],
  });
  return path.join(dir, 'images');
}

t.test('a parent chain (pre-dump) restores: parent pages eagerly, the rest lazily, all verified', async (t) => {
  const dir = tempDir(t, 'parent');
  const r = await runRestore({ imagesDir: parentChain(dir), workDir: dir, target: { fraction: 0.5 } });
  assertRestored(t, r, 1);
  t.equal(r.daemon.summary?.lazyPages, 256, 'only the re-dumped half is lazy');
});

t.test('missing parent target', async (t) => {
  const dir = tempDir(t, 'noparent');
  const pristine = parentChain(dir);
  // The daemon's copy points at a parent that is not there; the restorer's copy is whole.
  const images = path.join(dir, 'damaged');
  fs.cpSync(pristine, images, { recursive: true, verbatimSymlinks: true });
  fs.rmSync(path.join(images, 'parent'));
  fs.symlinkSync('../pre1-gone', path.join(images, 'parent'));
  const r = await runRestore({ imagesDir: images, planImagesDir: pristine, workDir: dir, target: { fraction: 0.5 } });
  assertStopped(t, r, /parent/);
});

// Images the daemon reads before it listens: it refuses to start, so no restore can begin on them.
for (const [file, damage] of [
  ['pstree.img', (f: string) => fs.writeFileSync(f, Buffer.from('not an image at all'))],
  ['inventory.img', (f: string) => fs.truncateSync(f, 6)],
] as const) {
  t.test(`bad ${file}: the daemon does not start`, async (t) => {
    const dir = tempDir(t, 'startup');
    const images = makeImages(dir, small());
    damage(path.join(images, file));
    const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', images], { encoding: 'utf8' });
    t.equal(r.status, 1, 'exit 1');
    const lines = r.stderr.trim().split('\n');
    t.equal(lines.length, 1, `one line: ${r.stderr}`);
    t.match(lines[0], new RegExp(`^faultline: error: .*${file.replace('.', '\\.')}`));
    t.notOk(fs.existsSync(path.join(images, 'lazy-pages.socket')), 'no socket was created');
  });
}

t.test('images directory that does not exist', async (t) => {
  const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', '/nonexistent/images'], { encoding: 'utf8' });
  t.equal(r.status, 1);
  t.match(r.stderr.trim(), /^faultline: error: .*inventory\.img/);
});
