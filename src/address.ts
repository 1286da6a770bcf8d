// Addresses and pages, as every part of faultline writes and searches them. A leaf: it imports
// nothing, so that images, memory, protocol, source, worker and server can all use it.

/** The page size of the images and of every uffd ioctl (x86-64 and arm64 with 4 KiB pages). */
export const PAGE_SIZE = 4096;

/** An address (or size) as CRIU, the kernel and our messages write it. */
export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}

/**
 * The first index i in [0, count) whose keyOf(i) is above addr, count if none, for keys sorted
 * ascending. With range ends as keys it is the range containing addr or the next one after it;
 * with range starts, one less is the last range starting at or below addr.
 */
export function firstAbove(count: number, keyOf: (i: number) => number, addr: number): number {
  let lo = 0;
  let hi = count;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keyOf(mid) > addr) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
