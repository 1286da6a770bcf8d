import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PAGE_SIZE } from '../../src/address';
import {
  expectedPage,
  generateImageSet,
  PE_LAZY,
  PE_PRESENT,
  ProcessImages,
  readInventory,
  readMm,
  readPagemap,
  readPstree,
  writeImageSet,
} from '../../src/images';
import { splitEntries, MAGIC } from '../../src/images/framing';
import { decodeMessage } from '../../src/images/proto';

function tmpdir(t: tap.Test): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-images-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

const fill = (n: number, byte: number) => Buffer.alloc(n * PAGE_SIZE, byte);

t.test('writer round trip', async (t) => {
  const dir = tmpdir(t);
  const A = 0x7f0000000000;
  writeImageSet(dir, {
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas: [
          { start: A, end: A + 16 * PAGE_SIZE },
          { start: A + 32 * PAGE_SIZE, end: A + 40 * PAGE_SIZE, flags: 0x02, status: 0x41, prot: 1 },
        ],
        entries: [
          { vaddr: A, nrPages: 3, flags: PE_LAZY | PE_PRESENT, data: fill(3, 0xaa) },
          { vaddr: A + 8 * PAGE_SIZE, nrPages: 2, flags: PE_LAZY | PE_PRESENT, data: fill(2, 0xbb) },
          { vaddr: A + 32 * PAGE_SIZE, nrPages: 1, flags: PE_PRESENT, data: fill(1, 0xcc) },
        ],
      },
      { pid: 2, ppid: 1, vmas: [{ start: A, end: A + PAGE_SIZE }], entries: [{ vaddr: A, nrPages: 1, flags: PE_LAZY | PE_PRESENT, data: fill(1, 1) }] },
    ],
  });
  const inv = readInventory(dir);
  t.equal(inv.imgVersion, 2);
  t.equal(inv.fdinfoPerId, true);
  t.same(
    readPstree(dir).map((e) => [e.pid, e.ppid, e.pgid, e.sid, e.threads]),
    [
      [1, 0, 1, 1, [1]],
      [2, 1, 1, 1, [2]],
    ],
  );
  const mm = readMm(dir, 1);
  t.same(
    mm.vmas.map((v) => [v.start, v.end, v.flags, v.status, v.prot, v.fd]),
    [
      [A, A + 16 * PAGE_SIZE, 0x22, 0x201, 3, -1],
      [A + 32 * PAGE_SIZE, A + 40 * PAGE_SIZE, 0x02, 0x41, 1, -1],
    ],
  );
  const pm = readPagemap(dir, 1);
  t.equal(pm.pagesId, 1);
  t.equal(readPagemap(dir, 2).pagesId, 2);
  t.same(
    pm.entries.map((e) => [e.vaddr, e.nrPages, e.flags, e.offset]),
    [
      [A, 3, 6, 0],
      [A + 8 * PAGE_SIZE, 2, 6, 3 * PAGE_SIZE],
      [A + 32 * PAGE_SIZE, 1, 4, 5 * PAGE_SIZE],
    ],
  );
  // Both page-count fields are on the wire.
  const file = path.join(dir, 'pagemap-1.img');
  const raw = splitEntries(fs.readFileSync(file), file, MAGIC.PAGEMAP, 2);
  for (const r of raw.slice(1)) {
    const m = decodeMessage('pagemapEntry', r.body);
    t.equal(String(m.nr_pages), String(m.compat_nr_pages), 'nr_pages == compat_nr_pages');
    t.ok(Number(m.nr_pages) > 0);
  }
  t.equal(fs.statSync(path.join(dir, 'pages-1.img')).size, 6 * PAGE_SIZE);

  const p = ProcessImages.open(dir, 1);
  const loc = p.locate(A + PAGE_SIZE, 10)!;
  t.equal(loc.pages, 2, 'bounded by the entry end');
  t.equal(loc.offset, PAGE_SIZE);
  t.equal(loc.buf[loc.offset], 0xaa);
  t.equal(p.locate(A + 3 * PAGE_SIZE, 1), null, 'gap between entries is a hole');
  t.equal(p.locate(A + 8 * PAGE_SIZE, 1)!.buf[p.locate(A + 8 * PAGE_SIZE, 1)!.offset], 0xbb);
  t.same(p.lazyVmas(), [{ start: A, end: A + 16 * PAGE_SIZE }]);
  t.same(p.lazyRanges(), [
    { start: A, end: A + 3 * PAGE_SIZE },
    { start: A + 8 * PAGE_SIZE, end: A + 10 * PAGE_SIZE },
  ]);
  const runs = p.presentRuns();
  t.same(
    runs.map((r) => [r.vaddr, r.pages, r.lazy, path.basename(r.file), r.offset]),
    [
      [A, 3, true, 'pages-1.img', 0],
      [A + 8 * PAGE_SIZE, 2, true, 'pages-1.img', 3 * PAGE_SIZE],
      [A + 32 * PAGE_SIZE, 1, false, 'pages-1.img', 5 * PAGE_SIZE],
    ],
  );
});

t.test('locate merges entries contiguous in memory and file', async (t) => {
  const dir = tmpdir(t);
  const A = 0x500000000;
  writeImageSet(dir, {
    processes: [
      {
        pid: 7,
        ppid: 0,
        vmas: [{ start: A, end: A + 4096 * PAGE_SIZE }],
        entries: [0, 1024, 2048].map((i) => ({ vaddr: A + i * PAGE_SIZE, nrPages: 1024, flags: 6, data: fill(1024, i >> 10) })),
      },
    ],
  });
  const p = ProcessImages.open(dir, 7);
  t.equal(p.locate(A + 1000 * PAGE_SIZE, 5000)!.pages, 2072);
  t.equal(p.locate(A + 1000 * PAGE_SIZE, 100)!.pages, 100);
  t.equal(p.locate(A + 3072 * PAGE_SIZE, 1), null);
  t.same(p.lazyRanges(), [{ start: A, end: A + 3072 * PAGE_SIZE }], 'adjacent lazy entries in one VMA merge');
  t.equal(p.presentRuns().length, 1);
});

t.test('openPagesFile is injectable and called once, lazily', async (t) => {
  const dir = tmpdir(t);
  generateImageSet(dir, { processes: [{ pid: 3, ppid: 0, regions: [{ name: 'r', start: 0x10000000, pages: 8, kind: 'dense', seed: 5 }] }] });
  const opened: string[] = [];
  const p = ProcessImages.open(dir, 3, {
    openPagesFile: (f) => {
      opened.push(f);
      return fs.readFileSync(f);
    },
  });
  t.same(opened, [], 'not opened before first locate');
  p.locate(0x10000000, 1);
  p.locate(0x10001000, 1);
  t.same(opened, [path.join(path.resolve(dir), 'pages-1.img')], 'opened once, by absolute path');
});

t.test('generateImageSet: dense, sparse, zero regions, 1024-page entries', async (t) => {
  const dir = tmpdir(t);
  const D = 0x7f1000000000;
  const S = 0x7f2000000000;
  const Z = 0x7f3000000000;
  generateImageSet(dir, {
    processes: [
      {
        pid: 10,
        ppid: 0,
        regions: [
          { name: 'dense', start: D, pages: 2500, kind: 'dense', seed: 1 },
          { name: 'sparse', start: S, pages: 64, kind: 'sparse', step: 4, seed: 2 },
          { name: 'zero', start: Z, pages: 32, kind: 'zero', seed: 0 },
        ],
      },
      { pid: 11, ppid: 10, regions: [{ name: 'own', start: D, pages: 3, kind: 'dense', seed: 3 }] },
    ],
  });
  const pm = readPagemap(dir, 10);
  t.ok(pm.entries.every((e) => e.flags === (PE_LAZY | PE_PRESENT)));
  t.same(
    pm.entries.filter((e) => e.vaddr < S).map((e) => e.nrPages),
    [1024, 1024, 452],
  );
  t.equal(pm.entries.filter((e) => e.vaddr >= S && e.vaddr < Z).length, 16, 'one entry per sparse page');
  t.equal(readMm(dir, 10).vmas.length, 3);
  const p = ProcessImages.open(dir, 10);
  let bad = 0;
  for (let i = 0; i < 2500; i++) {
    const a = D + i * PAGE_SIZE;
    const l = p.locate(a, 1)!;
    if (!l || !l.buf.subarray(l.offset, l.offset + PAGE_SIZE).equals(expectedPage(a, i, 1))) bad++;
  }
  t.equal(bad, 0, 'dense pages follow the fixture formula');
  for (let i = 0; i < 64; i++) {
    const a = S + i * PAGE_SIZE;
    const l = p.locate(a, 1);
    if (i % 4) t.equal(l, null, `sparse hole ${i}`);
    else t.ok(l!.buf.subarray(l!.offset, l!.offset + PAGE_SIZE).equals(expectedPage(a, i, 2)), `sparse page ${i}`);
  }
  for (let i = 0; i < 32; i++) {
    const l = p.locate(Z + i * PAGE_SIZE, 1)!;
    t.ok(l && l.buf.subarray(l.offset, l.offset + PAGE_SIZE).equals(Buffer.alloc(PAGE_SIZE)), `zero page ${i} present and zero`);
  }
  const c = ProcessImages.open(dir, 11);
  const l = c.locate(D + 2 * PAGE_SIZE, 1)!;
  t.ok(l.buf.subarray(l.offset, l.offset + PAGE_SIZE).equals(expectedPage(D + 2 * PAGE_SIZE, 2, 3)), 'second process has its own pages file');
});

t.test('generateImageSet writes 256 MiB quickly', async (t) => {
  const dir = tmpdir(t);
  const D = 0x7f4000000000;
  const pages = 65536;
  const t0 = process.hrtime.bigint();
  generateImageSet(dir, { processes: [{ pid: 1, ppid: 0, regions: [{ name: 'big', start: D, pages, kind: 'dense', seed: 7 }] }] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.comment(`generated 256 MiB in ${ms.toFixed(0)} ms`);
  t.ok(ms < 5000, `256 MiB in ${ms.toFixed(0)} ms (target about 1 s)`);
  t.equal(fs.statSync(path.join(dir, 'pages-1.img')).size, pages * PAGE_SIZE);
  const p = ProcessImages.open(dir, 1);
  let bad = 0;
  for (let i = 0; i < pages; i++) {
    const a = D + i * PAGE_SIZE;
    const l = p.locate(a, 1)!;
    if (l.buf.readBigUInt64LE(l.offset) !== BigInt(a)) bad++;
    if (i % 509 === 0 && !l.buf.subarray(l.offset, l.offset + PAGE_SIZE).equals(expectedPage(a, i, 7))) bad++;
  }
  t.equal(bad, 0, 'every page carries its address; sampled pages match byte for byte');
});

t.test('expectedPage matches the README formula', async (t) => {
  const p = expectedPage(0x1234000, 300, 9);
  t.equal(p.readBigUInt64LE(0), 0x1234000n);
  t.equal(p[8], (300 * 131 + 8 * 7 + 9) & 0xff);
  t.equal(p[4095], (300 * 131 + 4095 * 7 + 9) & 0xff);
});
