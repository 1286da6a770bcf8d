import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ImageError, PE_LAZY, PE_PARENT, PE_PRESENT, ProcessImages, writeImageSet } from '../../src/images';
import { PAGE_SIZE } from '../../src/address';

const A = 0x7f5500000000;
const P = (n: number) => A + n * PAGE_SIZE;

/** Pages tagged with (snapshot, page index) so a read shows where it came from. */
function data(snap: number, first: number, n: number): Buffer {
  const b = Buffer.alloc(n * PAGE_SIZE);
  for (let i = 0; i < n; i++) {
    b.writeUInt32LE(snap, i * PAGE_SIZE);
    b.writeUInt32LE(first + i, i * PAGE_SIZE + 4);
  }
  return b;
}

/**
 * gp  : [0..8) present
 * par : [0..2) present, [2..4) parent, [4..8) present, [8..12) present
 * kid : [0..10) parent (spans three parent entries and the grandparent), [10..12) present
 */
function build(t: tap.Test): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-parent-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const vmas = [{ start: P(0), end: P(16) }];
  writeImageSet(path.join(root, 'gp'), {
    processes: [{ pid: 1, ppid: 0, vmas, entries: [{ vaddr: P(0), nrPages: 8, flags: PE_PRESENT, data: data(1, 0, 8) }] }],
  });
  writeImageSet(path.join(root, 'par'), {
    parent: '../gp',
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas,
        entries: [
          { vaddr: P(0), nrPages: 2, flags: PE_PRESENT, data: data(2, 0, 2) },
          { vaddr: P(2), nrPages: 2, flags: PE_PARENT },
          { vaddr: P(4), nrPages: 4, flags: PE_PRESENT, data: data(2, 4, 4) },
          { vaddr: P(8), nrPages: 4, flags: PE_PRESENT, data: data(2, 8, 4) },
        ],
      },
    ],
  });
  writeImageSet(path.join(root, 'kid'), {
    parent: '../par',
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas,
        entries: [
          { vaddr: P(0), nrPages: 10, flags: PE_PARENT },
          { vaddr: P(10), nrPages: 2, flags: PE_LAZY | PE_PRESENT, data: data(3, 10, 2) },
        ],
      },
    ],
  });
  return root;
}

const tag = (l: { buf: Buffer; offset: number }) => [l.buf.readUInt32LE(l.offset), l.buf.readUInt32LE(l.offset + 4)];

t.test('PE_PARENT resolves through parent and grandparent with split reads', async (t) => {
  const root = build(t);
  const kid = ProcessImages.open(path.join(root, 'kid'), 1);
  const seen: [number, number, number][] = [];
  let addr = P(0);
  while (addr < P(12)) {
    const l = kid.locate(addr, 64)!;
    t.ok(l, `page ${(addr - A) / PAGE_SIZE} has data`);
    const [snap, idx] = tag(l);
    t.equal(idx, (addr - A) / PAGE_SIZE, 'right page');
    // Every page in the returned run comes from the same snapshot, in order.
    for (let i = 0; i < l.pages; i++) {
      t.same(tag({ buf: l.buf, offset: l.offset + i * PAGE_SIZE }), [snap, idx + i]);
    }
    seen.push([(addr - A) / PAGE_SIZE, l.pages, snap]);
    addr += l.pages * PAGE_SIZE;
  }
  t.same(seen, [
    [0, 2, 2],
    [2, 2, 1],
    // Parent entries [4..8) and [8..12) are contiguous in its file, so they merge, but the
    // kid's PE_PARENT entry ends at page 10.
    [4, 6, 2],
    [10, 2, 3],
  ]);
  t.equal(kid.locate(P(12), 4), null, 'hole past the data');
});

t.test('presentRuns resolve the chain to files and offsets', async (t) => {
  const root = build(t);
  const kid = ProcessImages.open(path.join(root, 'kid'), 1);
  const runs = kid.presentRuns().map((r) => [(r.vaddr - A) / PAGE_SIZE, r.pages, r.lazy, path.relative(root, r.file), r.offset / PAGE_SIZE]);
  t.same(runs, [
    [0, 2, false, 'par/pages-1.img', 0],
    [2, 2, false, 'gp/pages-1.img', 2],
    [4, 6, false, 'par/pages-1.img', 2],
    [10, 2, true, 'kid/pages-1.img', 0],
  ]);
  t.same(kid.lazyRanges(), [{ start: P(10), end: P(12) }], 'PE_PARENT pages are not lazy');
});

t.test('PE_PARENT page missing in the parent is an open-time error naming both pagemaps', async (t) => {
  const root = build(t);
  writeImageSet(path.join(root, 'kid2'), {
    parent: '../par',
    processes: [{ pid: 1, ppid: 0, vmas: [{ start: P(0), end: P(16) }], entries: [{ vaddr: P(10), nrPages: 4, flags: PE_PARENT }] }],
  });
  const err = (() => {
    try {
      ProcessImages.open(path.join(root, 'kid2'), 1);
    } catch (e) {
      return e as ImageError;
    }
    return null;
  })();
  t.ok(err instanceof ImageError);
  t.match(err!.message, /^pagemap-1\.img: PE_PARENT pages at 0x[0-9a-f]+ are not in the parent's \.\.\/par\/pagemap-1\.img$/);
});

t.test('parent chain loop is detected', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-loop-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  writeImageSet(path.join(root, 'a'), {
    parent: '.',
    processes: [{ pid: 1, ppid: 0, vmas: [{ start: P(0), end: P(1) }], entries: [{ vaddr: P(0), nrPages: 1, flags: PE_PARENT }] }],
  });
  t.throws(() => ProcessImages.open(path.join(root, 'a'), 1), { name: 'ImageError', message: /^parent: parent chain loops back/ });
});
