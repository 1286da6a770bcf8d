import t from 'tap';
import * as fs from 'fs';
import * as path from 'path';
import { PAGE_SIZE } from '../../src/address';
import {
  expectedPage,
  PE_LAZY,
  PE_PRESENT,
  ProcessImages,
  readInventory,
  readMm,
  readPagemap,
  readPstree,
  vmaCanBeLazy,
} from '../../src/images';

// Tests run from dist/test/unit; the fixture lives in the source tree.
const FIX = path.resolve(__dirname, '../../../test/fixtures/criu-4.2-two-procs');
const IMG = path.join(FIX, 'img');

interface RegionLayout {
  start: number;
  pages: number;
  seed?: number;
  step?: number;
}
const parentLayout = JSON.parse(fs.readFileSync(path.join(FIX, 'parent-layout.json'), 'utf8')) as {
  pid: number;
  child: number;
  dense: RegionLayout;
  sparse: RegionLayout;
  zeros: RegionLayout;
};
const childLayout = JSON.parse(fs.readFileSync(path.join(FIX, 'child-layout.json'), 'utf8')) as {
  pid: number;
  own: RegionLayout;
  dense_rewritten: RegionLayout;
};
const PARENT = parentLayout.pid;
const CHILD = childLayout.pid;

function page(p: ProcessImages, addr: number): Buffer | null {
  const loc = p.locate(addr, 1);
  if (!loc) return null;
  if (loc.pages < 1) throw new Error(`locate(0x${addr.toString(16)}) returned ${loc.pages} pages`);
  return loc.buf.subarray(loc.offset, loc.offset + PAGE_SIZE);
}

t.test('inventory', async (t) => {
  const inv = readInventory(IMG);
  t.equal(inv.imgVersion, 2);
  t.equal(inv.fdinfoPerId, true);
  t.equal(inv.nsPerId, true);
});

t.test('pstree: two processes with ppid', async (t) => {
  const tree = readPstree(IMG);
  t.same(
    tree.map((e) => [e.pid, e.ppid, e.threads]),
    [
      [PARENT, 0, [PARENT]],
      [CHILD, PARENT, [CHILD]],
    ],
  );
  t.equal(parentLayout.child, CHILD);
});

t.test('mm: VMAs contain the layout regions and are lazy-eligible', async (t) => {
  const check = (pid: number, regions: RegionLayout[]) => {
    const mm = readMm(IMG, pid);
    t.ok(mm.vmas.length > 5, `pid ${pid} has VMAs`);
    for (let i = 1; i < mm.vmas.length; i++) t.ok(mm.vmas[i]!.start >= mm.vmas[i - 1]!.end, 'sorted');
    t.notOk(
      mm.vmas.some((v) => v.start >= 2 ** 47),
      'vsyscall VMA (above 2^53) was dropped, not rejected',
    );
    for (const r of regions) {
      const v = mm.vmas.find((m) => m.start <= r.start && r.start + r.pages * PAGE_SIZE <= m.end);
      t.ok(v, `region at 0x${r.start.toString(16)} inside a VMA`);
      if (v) {
        t.equal(v.flags, 0x22);
        t.equal(v.status & 0x201, 0x201);
        t.equal(v.fd, -1);
        t.ok(vmaCanBeLazy(v));
      }
    }
    const vdso = mm.vmas.find((m) => m.status === 0x209);
    t.ok(vdso && !vmaCanBeLazy(vdso), 'vdso is not lazy');
    const vvar = mm.vmas.find((m) => m.status === 0x1201);
    t.ok(vvar && !vmaCanBeLazy(vvar), 'vvar is not lazy');
    const filePriv = mm.vmas.find((m) => m.status === 0x41);
    t.ok(filePriv && !vmaCanBeLazy(filePriv), 'file-private is not lazy');
  };
  check(PARENT, [parentLayout.dense, parentLayout.sparse, parentLayout.zeros]);
  check(CHILD, [childLayout.own, childLayout.dense_rewritten]);
});

t.test('pagemap: flags, page counts in field 5, offsets', async (t) => {
  for (const pid of [PARENT, CHILD]) {
    const pm = readPagemap(IMG, pid);
    t.equal(pm.pagesId, pid === PARENT ? 1 : 2);
    t.equal(path.basename(pm.pagesFile), `pages-${pm.pagesId}.img`);
    let off = 0;
    for (const e of pm.entries) {
      t.ok(e.flags === (PE_LAZY | PE_PRESENT) || e.flags === PE_PRESENT, `flags ${e.flags}`);
      t.ok(e.nrPages > 0, 'nr_pages from field 5 (field 2 is 0 in 4.2 images)');
      t.equal(e.offset, off);
      off += e.nrPages * PAGE_SIZE;
    }
    t.equal(off, fs.statSync(pm.pagesFile).size, 'PRESENT entries fill the pages file exactly');
    const dense = parentLayout.dense;
    const inDense = pm.entries.filter((e) => e.vaddr >= dense.start && e.vaddr < dense.start + dense.pages * PAGE_SIZE);
    t.ok(inDense.length > 0 && inDense.every((e) => e.flags === 6), 'dense region entries are PE_LAZY|PE_PRESENT (6)');
  }
});

function checkRegion(t: tap.Test, p: ProcessImages, r: RegionLayout, kind: 'data' | 'zero', what: string, firstPages = r.pages) {
  let bad = 0;
  let holes = 0;
  const step = r.step ?? 1;
  for (let i = 0; i < firstPages; i++) {
    const addr = r.start + i * PAGE_SIZE;
    const got = page(p, addr);
    if (kind === 'zero') {
      if (got && !got.equals(Buffer.alloc(PAGE_SIZE))) bad++;
      continue;
    }
    if (i % step !== 0) {
      if (got !== null) bad++;
      else holes++;
      continue;
    }
    if (!got || !got.equals(expectedPage(addr, i, r.seed!))) bad++;
  }
  t.equal(bad, 0, `${what}: every page matches (${firstPages} pages${holes ? `, ${holes} holes` : ''})`);
  if (step > 1) t.equal(holes, firstPages - Math.ceil(firstPages / step), `${what}: untouched pages are holes`);
}

t.test('parent process: dense, sparse and zeros byte for byte', async (t) => {
  const p = ProcessImages.open(IMG, PARENT);
  checkRegion(t, p, parentLayout.dense, 'data', 'dense');
  checkRegion(t, p, parentLayout.sparse, 'data', 'sparse');
  checkRegion(t, p, parentLayout.zeros, 'zero', 'zeros');
  for (let i = 0; i < parentLayout.zeros.pages; i++) {
    t.not(p.locate(parentLayout.zeros.start + i * PAGE_SIZE, 1), null, `touched zero page ${i} is in the pagemap`);
  }
});

t.test('child process: own, dense_rewritten and the inherited rest', async (t) => {
  const p = ProcessImages.open(IMG, CHILD);
  checkRegion(t, p, childLayout.own, 'data', 'own');
  checkRegion(t, p, childLayout.dense_rewritten, 'data', 'dense_rewritten');
  const dense = parentLayout.dense;
  t.equal(childLayout.dense_rewritten.start, dense.start);
  let bad = 0;
  for (let i = childLayout.dense_rewritten.pages; i < dense.pages; i++) {
    const addr = dense.start + i * PAGE_SIZE;
    const got = page(p, addr);
    if (!got || !got.equals(expectedPage(addr, i, dense.seed!))) bad++;
  }
  t.equal(bad, 0, 'pages 16.. of the inherited dense region still hold seed 1');
  checkRegion(t, p, parentLayout.sparse, 'data', 'inherited sparse');
});

t.test('locate returns multi-page runs bounded by maxPages and entries', async (t) => {
  const p = ProcessImages.open(IMG, PARENT);
  const d = parentLayout.dense;
  const loc = p.locate(d.start, 100000)!;
  t.ok(loc.pages >= 1 && loc.pages <= d.pages + 64);
  const two = p.locate(d.start, 2)!;
  t.equal(two.pages, 2);
  t.ok(two.buf.subarray(two.offset + PAGE_SIZE, two.offset + 2 * PAGE_SIZE).equals(expectedPage(d.start + PAGE_SIZE, 1, d.seed!)));
  t.equal(p.locate(0x1000, 4), null, 'unmapped address is a hole');
});

t.test('lazy ranges are PE_LAZY entries cut at VMA boundaries', async (t) => {
  for (const pid of [PARENT, CHILD]) {
    const p = ProcessImages.open(IMG, pid);
    const vmas = p.lazyVmas();
    const ranges = p.lazyRanges();
    t.ok(ranges.length > 0);
    for (let i = 0; i < ranges.length; i++) {
      const r = ranges[i]!;
      t.ok(vmas.some((v) => v.start <= r.start && r.end <= v.end), `range ${i} inside one lazy VMA`);
      if (i) t.ok(r.start >= ranges[i - 1]!.end, 'sorted');
    }
    const pm = readPagemap(IMG, pid);
    const lazyPages = pm.entries.filter((e) => e.flags & PE_LAZY).reduce((n, e) => n + e.nrPages, 0);
    t.equal(ranges.reduce((n, r) => n + (r.end - r.start) / PAGE_SIZE, 0), lazyPages, 'ranges cover every lazy page');
  }
  // The child's entry at `own` runs into the next VMA: it must be cut.
  const c = ProcessImages.open(IMG, CHILD);
  const own = childLayout.own;
  const ownEnd = own.start + own.pages * PAGE_SIZE;
  t.ok(c.lazyRanges().some((r) => r.end === ownEnd), 'cut at the end of the own VMA');
  t.ok(c.lazyRanges().some((r) => r.start === ownEnd), 'next range starts at the next VMA');
});

t.test('presentRuns cover every page with data', async (t) => {
  const p = ProcessImages.open(IMG, PARENT);
  const runs = p.presentRuns();
  const pm = readPagemap(IMG, PARENT);
  t.equal(runs.reduce((n, r) => n + r.pages, 0), pm.entries.reduce((n, e) => n + e.nrPages, 0));
  t.ok(runs.every((r) => r.file === pm.pagesFile && path.isAbsolute(r.file)));
  t.ok(runs.some((r) => !r.lazy) && runs.some((r) => r.lazy));
});
