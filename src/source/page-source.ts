/** Where the bytes of a run of pages live: `pages` contiguous pages at `offset` in `buf`. */
export interface PageData {
  buf: Buffer;
  offset: number;
  pages: number;
}

/**
 * A process's page contents, addressed by dump-time (image) address. Local images answer at once
 * from an mmap; a remote source (issue 5) will answer asynchronously.
 */
export interface PageSource {
  /** Data for up to maxPages pages from imgAddr, or null if the images hold none there. */
  locate(imgAddr: number, maxPages: number): PageData | null;
}

export interface AddressRange {
  start: number;
  end: number;
}

/** What a worker needs to restore one process. */
export interface ProcessPages {
  source: PageSource;
  /** Lazy ranges (dump-time addresses), cut at VMA boundaries, sorted. */
  lazyRanges: AddressRange[];
  /** The VMAs registered with the uffd (dump-time addresses). */
  lazyVmas: AddressRange[];
}
