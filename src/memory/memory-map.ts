import { InvalidRangeError, MisalignedAddressError, RangeOverlapError } from './errors';

export const PAGE_SIZE = 4096;

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

/**
 * The lazy ranges of one process that still have to be copied. Ranges are kept sorted and disjoint;
 * adjacent ranges are deliberately not merged (CRIU keeps pagemap-entry boundaries, and a merged range
 * could straddle a VMA boundary that UFFDIO_COPY must not cross).
 */
export class MemoryMap implements Iterable<LazyRange> {
  private ranges: LazyRange[] = [];
  private pageCount = 0;

  constructor(ranges?: Iterable<LazyRange>) {
    if (ranges === undefined) return;
    let prev: LazyRange | undefined;
    for (const r of ranges) {
      checkRange(r);
      if (prev !== undefined && r.start < prev.end) {
        throw new RangeOverlapError(r.start, r.end, prev.start, prev.end);
      }
      const own = mk(r.start, r.end, r.imgStart);
      this.ranges.push(own);
      this.pageCount += pagesOf(own);
      prev = own;
    }
  }

  /** Remaining pages to copy. */
  get pages(): number {
    return this.pageCount;
  }

  /** Number of ranges. */
  get size(): number {
    return this.ranges.length;
  }

  /** Index of the first range with end > addr (ranges.length if none). */
  private upper(addr: number): number {
    let lo = 0;
    let hi = this.ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ranges[mid]!.end > addr) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** The range containing addr; addr need not be aligned (raw fault addresses are accepted). */
  find(addr: number): LazyRange | undefined {
    const r = this.ranges[this.upper(addr)];
    return r !== undefined && r.start <= addr ? r : undefined;
  }

  /** First range with end > addr: the range under addr, or else the next one above it. */
  nextAtOrAfter(addr: number): LazyRange | undefined {
    return this.ranges[this.upper(addr)];
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
    const lo = this.upper(start);
    let hi = lo;
    const taken: LazyRange[] = [];
    const kept: LazyRange[] = [];
    while (hi < this.ranges.length && this.ranges[hi]!.start < end) {
      const r = this.ranges[hi]!;
      if (r.start < start) kept.push(slice(r, r.start, start));
      const piece = slice(r, Math.max(r.start, start), Math.min(r.end, end));
      taken.push(piece);
      this.pageCount -= pagesOf(piece);
      if (r.end > end) kept.push(slice(r, end, r.end));
      hi++;
    }
    if (hi > lo) this.ranges.splice(lo, hi - lo, ...kept);
    return taken;
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
    this.ranges.splice(this.upper(to), 0, ...shifted);
    for (const r of shifted) this.pageCount += pagesOf(r);
  }

  /** Put a range back (e.g. after a failed or partial copy); it must not overlap anything present. */
  insert(r: LazyRange): void {
    checkRange(r);
    const i = this.upper(r.start);
    const next = this.ranges[i];
    if (next !== undefined && next.start < r.end) {
      throw new RangeOverlapError(r.start, r.end, next.start, next.end);
    }
    const own = mk(r.start, r.end, r.imgStart);
    this.ranges.splice(i, 0, own);
    this.pageCount += pagesOf(own);
  }

  /** Independent copy (for FORK); ranges are immutable, so sharing them is safe. */
  clone(): MemoryMap {
    const c = new MemoryMap();
    c.ranges = this.ranges.slice();
    c.pageCount = this.pageCount;
    return c;
  }

  [Symbol.iterator](): Iterator<LazyRange> {
    // Iterate a snapshot so mutating the map while iterating (take inside a fill loop) is safe.
    return this.ranges.slice()[Symbol.iterator]();
  }
}
