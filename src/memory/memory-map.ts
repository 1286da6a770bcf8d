import { InvalidRangeError, MisalignedAddressError, RangeOverlapError } from './errors';

import { PAGE_SIZE, firstAbove } from '../address';

/**
 * One lazy piece of memory still to be copied. `start`/`end` are run-time addresses (they follow
 * mremap); `imgStart` is the dump-time address of `start`, i.e. where the bytes live in the images.
 */
export interface LazyRange {
  readonly start: number;
  readonly end: number;
  readonly imgStart: number;
}

function checkPage(what: string, value: number): void {
  // Safe-integer check first: the modulo test alone would accept 2^60, where page arithmetic rounds.
  if (!Number.isSafeInteger(value) || value < 0 || value % PAGE_SIZE !== 0) {
    throw new MisalignedAddressError(what, value);
  }
}

function checkRange(r: LazyRange): void {
  checkPage('range start', r.start);
  checkPage('range end', r.end);
  checkPage('range imgStart', r.imgStart);
  if (r.end <= r.start) throw new InvalidRangeError(r.start, r.end, 'empty');
  // The image end must also be representable, or later img arithmetic would silently round.
  checkPage('range image end', r.imgStart + (r.end - r.start));
}

function checkBounds(start: number, end: number): void {
  checkPage('start', start);
  checkPage('end', end);
  if (end < start) throw new InvalidRangeError(start, end, 'end before start');
}

function mk(start: number, end: number, imgStart: number): LazyRange {
  // Frozen so ranges can be shared between the map, its clones and callers without copying.
  return Object.freeze({ start, end, imgStart });
}

/** The part [start,end) of r, with imgStart advanced by the same offset; caller guarantees containment. */
function slice(r: LazyRange, start: number, end: number): LazyRange {
  return mk(start, end, r.imgStart + (start - r.start));
}

const pagesOf = (r: LazyRange): number => (r.end - r.start) / PAGE_SIZE;

/** Most ranges per block of a MemoryMap (a splice moves at most this many). */
const BLOCK = 512;

/**
 * The lazy ranges of one process that still have to be copied. Ranges are kept sorted and disjoint;
 * adjacent ranges are deliberately not merged (CRIU keeps pagemap-entry boundaries, and a merged range
 * could straddle a VMA boundary that UFFDIO_COPY must not cross).
 */
export class MemoryMap implements Iterable<LazyRange> {
  /**
   * The sorted ranges, in blocks of at most BLOCK: a real dump's lazy memory is often tens of
   * thousands of short ranges, and the fill takes them one by one from the front, so one flat array
   * made every take a memmove of all the ranges after it (quadratic in the number of ranges).
   * Blocks are never empty.
   */
  private blocks: LazyRange[][] = [];
  private rangeCount = 0;
  private pageCount = 0;
  /** Most ranges per block (tests use tiny blocks to cross block boundaries on every operation). */
  private readonly block: number;

  constructor(ranges?: Iterable<LazyRange>, opts: { block?: number } = {}) {
    this.block = Math.max(2, opts.block ?? BLOCK);
    if (ranges === undefined) return;
    let prev: LazyRange | undefined;
    let block: LazyRange[] = [];
    for (const r of ranges) {
      checkRange(r);
      if (prev !== undefined && r.start < prev.end) {
        throw new RangeOverlapError(r.start, r.end, prev.start, prev.end);
      }
      const own = mk(r.start, r.end, r.imgStart);
      if (block.length === this.block) {
        this.blocks.push(block);
        block = [];
      }
      block.push(own);
      this.rangeCount++;
      this.pageCount += pagesOf(own);
      prev = own;
    }
    if (block.length) this.blocks.push(block);
  }

  /** Remaining pages to copy. */
  get pages(): number {
    return this.pageCount;
  }

  /** Number of ranges. */
  get size(): number {
    return this.rangeCount;
  }

  /** The first block whose last range ends above addr (blocks.length if none). */
  private blockAbove(addr: number): number {
    return firstAbove(
      this.blocks.length,
      (i) => {
        const b = this.blocks[i]!;
        return b[b.length - 1]!.end;
      },
      addr,
    );
  }

  /** The range containing addr; addr need not be aligned (raw fault addresses are accepted). */
  find(addr: number): LazyRange | undefined {
    const r = this.nextAtOrAfter(addr);
    return r !== undefined && r.start <= addr ? r : undefined;
  }

  /** First range with end > addr: the range under addr, or else the next one above it. */
  nextAtOrAfter(addr: number): LazyRange | undefined {
    const b = this.blocks[this.blockAbove(addr)];
    return b === undefined ? undefined : b[lowerBound(b, addr)];
  }

  /**
   * Copy window for a fault at addr: up to maxPages pages of the range containing addr, starting at
   * most behindPages before addr's page, clipped to the range. Behind is capped at maxPages-1 so the
   * faulting page is always inside. Does not modify the map; pass the result to take().
   */
  window(addr: number, maxPages: number, behindPages = 0): LazyRange | undefined {
    if (!Number.isSafeInteger(maxPages) || maxPages < 1) {
      throw new InvalidRangeError(addr, addr, `maxPages ${maxPages} must be a positive integer`);
    }
    if (!Number.isSafeInteger(behindPages) || behindPages < 0) {
      throw new InvalidRangeError(addr, addr, `behindPages ${behindPages} must be a non-negative integer`);
    }
    const r = this.find(addr);
    if (r === undefined) return undefined;
    const page = addr - (addr % PAGE_SIZE);
    const behind = Math.min(behindPages, maxPages - 1) * PAGE_SIZE;
    const start = Math.max(r.start, page - behind);
    const end = Math.min(r.end, start + maxPages * PAGE_SIZE);
    return slice(r, start, end);
  }

  /**
   * Remove [start,end) ∩ map and return the removed pieces in address order, each with imgStart
   * adjusted to its own start. Ranges straddling the bounds are split.
   */
  take(start: number, end: number): LazyRange[] {
    checkBounds(start, end);
    if (start === end) return [];
    const taken: LazyRange[] = [];
    let bi = this.blockAbove(start);
    while (bi < this.blocks.length) {
      const b = this.blocks[bi]!;
      if (b[0]!.start >= end) break;
      const lo = lowerBound(b, start);
      let hi = lo;
      const kept: LazyRange[] = [];
      while (hi < b.length && b[hi]!.start < end) {
        const r = b[hi]!;
        if (r.start < start) kept.push(slice(r, r.start, start));
        const piece = slice(r, Math.max(r.start, start), Math.min(r.end, end));
        taken.push(piece);
        this.pageCount -= pagesOf(piece);
        if (r.end > end) kept.push(slice(r, end, r.end));
        hi++;
      }
      // A range at or past `end` ended the walk inside this block: the next blocks lie above.
      const done = hi < b.length;
      bi = this.replaceInBlock(bi, lo, hi, kept);
      if (done) break;
    }
    return taken;
  }

  /**
   * The background fill's take: the ranges at or after `from`, in address order, at most `maxRuns`
   * of them and `maxPages` pages in all (the first cut at `from`, the last cut to fit), removed with
   * one splice per block. A real dump's lazy memory is thousands of ranges of a page or two, and one
   * take() per range was most of what a fill lease cost its owner.
   */
  takeRuns(from: number, maxRuns: number, maxPages: number): LazyRange[] {
    checkPage('from', from);
    const taken: LazyRange[] = [];
    let budget = maxPages * PAGE_SIZE;
    let bi = this.blockAbove(from);
    while (bi < this.blocks.length && taken.length < maxRuns && budget > 0) {
      const b = this.blocks[bi]!;
      const lo = lowerBound(b, from);
      let hi = lo;
      const kept: LazyRange[] = [];
      while (hi < b.length && taken.length < maxRuns && budget > 0) {
        const r = b[hi]!;
        const start = Math.max(r.start, from);
        const end = Math.min(r.end, start + budget);
        if (r.start < start) kept.push(slice(r, r.start, start));
        const piece = slice(r, start, end);
        taken.push(piece);
        budget -= end - start;
        this.pageCount -= pagesOf(piece);
        if (end < r.end) kept.push(slice(r, end, r.end));
        hi++;
      }
      bi = this.replaceInBlock(bi, lo, hi, kept);
    }
    return taken;
  }

  /**
   * Removes exactly these ranges if the map holds them, unchanged and next to each other (nothing
   * else between them): a fill lease settled whole, with no event having moved any of its runs.
   * Returns false, leaving the map as it was, otherwise.
   */
  takeExact(rs: readonly LazyRange[]): boolean {
    if (rs.length === 0) return true;
    let bi = this.blockAbove(rs[0]!.start);
    if (bi === this.blocks.length) return false;
    let i = lowerBound(this.blocks[bi]!, rs[0]!.start);
    // Check first, across blocks; remove only when every range matched.
    const spans: [number, number, number][] = [];
    let from = i;
    for (const r of rs) {
      let b = this.blocks[bi]!;
      if (i === b.length) {
        spans.push([bi, from, i]);
        bi++;
        if (bi === this.blocks.length) return false;
        b = this.blocks[bi]!;
        i = from = 0;
      }
      const m = b[i]!;
      if (m.start !== r.start || m.end !== r.end || m.imgStart !== r.imgStart) return false;
      i++;
    }
    spans.push([bi, from, i]);
    for (let k = spans.length - 1; k >= 0; k--) {
      const [sb, lo, hi] = spans[k]!;
      const b = this.blocks[sb]!;
      for (let j = lo; j < hi; j++) this.pageCount -= pagesOf(b[j]!);
      b.splice(lo, hi - lo);
      if (b.length === 0) this.blocks.splice(sb, 1);
    }
    this.rangeCount -= rs.length;
    return true;
  }

  /**
   * Puts back sorted, disjoint ranges (a fill lease's runs into the in-flight map): with one splice
   * when nothing of the map lies between them, else one by one. Throws, leaving the map as it was,
   * if any overlaps what is present.
   */
  insertAll(rs: readonly LazyRange[]): void {
    if (rs.length === 0) return;
    const own: LazyRange[] = [];
    for (const r of rs) {
      checkRange(r);
      const prev = own[own.length - 1];
      if (prev !== undefined && r.start < prev.end) throw new RangeOverlapError(r.start, r.end, prev.start, prev.end);
      own.push(mk(r.start, r.end, r.imgStart));
    }
    const last = own[own.length - 1]!;
    const next = this.nextAtOrAfter(own[0]!.start);
    if (next === undefined || next.start >= last.end) {
      this.place(own[0]!.start, own);
      for (const r of own) this.pageCount += pagesOf(r);
      return;
    }
    for (const r of own) {
      const n = this.nextAtOrAfter(r.start);
      if (n !== undefined && n.start < r.end) throw new RangeOverlapError(r.start, r.end, n.start, n.end);
    }
    for (const r of own) this.insert(r);
  }

  /** Forget [start,end) (UNMAP / REMOVE); returns how many lazy pages were discarded. */
  drop(start: number, end: number): number {
    let n = 0;
    for (const r of this.take(start, end)) n += pagesOf(r);
    return n;
  }

  /**
   * Follow an mremap move of len bytes from `from` to `to`. Lazy pieces inside the source shift by
   * to-from and keep their imgStart (the data did not change, only where it is mapped). Whatever was
   * lazy at the destination is discarded, as the kernel unmaps the destination first. The source is
   * lifted out before the destination is cleared, so overlapping moves keep the moved data.
   */
  remap(from: number, to: number, len: number): void {
    checkPage('remap from', from);
    checkPage('remap to', to);
    checkPage('remap len', len);
    checkPage('remap source end', from + len);
    checkPage('remap destination end', to + len);
    if (len === 0 || from === to) return;
    const moved = this.take(from, from + len);
    this.take(to, to + len);
    if (moved.length === 0) return;
    const delta = to - from;
    const shifted = moved.map((r) => mk(r.start + delta, r.end + delta, r.imgStart));
    // [to,to+len) is now empty and every shifted piece lies inside it, so they go in as one block.
    this.place(to, shifted);
    for (const r of shifted) this.pageCount += pagesOf(r);
  }

  /** Put a range back (e.g. after a failed or partial copy); it must not overlap anything present. */
  insert(r: LazyRange): void {
    checkRange(r);
    const next = this.nextAtOrAfter(r.start);
    if (next !== undefined && next.start < r.end) {
      throw new RangeOverlapError(r.start, r.end, next.start, next.end);
    }
    const own = mk(r.start, r.end, r.imgStart);
    this.place(own.start, [own]);
    this.pageCount += pagesOf(own);
  }

  /** Inserts sorted ranges that all lie in a gap of the map at `at`. */
  private place(at: number, rs: LazyRange[]): void {
    this.rangeCount += rs.length;
    if (this.blocks.length === 0) {
      this.blocks.push(rs.slice());
      this.splitIfLarge(0);
      return;
    }
    // Into the block that holds the next range above; past the last range, into the last block.
    let bi = this.blockAbove(at);
    if (bi === this.blocks.length) bi--;
    const b = this.blocks[bi]!;
    b.splice(lowerBound(b, at), 0, ...rs);
    this.splitIfLarge(bi);
  }

  /**
   * Replaces ranges [lo,hi) of block bi by `kept` (what is left of them); returns the index of the
   * block after it, which is bi again when the block emptied and was removed.
   */
  private replaceInBlock(bi: number, lo: number, hi: number, kept: LazyRange[]): number {
    const b = this.blocks[bi]!;
    if (hi > lo || kept.length) {
      b.splice(lo, hi - lo, ...kept);
      this.rangeCount += kept.length - (hi - lo);
    }
    if (b.length === 0) {
      this.blocks.splice(bi, 1);
      return bi;
    }
    // A split put the block's ranges in several blocks: the next one is past all of them.
    return bi + this.splitIfLarge(bi);
  }

  /** Keeps blocks at most `block` long, so one splice never moves more than that; returns how many blocks it made. */
  private splitIfLarge(bi: number): number {
    const b = this.blocks[bi]!;
    if (b.length <= this.block) return 1;
    const half = this.block >> 1;
    const parts: LazyRange[][] = [];
    for (let i = 0; i < b.length; i += half) parts.push(b.slice(i, i + half));
    this.blocks.splice(bi, 1, ...parts);
    return parts.length;
  }

  /** Independent copy (for FORK); ranges are immutable, so sharing them is safe. */
  clone(): MemoryMap {
    const c = new MemoryMap(undefined, { block: this.block });
    c.blocks = this.blocks.map((b) => b.slice());
    c.rangeCount = this.rangeCount;
    c.pageCount = this.pageCount;
    return c;
  }

  [Symbol.iterator](): Iterator<LazyRange> {
    // Iterate a snapshot so mutating the map while iterating (take inside a fill loop) is safe.
    return this.blocks.flat()[Symbol.iterator]();
  }
}

/** Index of the first range in sorted rs whose end is above addr (rs.length if none). */
function lowerBound(rs: readonly LazyRange[], addr: number): number {
  return firstAbove(rs.length, (i) => rs[i]!.end, addr);
}
