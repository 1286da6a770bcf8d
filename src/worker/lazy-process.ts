// One restored process as its worker sees it: the lazy ranges still missing (run-time addresses
// that follow mremap, each with the dump-time address of its data), its uffd, and its fill cursor.
import { firstAbove, hex, PAGE_SIZE } from '../address';
import { MemoryMap, type LazyRange } from '../memory';
import { newCounters, type ProcessCounters } from '../protocol/counters';
import { native } from '../native';
import type { AddressRange, PageSource } from '../source/page-source';
import type { Tuning } from '../protocol/tuning';
import { WorkerError, copy as copyIoctl, poison, unregister, wake, zeropage, type RunsResult } from './uffd-ops';

export { WorkerError };
const pageDown = (a: number) => a - (a % PAGE_SIZE);

/** ENOENT is normal for a moment after munmap (its event is read but not yet handled); not for long. */
const MAX_ENOENT_RETRIES = 10_000;

export type CopyOutcome = 'ok' | 'again' | 'gone';

/** Remote lazy restore: asks the main thread to GET pages from the page server. */
export interface RemoteLink {
  request(p: LazyProcess, tag: number, imgStart: number, pages: number, urgent: boolean): void;
}

/** Serialises ioctls into a process's mm with the main thread's reading of its events (RingConsumer). */
export interface CopyGate {
  beginCopy(): boolean;
  endCopy(): void;
  /** Records are waiting (other faults): neighbours of a fault can wait for the background fill. */
  available(): number;
}

export class LazyProcess {
  readonly map: MemoryMap;
  readonly counters: ProcessCounters = newCounters();
  private faultAround: number;
  private lastFaultEnd = -1;
  private fillCursor = 0;
  private fillChunk: number;
  gone = false;
  /** When the last fault's thread was released (its page copied): the service time's end. */
  releasedAtNs = 0;
  /** ENOENT answers in a row: a range that stays unregistered with no event explaining it is fatal. */
  private enoents = 0;
  /** --record-faults: image addresses of pages in the order they were first faulted */
  trace: number[] | null = null;
  /** --prefetch: image addresses of pages to fill first, in this order */
  private prefetch: number[] = [];
  private prefetchAt = 0;
  /** Remote mode: ranges requested from the page server and not yet copied (CRIU's `reqs`). */
  readonly inflight = new MemoryMap();
  /** The restore it belongs to (engine.ts: one engine serves several); its images are that restore's. */
  session = 0;
  private readonly requests = new Map<number, { imgStart: number; pages: number; urgent: boolean }>();
  private fillsInFlight = 0;
  /** Local mode: fill leases of this process on the board (taken or not). */
  leases = 0;
  /** Image addresses of leased pages a fault copied first: their lease finds them present. */
  private readonly faultedInLease = new Set<number>();
  private nextTag = 1;
  /** Set for remote restores; `source` is then unused. */
  remote: RemoteLink | null = null;

  constructor(
    readonly uffd: number,
    readonly pid: number,
    readonly source: PageSource,
    map: MemoryMap,
    /** Registered areas (run-time addresses), sorted; bound zero-fill of holes. */
    private vmas: AddressRange[],
    private readonly tuning: Tuning,
    private readonly gate: CopyGate,
  ) {
    this.map = map;
    this.faultAround = tuning.faultAroundMin;
    this.fillChunk = tuning.fillChunkMin;
  }

  /** The map of a process not yet handed over: nothing has moved, run-time addresses are the image's. */
  static mapOf(lazy: AddressRange[]): MemoryMap {
    return new MemoryMap(lazy.map((r) => ({ start: r.start, end: r.end, imgStart: r.start })));
  }

  static fromImages(
    uffd: number,
    pid: number,
    source: PageSource,
    lazy: AddressRange[],
    vmas: AddressRange[],
    tuning: Tuning,
    gate: CopyGate,
    map = LazyProcess.mapOf(lazy),
  ): LazyProcess {
    return new LazyProcess(uffd, pid, source, map, vmas.map((v) => ({ ...v })), tuning, gate);
  }

  /**
   * A forked child starts with everything its parent still misses (UFFD_EVENT_FORK), including
   * what is in flight from the page server: that data will be copied into the parent only.
   */
  forkChild(uffd: number): LazyProcess {
    const map = this.map.clone();
    for (const r of this.inflight) map.insert(r);
    const child = new LazyProcess(uffd, this.pid, this.source, map, this.vmas.map((v) => ({ ...v })), this.tuning, this.gate);
    child.remote = this.remote;
    child.session = this.session;
    return child;
  }

  get complete(): boolean {
    return this.map.pages === 0 && this.inflight.pages === 0;
  }

  /**
   * Serves a page fault: the page, then its lazy neighbours, or zeros for a hole. Unlike CRIU, a
   * fault does not shrink the process's background chunk: under a stream of random faults that
   * would keep every chunk at its smallest and starve the fill (docs/DESIGN.md, "Copy policy").
   */
  fault(address: number, retry = false): CopyOutcome {
    const page = pageDown(address);
    if (!retry) this.counters.faults++;
    const range = this.map.find(page);
    if (!range) {
      const leased = this.inflight.find(page);
      // Requested from the page server: its UFFDIO_COPY will wake this thread. Leased to a
      // worker's fill: copy the page now rather than wait for it (whoever comes second finds
      // it present).
      if (leased) return this.remote ? 'ok' : this.faultInLease(page, leased);
    }
    if (!range) {
      const z = this.zeroFill(page);
      this.releasedAtNs = native.monotonicNs();
      return z;
    }
    this.trace?.push(range.imgStart + (page - range.start));
    // Faults walking up through memory earn a wider window; scattered faults shrink it back.
    const sequential = page === this.lastFaultEnd;
    this.faultAround = sequential
      ? Math.min(this.faultAround * 2, this.tuning.faultAroundMax)
      : Math.max(this.faultAround >> 1, this.tuning.faultAroundMin);
    const w = this.map.window(page, this.faultAround, sequential ? 0 : this.faultAround >> 2)!;
    this.lastFaultEnd = w.end;
    const [piece] = this.map.take(w.start, w.end);
    if (this.remote) {
      // The faulting page in a request of its own, so its reply is small and comes first.
      const at = page - piece.start;
      this.ask({ start: page, end: page + PAGE_SIZE, imgStart: piece.imgStart + at }, true);
      if (piece.end > page + PAGE_SIZE) this.ask({ start: page + PAGE_SIZE, end: piece.end, imgStart: piece.imgStart + at + PAGE_SIZE }, true);
      if (page > piece.start) this.ask({ start: piece.start, end: page, imgStart: piece.imgStart }, true);
      return 'ok';
    }
    // The faulting page alone first: its copy wakes the thread, which then runs while the
    // neighbours follow (a copy of many pages would keep it waiting for all of them).
    const at = page - piece.start;
    const first = this.copy({ start: page, end: page + PAGE_SIZE, imgStart: piece.imgStart + at }, 'fault');
    this.releasedAtNs = native.monotonicNs();
    const before = { start: piece.start, end: page, imgStart: piece.imgStart };
    const after = { start: page + PAGE_SIZE, end: piece.end, imgStart: piece.imgStart + at + PAGE_SIZE };
    if (first !== 'ok') {
      // Not copied (the mm is changing, or the process is gone): the neighbours go back too.
      if (before.end > before.start) this.map.insert(before);
      if (after.end > after.start) this.map.insert(after);
      return first;
    }
    for (const rest of [after, before]) {
      if (rest.end <= rest.start) continue;
      // Other faults queued: serve them first; these neighbours go back to the background fill.
      if (this.gate.available() > 0) {
        this.map.insert(rest);
        continue;
      }
      const outcome = this.copy(rest, 'fault');
      if (outcome === 'gone') return outcome;
      // 'again': copy() put the rest back; the background fill will take it.
    }
    return 'ok';
  }

  /** Pages a previous run faulted (image addresses, in order), to fill before anything else. */
  setPrefetch(pages: number[]): void {
    this.prefetch = pages;
    this.prefetchAt = 0;
  }

  /**
   * Remote: asks the page server for the next background chunk; 'busy' while one is on its way
   * (one at a time per process, as CRIU), 'empty' when nothing is left to ask for.
   */
  fillNext(): CopyOutcome | 'empty' | 'busy' {
    if (this.fillsInFlight > 0) return 'busy';
    const piece = this.nextFillRange();
    return piece ? this.ask(piece, false) : 'empty';
  }

  /** A page server's reply must fit the page arena; a local lease is only bounded by its hand-over cost. */
  private get fillChunkCap(): number {
    return this.remote ? this.tuning.remoteFillChunkMax : this.tuning.fillChunkMax;
  }

  /** The next range the background fill should copy, taken out of the missing ranges. */
  private nextFillRange(): LazyRange | undefined {
    const pre = this.nextPrefetch();
    if (pre) return pre;
    let r = this.map.nextAtOrAfter(this.fillCursor);
    if (!r) {
      // Wrap around: ranges put back after EAGAIN, or moved by mremap, can lie below the cursor.
      this.fillCursor = 0;
      r = this.map.nextAtOrAfter(0);
    }
    if (!r) return undefined;
    const start = Math.max(r.start, this.fillCursor);
    const end = Math.min(r.end, start + this.fillChunk * PAGE_SIZE);
    this.fillCursor = end;
    this.fillChunk = Math.min(this.fillChunk * 2, this.fillChunkCap);
    return this.map.take(start, end)[0];
  }

  /**
   * Local: the next background ranges for a fill lease (see fill-board.ts), up to `maxRuns` runs and
   * the chunk size in pages, across the holes between lazy ranges. They stay missing, as in flight:
   * events move or drop them, a fork gives them to the child, a fault copies from them at once.
   */
  leaseNext(maxRuns = 1): LazyRange[] {
    const first = this.nextFillRange();
    if (!first) return [];
    const runs = [first];
    let pages = (first.end - first.start) / PAGE_SIZE;
    const budget = this.fillChunk; // nextFillRange already doubled it: the size this lease may reach
    // Only a run the cursor gave can be extended from the cursor: a prefetched one lies anywhere, and
    // runs taken from the cursor after it would be out of address order (the last prefetched run of a
    // --prefetch restore was followed by the ranges at the cursor, and its lease refused).
    const fromCursor = first.end === this.fillCursor;
    if (runs.length < maxRuns && pages < budget && fromCursor && this.prefetchAt >= this.prefetch.length) {
      const more = this.map.takeRuns(this.fillCursor, maxRuns - 1, budget - pages);
      if (more.length) {
        this.fillCursor = more[more.length - 1]!.end;
        runs.push(...more);
      }
    }
    this.inflight.insertAll(runs);
    this.leases++;
    return runs;
  }

  /**
   * A fill lease came back: the first `dealt` bytes of its runs, in order, are in place (copied by
   * its taker, or present already); the rest goes back to the missing ranges wherever events have
   * moved it meanwhile.
   */
  leaseSettled(runs: { dst?: number; imgStart: number; pages: number }[], r: Pick<RunsResult, 'dealt' | 'existing' | 'stop'> & { ioctls?: number }): CopyOutcome {
    this.leases--;
    let existing = r.existing;
    let offset = 0;
    let cutAt = -1;
    const whole = runs.reduce((n, run) => n + run.pages * PAGE_SIZE, 0);
    // The common case, one splice: copied whole, where it was leased, no fault on it meanwhile.
    const settled =
      r.dealt === whole &&
      this.faultedInLease.size === 0 &&
      runs.every((run) => run.dst !== undefined) &&
      this.inflight.takeExact(runs.map((run) => ({ start: run.dst!, end: run.dst! + run.pages * PAGE_SIZE, imgStart: run.imgStart })));
    for (const run of settled ? [] : runs) {
      const len = run.pages * PAGE_SIZE;
      const dealt = Math.max(0, Math.min(len, r.dealt - offset));
      if (dealt < len && cutAt < 0) cutAt = run.imgStart + dealt;
      existing -= this.settleRun(run, dealt);
      offset += len;
    }
    const copied = r.dealt / PAGE_SIZE - r.existing;
    this.counters.fillPages += copied;
    this.counters.existingPages += existing;
    this.counters.copies += r.ioctls ?? 0;
    const cut = cutAt < 0 ? (runs.at(-1)!.imgStart + runs.at(-1)!.pages * PAGE_SIZE) : cutAt;
    switch (r.stop) {
      case 'done':
      case 'yielded':
      case 'exists':
        return 'ok';
      case 'gone':
        this.gone = true;
        return 'gone';
      case 'novma':
        this.noVma(cut);
        return 'again';
      case 'no-data':
        throw new WorkerError(`pid ${this.pid}: the images hold no data for lazy page ${hex(cut)}`);
      default:
        return 'again';
    }
  }

  /**
   * One run of a settled lease: its first `dealt` bytes leave the in-flight map, the rest goes back
   * to the missing ranges. Returns how many of its present pages a fault had copied first (their
   * EEXIST is no news).
   */
  private settleRun(run: { dst?: number; imgStart: number; pages: number }, dealt: number): number {
    const { imgStart, pages } = run;
    const end = imgStart + pages * PAGE_SIZE;
    const cut = imgStart + dealt;
    let faulted = 0;
    for (const a of this.faultedInLease) {
      if (a < imgStart || a >= end) continue;
      if (a < cut) faulted++;
      this.faultedInLease.delete(a);
    }
    // Where it was leased, unmoved and whole (no event touched it): an image page lies in one place
    // only, so no other in-flight piece can hold part of it.
    const at = run.dst === undefined ? undefined : this.inflight.find(run.dst);
    if (at && run.dst! + pages * PAGE_SIZE <= at.end && at.imgStart + (run.dst! - at.start) === imgStart) {
      this.settlePiece(run.dst!, imgStart, end, cut);
      return faulted;
    }
    // Moved, cut or partly dropped by events meanwhile: find its pieces by image address.
    for (const f of [...this.inflight]) {
      const fImgEnd = f.imgStart + (f.end - f.start);
      if (fImgEnd <= imgStart || f.imgStart >= end) continue;
      const lo = Math.max(f.imgStart, imgStart);
      const hi = Math.min(fImgEnd, end);
      this.settlePiece(f.start + (lo - f.imgStart), lo, hi, cut);
    }
    return faulted;
  }

  /** The in-flight piece at dst holding image [lo,hi): done below `cut`, back to the missing ranges above. */
  private settlePiece(dst: number, lo: number, hi: number, cut: number): void {
    this.inflight.take(dst, dst + (hi - lo));
    if (hi <= cut) return;
    const from = Math.max(lo, cut);
    const back = { start: dst + (from - lo), end: dst + (hi - lo), imgStart: from };
    this.map.insert(back);
    // Resume the fill where this lease stopped, not after the leases offered since.
    this.fillCursor = Math.min(this.fillCursor, back.start);
  }

  /** A fault on a page leased to the fill: copy it now (the lease's copy then finds it present). */
  private faultInLease(page: number, leased: LazyRange): CopyOutcome {
    const img = leased.imgStart + (page - leased.start);
    const data = this.source.locate(img, 1);
    if (!data) throw new WorkerError(`pid ${this.pid}: the images hold no data for lazy page ${hex(img)}`);
    if (!this.gate.beginCopy()) return 'again';
    const r = copyIoctl(this.uffd, this.pid, page, data.buf, data.offset, PAGE_SIZE);
    this.gate.endCopy();
    this.releasedAtNs = native.monotonicNs();
    switch (r.outcome) {
      case 'ok':
        this.counters.faultPages++;
        this.counters.copies++;
        // No longer missing: a fork now copies it to the child, and the lease must not put it back.
        this.inflight.take(page, page + PAGE_SIZE);
        this.faultedInLease.add(img);
        return 'ok';
      case 'exists':
        // The lease's copy was first; it woke the range it copied, but wake to be sure.
        wake(this.uffd, page, PAGE_SIZE);
        return 'ok';
      case 'gone':
        this.gone = true;
        return 'gone';
      default:
        return 'again';
    }
  }

  private ask(piece: LazyRange, urgent: boolean): CopyOutcome {
    const tag = this.nextTag++;
    const pages = (piece.end - piece.start) / PAGE_SIZE;
    this.inflight.insert(piece);
    this.counters.requestedPages += pages;
    this.requests.set(tag, { imgStart: piece.imgStart, pages, urgent });
    if (!urgent) this.fillsInFlight++;
    this.remote!.request(this, tag, piece.imgStart, pages, urgent);
    return 'ok';
  }

  /**
   * A page-server reply: copy what is still wanted (the request may have moved with mremap or
   * shrunk with munmap meanwhile) from the arena; what the server did not send goes back to the
   * remaining ranges, to be asked again.
   */
  received(tag: number, imgStart: number, got: number, data: Buffer, offset: number): CopyOutcome {
    const req = this.requests.get(tag);
    if (!req) throw new WorkerError(`pid ${this.pid}: page-server reply for a request never made (tag ${tag})`);
    this.requests.delete(tag);
    if (!req.urgent) this.fillsInFlight--;
    const end = imgStart + got * PAGE_SIZE;
    const reqEnd = req.imgStart + req.pages * PAGE_SIZE;
    let outcome: CopyOutcome = 'ok';
    for (const r of [...this.inflight]) {
      const rImgEnd = r.imgStart + (r.end - r.start);
      if (rImgEnd <= req.imgStart || r.imgStart >= reqEnd) continue;
      // The part of this in-flight range the reply carries, and the part it does not.
      const lo = Math.max(r.imgStart, req.imgStart);
      const hi = Math.min(rImgEnd, reqEnd);
      const dst = r.start + (lo - r.imgStart);
      const [piece] = this.inflight.take(dst, dst + (hi - lo));
      const have = Math.min(hi, end) - lo;
      if (have < hi - lo) this.map.insert({ start: dst + Math.max(0, have), end: piece.end, imgStart: lo + Math.max(0, have) });
      if (have <= 0 || outcome === 'gone') continue;
      const o = this.copyFrom({ start: dst, end: dst + have, imgStart: lo }, data, offset + (lo - imgStart), req.urgent ? 'fault' : 'fill');
      if (o === 'gone') outcome = 'gone';
    }
    return outcome;
  }

  /**
   * UFFDIO_COPY of one piece from a buffer (an image mmap or page-server data). EEXIST: those pages
   * are there already, go on after them. EAGAIN (the mm is changing: an event is pending) and
   * ENOENT (the VMA went away, its event still behind us in the ring): the rest goes back to the
   * missing ranges for a retry after the events.
   */
  private copyFrom(piece: LazyRange, buf: Buffer, off: number, cause: 'fault' | 'fill'): CopyOutcome {
    const len = piece.end - piece.start;
    if (!this.gate.beginCopy()) {
      this.map.insert(piece);
      return 'again';
    }
    const r = copyIoctl(this.uffd, this.pid, piece.start, buf, off, len);
    this.gate.endCopy();
    this.counted(cause, r.done / PAGE_SIZE);
    switch (r.outcome) {
      case 'ok':
        this.counters.copies++;
        this.enoents = 0;
        return 'ok';
      case 'exists': {
        this.counters.existingPages++;
        const skip = r.done + PAGE_SIZE;
        if (skip < len) return this.copyFrom({ start: piece.start + skip, end: piece.end, imgStart: piece.imgStart + skip }, buf, off + skip, cause);
        return 'ok';
      }
      case 'again':
      case 'novma':
        if (r.outcome === 'novma') this.noVma(piece.start + r.done);
        this.map.insert({ start: piece.start + r.done, end: piece.end, imgStart: piece.imgStart + r.done });
        return 'again';
      case 'gone':
        this.gone = true;
        return 'gone';
    }
  }

  /**
   * The next run of the prefetch list still missing: consecutive listed pages are copied together.
   * Image addresses equal run-time ones until the process remaps, and a remapped page is simply not
   * found (the ordinary fill gets it).
   */
  private nextPrefetch(): LazyRange | undefined {
    while (this.prefetchAt < this.prefetch.length) {
      const first = this.prefetch[this.prefetchAt++];
      const r = this.map.find(first);
      if (!r || r.imgStart + (first - r.start) !== first) continue;
      // Each traced fault stands for the window a fault there copies (the recorded page is the
      // first of it): prefetching single pages would split those windows into more faults.
      let end = Math.min(r.end, first + this.tuning.faultAroundMin * PAGE_SIZE);
      while (this.prefetchAt < this.prefetch.length && this.prefetch[this.prefetchAt] >= first && this.prefetch[this.prefetchAt] <= end && end < r.end && (end - first) / PAGE_SIZE < this.fillChunkCap) {
        end = Math.min(r.end, Math.max(end, this.prefetch[this.prefetchAt++] + this.tuning.faultAroundMin * PAGE_SIZE));
      }
      return this.map.take(first, end)[0];
    }
    return undefined;
  }

  /** Copies a piece from the local images (a fault and its neighbours), one contiguous run at a time. */
  private copy(piece: LazyRange, cause: 'fault' | 'fill'): CopyOutcome {
    let dst = piece.start;
    let img = piece.imgStart;
    while (dst < piece.end) {
      const data = this.source.locate(img, (piece.end - dst) / PAGE_SIZE);
      if (!data) throw new WorkerError(`pid ${this.pid}: the images hold no data for lazy page ${hex(img)}`);
      const len = data.pages * PAGE_SIZE;
      const outcome = this.copyFrom({ start: dst, end: dst + len, imgStart: img }, data.buf, data.offset, cause);
      if (outcome !== 'ok') {
        // copyFrom kept its own remainder; the runs after it wait too.
        if (outcome === 'again' && dst + len < piece.end) this.map.insert({ start: dst + len, end: piece.end, imgStart: img + len });
        return outcome;
      }
      dst += len;
      img += len;
    }
    return 'ok';
  }

  private counted(cause: 'fault' | 'fill', pages: number): void {
    if (cause === 'fault') this.counters.faultPages += pages;
    else this.counters.fillPages += pages;
  }

  /** A fault outside every lazy range: a hole in the image (zeros), or a page copied meanwhile. */
  private zeroFill(page: number): CopyOutcome {
    const vma = this.vmaAt(page);
    const next = this.map.nextAtOrAfter(page);
    let end = page + this.tuning.zeroAroundMax * PAGE_SIZE;
    if (vma) end = Math.min(end, vma.end);
    else end = page + PAGE_SIZE;
    if (next) end = Math.min(end, next.start);
    // Pages on their way from the page server are missing too, but not holes.
    const coming = this.inflight.nextAtOrAfter(page);
    if (coming) end = Math.min(end, coming.start);
    if (!this.gate.beginCopy()) return 'again';
    const r = zeropage(this.uffd, this.pid, page, end - page);
    this.gate.endCopy();
    this.counters.zeroPages += r.done / PAGE_SIZE;
    switch (r.outcome) {
      case 'exists': // already filled (by a copy that also woke the thread); wake to be sure
        if (r.done === 0) wake(this.uffd, page, PAGE_SIZE);
        return 'ok';
      case 'novma': // no registered VMA here any more: a stale fault on memory since unmapped
        return 'ok';
      case 'gone':
        this.gone = true;
        return 'gone';
      default:
        return r.outcome;
    }
  }

  private noVma(addr: number): void {
    if (++this.enoents > MAX_ENOENT_RETRIES) {
      throw new WorkerError(`pid ${this.pid}: ${hex(addr)} is not registered with its uffd, and no event says why (restorer and images disagree)`);
    }
  }

  private vmaAt(addr: number): AddressRange | undefined {
    const v = this.vmas[firstAbove(this.vmas.length, (i) => this.vmas[i]!.end, addr)];
    return v && v.start <= addr ? v : undefined;
  }

  /** madvise(DONTNEED) and friends: afterwards the range reads as zeros, never as image data. */
  removed(start: number, end: number): CopyOutcome {
    if (unregister(this.uffd, start, end - start) === 'gone') {
      this.gone = true;
      return 'gone';
    }
    this.map.drop(start, end);
    this.inflight.drop(start, end);
    this.vmas = cutOut(this.vmas, start, end);
    return 'ok';
  }

  unmapped(start: number, end: number): void {
    this.map.drop(start, end);
    this.inflight.drop(start, end);
    this.vmas = cutOut(this.vmas, start, end);
  }

  remapped(from: number, to: number, len: number): void {
    this.map.remap(from, to, len);
    this.inflight.remap(from, to, len);
    const moved = this.vmas
      .filter((v) => v.end > from && v.start < from + len)
      .map((v) => ({ start: Math.max(v.start, from) - from + to, end: Math.min(v.end, from + len) - from + to }));
    this.vmas = cutOut(cutOut(this.vmas, from, from + len), to, to + len).concat(moved).sort((a, b) => a.start - b.start);
  }

  /** Fail-stop: make every still-missing page fault fatally (SIGBUS) rather than read zeros. */
  poisonRemaining(): number {
    let pages = 0;
    for (const r of [...this.map, ...this.inflight]) pages += poison(this.uffd, r.start, r.end - r.start);
    return pages;
  }
}

function cutOut(list: AddressRange[], start: number, end: number): AddressRange[] {
  const out: AddressRange[] = [];
  for (const v of list) {
    if (v.end <= start || v.start >= end) out.push(v);
    else {
      if (v.start < start) out.push({ start: v.start, end: start });
      if (v.end > end) out.push({ start: end, end: v.end });
    }
  }
  return out;
}
