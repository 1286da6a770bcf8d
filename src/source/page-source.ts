import type { AddressRange, PageData } from '../images';

export type { AddressRange, PageData };

/**
 * A process's page contents, addressed by dump-time (image) address, answered at once from the
 * images' mmap. A remote restore's pages are not a PageSource: they arrive later, through the
 * worker's arena (source/arena.ts), and LazyProcess.received copies them.
 */
export interface PageSource {
  /** Data for up to maxPages pages from imgAddr, or null if the images hold none there. */
  locate(imgAddr: number, maxPages: number): PageData | null;
}

/** What a worker needs to restore one process. */
export interface ProcessPages {
  source: PageSource;
  /** Lazy ranges (dump-time addresses), cut at VMA boundaries, sorted. */
  lazyRanges: AddressRange[];
  /** The VMAs registered with the uffd (dump-time addresses). */
  lazyVmas: AddressRange[];
}
