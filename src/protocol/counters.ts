// What a worker counts per process, summed per session and per restore. Workers publish the sums in
// their results (worker-messages.ts); the engine adds them into the restore's summary.

export interface ProcessCounters {
  faults: number;
  faultPages: number;
  fillPages: number;
  zeroPages: number;
  /** Pages the kernel already had (EEXIST): counted as done. */
  existingPages: number;
  copies: number;
  /** Remote: pages asked of the page server (a page asked twice counts twice). */
  requestedPages: number;
}

export const newCounters = (): ProcessCounters => ({ faults: 0, faultPages: 0, fillPages: 0, zeroPages: 0, existingPages: 0, copies: 0, requestedPages: 0 });

/** into += from, counter by counter. */
export function addCounters(into: ProcessCounters, from: ProcessCounters): void {
  for (const k of Object.keys(into) as (keyof ProcessCounters)[]) into[k] += from[k];
}
