import t from 'tap';
import { PAGE_SIZE } from '../../src/address';
import {
  InvalidRangeError,
  MemoryMap,
  MemoryMapError,
  MisalignedAddressError,
  RangeOverlapError,
  type LazyRange,
} from '../../src/memory';

const P = PAGE_SIZE;
/** Range in page units, to keep expectations readable. */
const r = (start: number, end: number, img = start): LazyRange => ({ start: start * P, end: end * P, imgStart: img * P });
const plain = (rs: Iterable<LazyRange>): LazyRange[] => [...rs].map((x) => ({ ...x }));

t.test('constructor validates', async (t) => {
  const m = new MemoryMap([r(0, 2), r(2, 3, 100), r(10, 12)]);
  t.equal(m.size, 3, 'adjacent ranges are allowed and not merged');
  t.equal(m.pages, 5);
  t.throws(() => new MemoryMap([r(2, 4), r(3, 5)]), RangeOverlapError);
  t.throws(() => new MemoryMap([r(5, 6), r(1, 2)]), RangeOverlapError, 'unsorted');
  t.throws(() => new MemoryMap([r(1, 1)]), InvalidRangeError, 'empty');
  t.throws(() => new MemoryMap([r(2, 1)]), InvalidRangeError, 'reversed');
  t.throws(() => new MemoryMap([{ start: 1, end: P, imgStart: 0 }]), MisalignedAddressError);
  t.throws(() => new MemoryMap([{ start: 0, end: P, imgStart: 7 }]), MisalignedAddressError);
  t.throws(() => new MemoryMap([{ start: 2 ** 60, end: 2 ** 60 + P, imgStart: 0 }]), MisalignedAddressError);
  t.ok(new MisalignedAddressError('x', 1) instanceof MemoryMapError);
  t.notOk(new MisalignedAddressError('x', 1).message.includes('\n'));
  const src = [{ start: 0, end: P, imgStart: 0 }];
  const m2 = new MemoryMap(src);
  src[0]!.start = 5 * P;
  t.same(plain(m2), [r(0, 1)], 'caller objects are copied');
  t.equal(new MemoryMap().pages, 0);
});

t.test('find / nextAtOrAfter', async (t) => {
  const m = new MemoryMap([r(2, 4, 50), r(4, 5, 90), r(8, 10)]);
  t.equal(m.find(0), undefined);
  t.same(m.find(2 * P), r(2, 4, 50));
  t.same(m.find(4 * P - 1), r(2, 4, 50), 'unaligned fault address');
  t.same(m.find(4 * P), r(4, 5, 90), 'end is exclusive');
  t.equal(m.find(5 * P), undefined);
  t.equal(m.find(10 * P), undefined);
  t.same(m.nextAtOrAfter(0), r(2, 4, 50));
  t.same(m.nextAtOrAfter(3 * P), r(2, 4, 50));
  t.same(m.nextAtOrAfter(5 * P), r(8, 10));
  t.equal(m.nextAtOrAfter(10 * P), undefined);
});

t.test('take splits at the edges and adjusts img addresses', async (t) => {
  const m = new MemoryMap([r(0, 4, 100), r(4, 6, 200), r(10, 14, 300)]);
  t.same(m.take(P, P), [], 'empty window');
  t.same(m.take(20 * P, 30 * P), [], 'nothing there');
  t.same(m.take(2 * P, 11 * P), [r(2, 4, 102), r(4, 6, 200), r(10, 11, 300)]);
  t.same(plain(m), [r(0, 2, 100), r(11, 14, 301)]);
  t.equal(m.pages, 5);
  t.same(m.take(12 * P, 13 * P), [r(12, 13, 302)], 'middle of a range');
  t.same(plain(m), [r(0, 2, 100), r(11, 12, 301), r(13, 14, 303)]);
  t.same(m.take(0, 2 * P), [r(0, 2, 100)], 'exact range');
  t.same(m.take(11 * P, 14 * P), [r(11, 12, 301), r(13, 14, 303)], 'across a hole');
  t.equal(m.size, 0);
  t.equal(m.pages, 0);
  t.throws(() => m.take(P, 0), InvalidRangeError);
  t.throws(() => m.take(1, P), MisalignedAddressError);
});

t.test('drop at edges', async (t) => {
  const m = new MemoryMap([r(0, 4), r(6, 8)]);
  t.equal(m.drop(3 * P, 7 * P), 2, 'counts only lazy pages, not the hole');
  t.same(plain(m), [r(0, 3), r(7, 8, 7)]);
  t.equal(m.drop(0, P), 1, 'head trim advances img');
  t.same(plain(m), [r(1, 3), r(7, 8)]);
  t.equal(m.drop(3 * P, 7 * P), 0, 'adjacent but outside');
  t.equal(m.pages, 3);
});

t.test('insert puts pieces back', async (t) => {
  const m = new MemoryMap([r(0, 8, 40)]);
  const [piece] = m.take(2 * P, 4 * P);
  t.throws(() => m.insert(r(1, 3)), RangeOverlapError);
  t.throws(() => m.insert(r(3, 5)), RangeOverlapError);
  t.throws(() => m.insert(r(3, 3)), InvalidRangeError);
  m.insert(piece!);
  t.same(plain(m), [r(0, 2, 40), r(2, 4, 42), r(4, 8, 44)]);
  t.equal(m.pages, 8);
  m.insert(r(20, 21));
  m.insert(r(10, 11));
  t.same(plain(m).map((x) => x.start / P), [0, 2, 4, 10, 20], 'kept sorted');
});

t.test('remap: plain move keeps img addresses', async (t) => {
  const m = new MemoryMap([r(10, 14, 10), r(30, 31, 77)]);
  m.remap(10 * P, 100 * P, 4 * P);
  t.same(plain(m), [r(30, 31, 77), r(100, 104, 10)]);
  t.equal(m.pages, 5);
  m.remap(100 * P, 100 * P, 4 * P);
  m.remap(100 * P, 200 * P, 0);
  t.same(plain(m), [r(30, 31, 77), r(100, 104, 10)], 'no-ops');
  t.throws(() => m.remap(1, 0, P), MisalignedAddressError);
});

t.test('remap: destination contents are discarded', async (t) => {
  const m = new MemoryMap([r(0, 2, 500), r(10, 13, 600)]);
  m.remap(0, 11 * P, 2 * P);
  t.same(plain(m), [r(10, 11, 600), r(11, 13, 500)]);
  t.equal(m.pages, 3);
});

t.test('remap: hole in the source clears the destination there too', async (t) => {
  const m = new MemoryMap([r(0, 1, 500), r(2, 3, 502), r(10, 13, 600)]);
  m.remap(0, 10 * P, 3 * P);
  t.same(plain(m), [r(10, 11, 500), r(12, 13, 502)], 'page 11 was copied already in the source');
});

t.test('remap: overlapping move forward and backward', async (t) => {
  const fwd = new MemoryMap([r(0, 4, 100), r(5, 6, 200)]);
  fwd.remap(0, 2 * P, 4 * P);
  t.same(plain(fwd), [r(2, 6, 100)], 'forward: page 5 (inside destination) is gone');
  t.equal(fwd.pages, 4);
  const back = new MemoryMap([r(0, 1, 900), r(2, 6, 100)]);
  back.remap(2 * P, 0, 4 * P);
  t.same(plain(back), [r(0, 4, 100)], 'backward');
  t.equal(back.pages, 4);
  const partial = new MemoryMap([r(0, 2, 100), r(3, 4, 103)]);
  partial.remap(0, P, 4 * P);
  t.same(plain(partial), [r(1, 3, 100), r(4, 5, 103)]);
});

t.test('remap of part of a range (mremap grow / shrink)', async (t) => {
  // Growing a mapping that cannot extend in place: the kernel moves the old length only.
  const grow = new MemoryMap([r(10, 14, 10), r(14, 16, 14)]);
  grow.remap(10 * P, 50 * P, 4 * P);
  t.same(plain(grow), [r(14, 16, 14), r(50, 54, 10)]);
  // Shrinking then moving: the tail is unmapped, the head is remapped.
  const shrink = new MemoryMap([r(10, 18, 10)]);
  shrink.drop(14 * P, 18 * P);
  shrink.remap(10 * P, 60 * P, 4 * P);
  t.same(plain(shrink), [r(60, 64, 10)]);
  // Moving the middle of a range splits it into three with consistent img addresses.
  const mid = new MemoryMap([r(0, 6, 1000)]);
  mid.remap(2 * P, 20 * P, 2 * P);
  t.same(plain(mid), [r(0, 2, 1000), r(4, 6, 1004), r(20, 22, 1002)]);
});

t.test('swap of two regions through a temporary address', async (t) => {
  const m = new MemoryMap([r(0, 4, 1000), r(10, 12, 2000), r(12, 14, 3000)]);
  const len = 4 * P;
  m.remap(0, 100 * P, len);
  m.remap(10 * P, 0, len);
  m.remap(100 * P, 10 * P, len);
  t.same(plain(m), [r(0, 2, 2000), r(2, 4, 3000), r(10, 14, 1000)]);
  t.equal(m.pages, 8);
  t.same(m.find(3 * P), r(2, 4, 3000), 'img address travels with the data');
});

t.test('clone is independent', async (t) => {
  const a = new MemoryMap([r(0, 4), r(8, 10)]);
  const b = a.clone();
  a.take(0, 2 * P);
  a.remap(8 * P, 20 * P, 2 * P);
  b.insert(r(5, 6));
  t.same(plain(a), [r(2, 4), r(20, 22, 8)]);
  t.same(plain(b), [r(0, 4), r(5, 6), r(8, 10)]);
  t.equal(a.pages, 4);
  t.equal(b.pages, 7);
});

t.test('iteration is a snapshot', async (t) => {
  const m = new MemoryMap([r(0, 1), r(2, 3), r(4, 5)]);
  const seen: number[] = [];
  for (const x of m) {
    seen.push(x.start / P);
    m.drop(x.start, x.end + 2 * P);
  }
  t.same(seen, [0, 2, 4]);
  t.equal(m.size, 0);
});

t.test('window', async (t) => {
  const m = new MemoryMap([r(10, 30, 100)]);
  t.equal(m.window(0, 4, 1), undefined, 'outside any range');
  t.same(m.window(15 * P + 123, 4, 1), r(14, 18, 104), 'behind and ahead, unaligned addr');
  t.same(m.window(15 * P, 1, 0), r(15, 16, 105), 'single page');
  t.same(m.window(11 * P, 8, 4), r(10, 18, 100), 'clipped at range start, full length kept');
  t.same(m.window(28 * P, 8, 2), r(26, 30, 116), 'clipped at range end');
  t.same(m.window(20 * P, 2, 10), r(19, 21, 109), 'behind capped so the fault page stays inside');
  t.same(m.window(29 * P, 64, 0), r(29, 30, 119));
  t.throws(() => m.window(15 * P, 0, 0), InvalidRangeError);
  t.throws(() => m.window(15 * P, 1, -1), InvalidRangeError);
  t.same(plain(m), [r(10, 30, 100)], 'window does not modify the map');
  const w = m.window(20 * P, 4, 1)!;
  t.same(m.take(w.start, w.end), [w], 'window feeds take');
});
