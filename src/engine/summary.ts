// The end-of-restore summary: one screen for people, JSON for machines.
import { addPairs, newHistogram, percentilesUs } from '../protocol/histogram';
import { addCounters, newCounters, type ProcessCounters } from '../protocol/counters';
import type { WorkerResult } from '../protocol/worker-messages';

export interface RestoreSummary {
  ok: boolean;
  processes: number;
  zombies: number;
  exitedEarly: number;
  lazyPages: number;
  pagesByFault: number;
  pagesByFill: number;
  zeroPages: number;
  existingPages: number;
  /** Remote restores: pages asked of the page server; more than the lazy pages means some were asked twice. */
  pagesRequested: number;
  faults: number;
  copies: number;
  faultServiceUs: { p50: number; p90: number; p99: number; max: number; count: number };
  /** The part of fault service spent before a worker started on the fault (the ring hop and what was ahead of it). */
  faultPickupUs: { p50: number; p90: number; p99: number; max: number; count: number };
  /** From the first hand-over to the last process complete. */
  timeToRestoredMs: number;
  /** From the first hand-over to the first fault served: how long the first faulting thread waited on start-up work. */
  handoverToFirstFaultMs?: number;
  /** From the daemon process's start to the first fault served (criu lazy-pages' log gives the same for CRIU). */
  startToFirstFaultMs?: number;
  /** From RESTORE_FINISHED to the last process complete. */
  fillAfterFinishedMs: number;
  workers: number;
  /** Fill pages copied by a worker on leases of processes another worker owns (fill-board.ts). */
  pagesFilledByHelpers: number;
  /** Fill leases taken, and how many of those were another worker's. */
  leases: number;
  leasesHelped: number;
  /** Each worker thread's nice value. */
  workerNice: number[];
  poisonedPages: number;
  /** The daemon's own CPU time (user + system, all threads) and peak RSS, for the benchmarks. */
  cpuMs: number;
  /** A stand-alone daemon's CPU from the first hand-over on (start-up apart). */
  cpuAfterHandoverMs?: number;
  maxRssKiB: number;
  /** Open fds and RSS when the daemon became ready and after it let go of everything: leak checks. */
  resources?: { fdsAtStart: number; fdsAtReady: number; fdsAtEnd: number; rssAtReadyKiB: number; rssAtEndKiB: number };
}

export function summarize(
  results: WorkerResult[],
  extra: Omit<RestoreSummary, keyof ProcessCounters | 'faultServiceUs' | 'faultPickupUs' | 'pagesByFault' | 'pagesByFill' | 'poisonedPages' | 'workers' | 'pagesFilledByHelpers' | 'leases' | 'leasesHelped' | 'workerNice' | 'existingPages' | 'pagesRequested' | 'cpuMs' | 'maxRssKiB'>,
): RestoreSummary {
  const total = newHistogram();
  const pickup = newHistogram();
  const t = newCounters();
  let poisoned = 0;
  let helped = 0;
  let leases = 0;
  let leasesHelped = 0;
  for (const r of results) {
    helped += r.filledForOthers;
    leases += r.leases;
    leasesHelped += r.leasesHelped;
    addPairs(total, r.latency);
    addPairs(pickup, r.pickup);
    addCounters(t, r.totals);
    poisoned += r.poisonedPages;
  }
  return {
    ...extra,
    pagesByFault: t.faultPages,
    pagesByFill: t.fillPages,
    zeroPages: t.zeroPages,
    existingPages: t.existingPages,
    pagesRequested: t.requestedPages,
    faults: t.faults,
    copies: t.copies,
    faultServiceUs: percentilesUs(total),
    faultPickupUs: percentilesUs(pickup),
    workers: results.length,
    pagesFilledByHelpers: helped,
    leases,
    leasesHelped,
    workerNice: results.map((r) => r.nice),
    poisonedPages: poisoned,
    ...ownUsage(),
  };
}

function ownUsage(): { cpuMs: number; maxRssKiB: number } {
  return { cpuMs: ownCpuMs(), maxRssKiB: process.resourceUsage().maxRSS };
}

/** This process's CPU (every thread, user and system), ms to one decimal. */
export function ownCpuMs(): number {
  const u = process.resourceUsage();
  return Math.round((u.userCPUTime + u.systemCPUTime) / 100) / 10;
}

export function formatSummary(s: RestoreSummary): string {
  const mib = (pages: number) => (pages * 4096 / 1048576).toFixed(1) + ' MiB';
  const rate = s.timeToRestoredMs > 0 ? ((s.pagesByFault + s.pagesByFill) * 4096 / 1e6 / (s.timeToRestoredMs / 1000)).toFixed(0) : '-';
  return [
    `faultline: restore ${s.ok ? 'complete' : 'FAILED'}`,
    `  processes        ${s.processes} restored, ${s.zombies} zombies, ${s.exitedEarly} exited before completion`,
    `  lazy memory      ${s.lazyPages} pages (${mib(s.lazyPages)})`,
    `  pages by fault   ${s.pagesByFault} (${s.faults} faults, fault-around)`,
    `  pages by fill    ${s.pagesByFill}`,
    `  zero pages       ${s.zeroPages} (holes)${s.existingPages ? `, ${s.existingPages} already present` : ''}`,
    `  UFFDIO_COPY      ${s.copies} ioctls`,
    `  fault service    p50 ${s.faultServiceUs.p50} µs, p90 ${s.faultServiceUs.p90} µs, p99 ${s.faultServiceUs.p99} µs, max ${s.faultServiceUs.max} µs (${s.faultServiceUs.count} served)`,
    `  of which pickup  p50 ${s.faultPickupUs.p50} µs, p99 ${s.faultPickupUs.p99} µs, max ${s.faultPickupUs.max} µs (read from the uffd → a worker starts on it)`,
    ...(s.handoverToFirstFaultMs !== undefined ? [`  first fault      served ${s.handoverToFirstFaultMs.toFixed(1)} ms after the first hand-over, ${s.startToFirstFaultMs?.toFixed(0)} ms after the daemon started`] : []),
    `  fully restored   ${s.timeToRestoredMs.toFixed(1)} ms after the first hand-over (${s.fillAfterFinishedMs.toFixed(1)} ms after RESTORE_FINISHED), ${rate} MB/s`,
    `  fill leases      ${s.leases} taken, ${s.leasesHelped} by a worker that does not own the process (${s.pagesFilledByHelpers} pages)`,
    `  daemon           ${s.workers} workers (nice ${[...new Set(s.workerNice)].join(', ')}), ${s.cpuMs} ms CPU${s.cpuAfterHandoverMs !== undefined ? ` (${s.cpuAfterHandoverMs} after the first hand-over)` : ''}, peak RSS ${(s.maxRssKiB / 1024).toFixed(0)} MiB`,
  ].join('\n');
}
