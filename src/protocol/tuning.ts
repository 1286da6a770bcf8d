// Copy sizes. DESIGN.md facts: 16-page copies already reach 98 % of the 512-page UFFDIO_COPY rate,
// and copying 16 pages per fault instead of 1 raised the ring design from 82k to 467k pages/s. A
// fault's copy is capped at 256 pages (≈ 0.25 ms at 1 GB/s); a background lease may be larger, as it
// is copied in fillSlice-page ioctls and a waiting fault cuts in between them. Re-tune with
// `npm run bench`.
export interface Tuning {
  /** Pages copied for an isolated (non-sequential) fault, and the floor when shrinking. */
  faultAroundMin: number;
  /** Cap for fault-around; reached by doubling while faults arrive in address order. */
  faultAroundMax: number;
  /** Pages zero-filled around a fault in a hole (never past the next lazy range or the VMA end). */
  zeroAroundMax: number;
  /** First background chunk of a process; doubles per chunk up to the cap. */
  fillChunkMin: number;
  /** The cap for a local restore: one fill lease (a copy is still cut in 16-page slices). */
  fillChunkMax: number;
  /**
   * The cap for a restore from a page server: one GET request, whose reply must fit the worker's
   * page arena with room for fault replies beside it (see MAX_COPY_PAGES).
   */
  remoteFillChunkMax: number;
  /** Pages per UFFDIO_COPY within a background chunk: between slices a waiting fault may cut in. */
  fillSlice: number;
  /**
   * The background fill's share of a worker's time while faults keep arriving (0 < share < 1).
   * Lower keeps faults short and starves the fill of a process that faults at random; higher the
   * reverse (the measurements behind the default: docs/DESIGN.md, "Copy policy").
   */
  fillShare: number;
}

/**
 * The largest --fault-around and --fill-chunk: 8 MiB. A remote reply of that many pages must fit the
 * worker's page arena (8192 pages, a ring): past half of it, a reply that has to wrap waits for the
 * whole arena to drain, and one larger than the arena never fits.
 */
export const MAX_COPY_PAGES = 2048;

export const DEFAULT_TUNING: Tuning = {
  faultAroundMin: 16,
  faultAroundMax: 256,
  zeroAroundMax: 16,
  fillChunkMin: 16,
  // Each lease costs the owner and a helper a hand-over (offer, take, settle, a wake): 256-page
  // leases made a 1 GiB idle drain spend ≈ 1/4 of its time there (DESIGN.md, "Fill leases of 8 MiB").
  fillChunkMax: 2048,
  remoteFillChunkMax: 256,
  fillSlice: 16,
  fillShare: 0.5,
};

/**
 * The copy sizes `--fault-around` and `--fill-chunk` set (a stand-alone daemon's flags, or an engine
 * client's request), capped at MAX_COPY_PAGES. `--fill-chunk` caps local and page-server leases alike.
 */
export function tuningFromFlags(faultAround?: number, fillChunk?: number): Partial<Tuning> {
  const around = faultAround ? Math.min(faultAround, MAX_COPY_PAGES) : 0;
  const chunk = fillChunk ? Math.min(fillChunk, MAX_COPY_PAGES) : 0;
  return {
    ...(around ? { faultAroundMin: Math.min(16, around), faultAroundMax: around } : {}),
    ...(chunk ? { fillChunkMax: chunk, remoteFillChunkMax: chunk } : {}),
  };
}
