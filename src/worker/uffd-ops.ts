// The mechanism under the worker's policy: the filling ioctls, and what each errno means for a
// restore, decided once. LazyProcess (the policy) only sees the outcomes.
import * as os from 'node:os';
import { native, isErrno } from '../native';
import type { PageSource } from '../source/page-source';
import { hex } from '../address';

import { PAGE_SIZE } from '../address';

/**
 * - exists: that page is there already (a fault or another worker copied it): step over it;
 * - again: the mm is changing (an event is pending, EAGAIN) or the gate is closed: retry after the events;
 * - novma: nothing registered there (ENOENT): normal right after munmap, while its event is queued;
 * - gone: the process exited (ESRCH) or its mm is being torn down (ENOSPC).
 */
export type IoctlOutcome = 'ok' | 'exists' | 'again' | 'novma' | 'gone';

export class WorkerError extends Error {}

// First name wins: EAGAIN before its alias EWOULDBLOCK, as the addon's names.
const ERRNO_NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(os.constants.errno)) if (!ERRNO_NAMES.has(n)) ERRNO_NAMES.set(n, name);

export function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `errno ${n}`;
}

export function classify(code: string): IoctlOutcome | null {
  switch (code) {
    case 'EEXIST':
      return 'exists';
    case 'EAGAIN':
      return 'again';
    case 'ENOENT':
      return 'novma';
    case 'ESRCH':
    case 'ENOSPC':
      return 'gone';
    default:
      return null;
  }
}

export interface IoctlResult {
  outcome: IoctlOutcome;
  /** Bytes filled before the outcome (all of them for 'ok'). */
  done: number;
}

function failed(e: unknown, what: () => string): IoctlResult {
  if (!isErrno(e)) throw e;
  const outcome = classify(e.code);
  if (!outcome) throw new WorkerError(`${what()}: ${e.code}`);
  return { outcome, done: e.done ?? 0 };
}


export function copy(uffd: number, pid: number, dst: number, buf: Buffer, off: number, len: number): IoctlResult {
  try {
    native.uffdCopy(uffd, dst, buf, off, len, 0);
    return { outcome: 'ok', done: len };
  } catch (e) {
    return failed(e, () => `pid ${pid}: UFFDIO_COPY of ${len / PAGE_SIZE} pages to ${hex(dst)}`);
  }
}

export function zeropage(uffd: number, pid: number, dst: number, len: number): IoctlResult {
  try {
    return { outcome: 'ok', done: native.uffdZeropage(uffd, dst, len, 0) };
  } catch (e) {
    return failed(e, () => `pid ${pid}: UFFDIO_ZEROPAGE at ${hex(dst)}`);
  }
}

export function wake(uffd: number, dst: number, len: number): void {
  native.uffdWake(uffd, dst, len);
}

/** UFFDIO_UNREGISTER (after madvise(DONTNEED): the range must read as zeros); 'gone' if the mm is. */
export function unregister(uffd: number, start: number, len: number): 'ok' | 'gone' {
  try {
    native.uffdUnregister(uffd, start, len);
    return 'ok';
  } catch (e) {
    if (isErrno(e, 'ENOMEM', 'ESRCH')) return 'gone';
    throw e;
  }
}

/** How long poison() keeps retrying while an mm event is unread (EAGAIN). */
const POISON_AGAIN_MS = 100;
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * UFFDIO_POISON of a range for fail-stop: later accesses to still-missing pages raise SIGBUS
 * instead of reading zeros. Steps over pages already present (EEXIST) and retries for a while
 * when an event is unread (EAGAIN), as a copy would; returns the pages poisoned.
 */
export function poison(uffd: number, start: number, len: number): number {
  let at = 0;
  let pages = 0;
  const until = Date.now() + POISON_AGAIN_MS;
  while (at < len) {
    try {
      pages += native.uffdPoison(uffd, start + at, len - at) / PAGE_SIZE;
      return pages;
    } catch (e) {
      if (!isErrno(e)) throw e;
      const done = e.done ?? 0;
      pages += done / PAGE_SIZE;
      at += done;
      if (e.code === 'EEXIST') at += PAGE_SIZE;
      else if (e.code === 'EAGAIN' && Date.now() < until) {
        if (done === 0) Atomics.wait(pause, 0, 0, 1);
      } else return pages; // the process is gone (ESRCH, ENOENT): nothing left to protect
    }
  }
  return pages;
}

export interface RunsResult {
  /** Bytes of the lease dealt with, from its start (copied or already present). */
  dealt: number;
  /** Pages found present (EEXIST). */
  existing: number;
  ioctls: number;
  /** Why it stopped short: a waiting record, an mm event, an errno, or images with no data. */
  stop: 'done' | 'yielded' | 'event' | 'no-data' | IoctlOutcome;
  errno: number;
}

const MAX_RUNS = 256;

/**
 * Copies ranges of image data (each `pages` pages from `imgStart` to `dst`, in order) in one native
 * call per source buffer (a parent chain may spread a range over several pages files): each run is
 * a contiguous stretch of one buffer. Enters `gate`'s copy gate with `epoch` for every slice; gives way to a
 * record in `watch` after `yieldAtNs`.
 */
export class RunCopier {
  private readonly runs = new Float64Array(MAX_RUNS * 3);
  private readonly out = new Float64Array(4);

  copyRuns(
    source: PageSource,
    uffd: number,
    gate: Uint8Array,
    epoch: number,
    ranges: readonly { dst: number; imgStart: number; pages: number }[],
    slicePages: number,
    watch: Uint8Array | null,
    yieldAtNs: number,
    epfd = -1,
  ): RunsResult {
    const r: RunsResult = { dealt: 0, existing: 0, ioctls: 0, stop: 'done', errno: 0 };
    // Where the next native call starts: range k, `at` bytes into it. A lease's ranges are short
    // (a real dump's lazy memory is mostly runs of a few pages), so they go down in one call.
    let k = 0;
    let at = 0;
    while (k < ranges.length) {
      let n = 0;
      let buf: Buffer | null = null;
      while (k < ranges.length && n < MAX_RUNS) {
        const { dst, imgStart, pages } = ranges[k]!;
        const total = pages * PAGE_SIZE;
        const d = source.locate(imgStart + at, (total - at) / PAGE_SIZE);
        if (!d || (buf && d.buf !== buf)) break;
        buf = d.buf;
        const len = d.pages * PAGE_SIZE;
        const last = 3 * (n - 1);
        // Pieces of one range join when contiguous; two ranges never do, even when their pages and
        // image data are: a range ends at its VMA's end, and one UFFDIO_COPY across two VMAs fails
        // whole with ENOENT (a thread stack's last pages and the read-only VMA after it, in a
        // real CRIU dump, when a resumed daemon found those pages missing again).
        if (n > 0 && at > 0 && this.runs[last] + this.runs[last + 2] === dst + at && this.runs[last + 1] + this.runs[last + 2] === d.offset) {
          this.runs[last + 2] += len;
        } else {
          this.runs[3 * n] = dst + at;
          this.runs[3 * n + 1] = d.offset;
          this.runs[3 * n + 2] = len;
          n++;
        }
        at += len;
        if (at === total) {
          k++;
          at = 0;
        }
      }
      if (!buf) {
        r.stop = 'no-data';
        return r;
      }
      const status = native.fillRuns(uffd, gate, epoch, buf, this.runs, n, slicePages, watch, yieldAtNs, this.out, epfd);
      r.dealt += this.out[0];
      r.existing += this.out[1];
      r.ioctls += this.out[3];
      if (status === native.fillStatus.DONE) continue;
      if (status === native.fillStatus.YIELDED) r.stop = 'yielded';
      else if (status === native.fillStatus.EVENT) r.stop = 'event';
      else {
        r.errno = this.out[2];
        const outcome = classify(errnoName(this.out[2]));
        const failed = ranges[k] ? ranges[k]!.dst + at : 0;
        if (!outcome) throw new WorkerError(`UFFDIO_COPY to ${hex(failed)} (${ranges.length} runs): ${errnoName(this.out[2])}`);
        r.stop = outcome;
      }
      return r;
    }
    return r;
  }
}
