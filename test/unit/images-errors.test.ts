import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ImageError, PE_LAZY, PE_PARENT, PE_PRESENT, ProcessImages, readInventory, readMm, readPagemap, readPstree, writeImageSet } from '../../src/images';
import { frameEntries, MAGIC } from '../../src/images/framing';
import { encodeMessage } from '../../src/images/proto';
import { PAGE_SIZE } from '../../src/address';

const A = 0x7f6600000000;

/** A valid two-process set; each test breaks one thing in it. */
function goodSet(t: tap.Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-err-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  writeImageSet(dir, {
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas: [{ start: A, end: A + 8 * PAGE_SIZE }],
        entries: [
          { vaddr: A, nrPages: 2, flags: PE_LAZY | PE_PRESENT, data: Buffer.alloc(2 * PAGE_SIZE, 1) },
          { vaddr: A + 4 * PAGE_SIZE, nrPages: 2, flags: PE_LAZY | PE_PRESENT, data: Buffer.alloc(2 * PAGE_SIZE, 2) },
        ],
      },
      { pid: 2, ppid: 1, vmas: [{ start: A, end: A + PAGE_SIZE }], entries: [] },
    ],
  });
  return dir;
}

function catchErr(fn: () => unknown): ImageError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ImageError) return e;
    throw e;
  }
  throw new Error('expected an ImageError, nothing was thrown');
}

/** Every ImageError message is one line starting with the file it is about. */
function checkErr(t: tap.Test, e: ImageError, dir: string, name: string, re: RegExp) {
  t.notMatch(e.message, /\n/, 'one line');
  t.ok(e.message.startsWith(`${name}: `), `names ${name}: ${e.message}`);
  t.equal(path.resolve(e.file), path.resolve(dir, name), 'file property is the path');
  t.match(e.message, re);
}

t.test('truncated entry body', async (t) => {
  const dir = goodSet(t);
  const f = path.join(dir, 'pstree.img');
  const b = fs.readFileSync(f);
  fs.writeFileSync(f, b.subarray(0, b.length - 3));
  const e = catchErr(() => readPstree(dir));
  checkErr(t, e, dir, 'pstree.img', /entry 1 at byte \d+: truncated body: length word says \d+ bytes but only \d+ remain/);
});

t.test('truncated length word', async (t) => {
  const dir = goodSet(t);
  const f = path.join(dir, 'pagemap-1.img');
  const b = fs.readFileSync(f);
  fs.writeFileSync(f, Buffer.concat([b, Buffer.from([5, 0])]));
  const e = catchErr(() => readPagemap(dir, 1));
  checkErr(t, e, dir, 'pagemap-1.img', new RegExp(`entry 3 at byte ${b.length}: truncated length word \\(2 of 4 bytes`));
});

t.test('wrong magic', async (t) => {
  const dir = goodSet(t);
  const f = path.join(dir, 'mm-1.img');
  const b = fs.readFileSync(f);
  b.writeUInt32LE(MAGIC.PSTREE, 4);
  fs.writeFileSync(f, b);
  const e = catchErr(() => readMm(dir, 1));
  checkErr(t, e, dir, 'mm-1.img', /wrong magic at byte 4: expected 0x57492820 \(MM\), found 0x50273030 \(PSTREE\)/);
});

t.test('missing common magic (img_version 2 image written as version 1)', async (t) => {
  const dir = goodSet(t);
  const f = path.join(dir, 'pstree.img');
  fs.writeFileSync(f, fs.readFileSync(f).subarray(4));
  const e = catchErr(() => readPstree(dir));
  checkErr(t, e, dir, 'pstree.img', /expected 0x54564319 \(common image header\), found 0x50273030 \(PSTREE\)/);
});

t.test('img_version 1: no common magic', async (t) => {
  const dir = goodSet(t);
  fs.writeFileSync(path.join(dir, 'inventory.img'), frameEntries(MAGIC.INVENTORY, null, [encodeMessage('inventory', { img_version: 1, fdinfo_per_id: true })]));
  const f = path.join(dir, 'pstree.img');
  fs.writeFileSync(f, fs.readFileSync(f).subarray(4));
  t.same(readPstree(dir).map((p) => p.pid), [1, 2]);
});

t.test('unknown img_version', async (t) => {
  const dir = goodSet(t);
  fs.writeFileSync(path.join(dir, 'inventory.img'), frameEntries(MAGIC.INVENTORY, null, [encodeMessage('inventory', { img_version: 3, fdinfo_per_id: true })]));
  const e = catchErr(() => readInventory(dir));
  checkErr(t, e, dir, 'inventory.img', /unsupported img_version 3/);
  t.equal(e.field, 'img_version');
  const e2 = catchErr(() => readPstree(dir, { imgVersion: 3 }));
  checkErr(t, e2, dir, 'pstree.img', /img_version 3/);
});

t.test('inventory without fdinfo_per_id', async (t) => {
  const dir = goodSet(t);
  fs.writeFileSync(path.join(dir, 'inventory.img'), frameEntries(MAGIC.INVENTORY, null, [encodeMessage('inventory', { img_version: 2 })]));
  checkErr(t, catchErr(() => readInventory(dir)), dir, 'inventory.img', /fdinfo_per_id/);
});

t.test('undecodable entry (missing required field)', async (t) => {
  const dir = goodSet(t);
  const body = Buffer.from([0x08, 0x05]); // PstreeEntry with only pid
  fs.writeFileSync(path.join(dir, 'pstree.img'), frameEntries(MAGIC.PSTREE, 2, [body]));
  checkErr(t, catchErr(() => readPstree(dir)), dir, 'pstree.img', /entry 0 at byte 8: cannot decode PstreeEntry \(.*ppid/);
});

t.test('pagemap data past the end of the pages file', async (t) => {
  const dir = goodSet(t);
  const f = path.join(dir, 'pages-1.img');
  fs.truncateSync(f, 3 * PAGE_SIZE);
  const e = catchErr(() => ProcessImages.open(dir, 1));
  checkErr(t, e, dir, 'pagemap-1.img', new RegExp(`entry 1 \\(vaddr 0x${(A + 4 * PAGE_SIZE).toString(16)}\\): data at bytes 8192\\.\\.16384 lies past the end of pages-1\\.img \\(12288 bytes\\)$`));
});

t.test('missing pages file', async (t) => {
  const dir = goodSet(t);
  fs.rmSync(path.join(dir, 'pages-1.img'));
  const e = catchErr(() => ProcessImages.open(dir, 1));
  checkErr(t, e, dir, 'pages-1.img', /^pages-1\.img: file not found, but pagemap-1\.img entry 0/);
  // A pagemap without PE_PRESENT entries does not need its pages file.
  fs.rmSync(path.join(dir, 'pages-2.img'));
  t.equal(ProcessImages.open(dir, 2).presentRuns().length, 0);
});

t.test('missing mm / pagemap image', async (t) => {
  const dir = goodSet(t);
  fs.rmSync(path.join(dir, 'mm-2.img'));
  checkErr(t, catchErr(() => ProcessImages.open(dir, 2)), dir, 'mm-2.img', /not found in /);
});

t.test('missing parent target', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-err-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const dir = path.join(root, 'dump2');
  writeImageSet(dir, {
    parent: '../dump1',
    processes: [{ pid: 1, ppid: 0, vmas: [{ start: A, end: A + PAGE_SIZE }], entries: [{ vaddr: A, nrPages: 1, flags: PE_PARENT }] }],
  });
  const e = catchErr(() => ProcessImages.open(dir, 1));
  checkErr(t, e, dir, 'parent', /symlink target \.\.\/dump1 \(.*dump1\) is not an existing directory; pagemap-1\.img needs it/);
  fs.rmSync(path.join(dir, 'parent'));
  checkErr(t, catchErr(() => ProcessImages.open(dir, 1)), dir, 'parent', /does not exist, but pagemap-1\.img has PE_PARENT entries/);
});

t.test('64-bit value beyond 2^53', async (t) => {
  const dir = goodSet(t);
  writeImageSet(dir, {
    processes: [{ pid: 1, ppid: 0, vmas: [{ start: A, end: A + PAGE_SIZE }], entries: [{ vaddr: 2 ** 60, nrPages: 1, flags: PE_PARENT }] }],
  });
  const e = catchErr(() => readPagemap(dir, 1));
  checkErr(t, e, dir, 'pagemap-1.img', /entry 0: vaddr = 0x1000000000000000 is beyond 2\^53/);
  t.equal(e.field, 'vaddr');
  writeImageSet(dir, { processes: [{ pid: 1, ppid: 0, vmas: [{ start: A, end: 2 ** 56 }], entries: [] }] });
  const e2 = catchErr(() => readMm(dir, 1));
  checkErr(t, e2, dir, 'mm-1.img', /vmas\[0\]\.end = 0x100000000000000 is beyond 2\^53/);
});

t.test('unsorted / overlapping pagemap entries', async (t) => {
  const dir = goodSet(t);
  writeImageSet(dir, {
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas: [{ start: A, end: A + 8 * PAGE_SIZE }],
        entries: [
          { vaddr: A, nrPages: 4, flags: PE_PRESENT, data: Buffer.alloc(4 * PAGE_SIZE) },
          { vaddr: A + 2 * PAGE_SIZE, nrPages: 1, flags: PE_PRESENT, data: Buffer.alloc(PAGE_SIZE) },
        ],
      },
    ],
  });
  checkErr(t, catchErr(() => readPagemap(dir, 1)), dir, 'pagemap-1.img', /entry 1 \(vaddr 0x[0-9a-f]+\): overlaps or precedes the previous entry/);
});

t.test('PE_LAZY page outside every lazy VMA', async (t) => {
  const dir = goodSet(t);
  writeImageSet(dir, {
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas: [{ start: A, end: A + PAGE_SIZE, flags: 0x02, status: 0x41 }],
        entries: [
          { vaddr: A, nrPages: 1, flags: PE_LAZY | PE_PRESENT, data: Buffer.alloc(PAGE_SIZE) },
        ],
      },
    ],
  });
  checkErr(t, catchErr(() => ProcessImages.open(dir, 1)), dir, 'pagemap-1.img', /PE_LAZY page 0x[0-9a-f]+ lies in VMA .* which cannot be lazy/);
  writeImageSet(dir, {
    processes: [{ pid: 1, ppid: 0, vmas: [], entries: [{ vaddr: A, nrPages: 1, flags: PE_LAZY | PE_PRESENT, data: Buffer.alloc(PAGE_SIZE) }] }],
  });
  checkErr(t, catchErr(() => ProcessImages.open(dir, 1)), dir, 'pagemap-1.img', /is outside every VMA of mm-1\.img/);
});

t.test('--lazy-pages dump (PE_LAZY without data) needs allowMissingData', async (t) => {
  const dir = goodSet(t);
  writeImageSet(dir, {
    processes: [{ pid: 1, ppid: 0, vmas: [{ start: A, end: A + 4 * PAGE_SIZE }], entries: [{ vaddr: A, nrPages: 4, flags: PE_LAZY }] }],
  });
  checkErr(t, catchErr(() => ProcessImages.open(dir, 1)), dir, 'pagemap-1.img', /data is not in the images/);
  const p = ProcessImages.open(dir, 1, { allowMissingData: true });
  t.same(p.lazyRanges(), [{ start: A, end: A + 4 * PAGE_SIZE }]);
  checkErr(t, catchErr(() => p.locate(A, 1)), dir, 'pagemap-1.img', /needs a page server/);
});
