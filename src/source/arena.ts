// Page data from a page server travels main thread → worker through a per-worker SharedArrayBuffer
// arena: a FIFO of page-sized slots. The main thread (single producer) writes a reply's pages
// contiguously and puts a PAGES record in the worker's ring; the worker (single consumer) copies them
// into the process with UFFDIO_COPY and frees them in the same order. A reply never wraps: when it
// would, the producer skips to the start, and the consumer's free jumps over the gap with it.

const WRITE = 0; // i32 index: pages allocated (producer, free-running)
const READ = 16; // i32 index: pages freed (consumer), own cache line
const CAPACITY = 32; // i32 index: capacity in pages
export const ARENA_HEADER_BYTES = 192;
import { PAGE_SIZE } from '../address';

export function createArena(pages: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(ARENA_HEADER_BYTES + pages * PAGE_SIZE);
  new Int32Array(sab)[CAPACITY] = pages;
  return sab;
}

export class ArenaProducer {
  private readonly i32: Int32Array;
  private readonly data: Buffer;
  readonly capacity: number;
  constructor(sab: SharedArrayBuffer) {
    this.i32 = new Int32Array(sab);
    this.capacity = this.i32[CAPACITY];
    this.data = Buffer.from(sab, ARENA_HEADER_BYTES);
  }

  /** Copies `pages` pages in; returns the free-running slot number of the first, or -1 if full now. */
  put(bytes: Buffer, pages: number): number {
    if (pages > this.capacity) throw new RangeError(`reply of ${pages} pages exceeds the arena (${this.capacity})`);
    let write = Atomics.load(this.i32, WRITE) >>> 0;
    const read = Atomics.load(this.i32, READ) >>> 0;
    const pos = write % this.capacity;
    const skip = pos + pages > this.capacity ? this.capacity - pos : 0;
    if (((write - read) >>> 0) + skip + pages > this.capacity) return -1;
    write = (write + skip) >>> 0;
    bytes.copy(this.data, (write % this.capacity) * PAGE_SIZE, 0, pages * PAGE_SIZE);
    Atomics.store(this.i32, WRITE, (write + pages) | 0);
    return write;
  }
}

export class ArenaConsumer {
  private readonly i32: Int32Array;
  readonly data: Buffer;
  readonly capacity: number;
  constructor(sab: SharedArrayBuffer) {
    this.i32 = new Int32Array(sab);
    this.capacity = this.i32[CAPACITY];
    this.data = Buffer.from(sab, ARENA_HEADER_BYTES);
  }

  /** Byte offset in `data` of slot `first`. */
  offset(first: number): number {
    return (first % this.capacity) * PAGE_SIZE;
  }

  /** Frees everything up to and including the reply at `first` (replies are freed in order). */
  free(first: number, pages: number): void {
    Atomics.store(this.i32, READ, (first + pages) | 0);
  }
}
