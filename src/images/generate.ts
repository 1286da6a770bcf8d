import { PE_LAZY, PE_PRESENT } from './reader';
import { EntrySpec, ProcessSpec, writeImageSet } from './writer';
import { PAGE_SIZE } from '../address';

export interface RegionSpec {
  name: string;
  /** Page-aligned dump-time address. */
  start: number;
  pages: number;
  /** dense: every page has data; sparse: every `step`th page (others are holes); zero: all-zero pages. */
  kind: 'dense' | 'sparse' | 'zero';
  step?: number;
  seed: number;
}

export interface GenerateSpec {
  processes: { pid: number; ppid: number; regions: RegionSpec[] }[];
  parent?: string;
}

/** CRIU cuts entries at page-pipe buffer size; 1024 pages = 4 MiB pipes. */
export const MAX_ENTRY_PAGES = 1024;

/** Page i of a region with `seed`, as the fixture's workload.c fill() writes it. */
export function expectedPage(vaddr: number, i: number, seed: number): Buffer {
  const p = Buffer.allocUnsafe(PAGE_SIZE);
  for (let b = 0; b < PAGE_SIZE; b++) p[b] = (i * 131 + b * 7 + seed) & 0xff;
  p.writeBigUInt64LE(BigInt(vaddr), 0);
  return p;
}

/*
 * (i*131) & 0xff depends only on i & 0xff, so 256 templates per seed cover every page;
 * generating is then a memcpy plus an 8-byte address patch per page.
 */
const templateCache = new Map<number, Buffer>();
function templates(seed: number): Buffer {
  const key = seed & 0xff;
  let t = templateCache.get(key);
  if (!t) {
    t = Buffer.allocUnsafe(256 * PAGE_SIZE);
    for (let k = 0; k < 256; k++) {
      const base = k * PAGE_SIZE;
      for (let b = 0; b < PAGE_SIZE; b++) t[base + b] = (k * 131 + b * 7 + key) & 0xff;
    }
    templateCache.set(key, t);
  }
  return t;
}

function fillPages(region: RegionSpec, firstPage: number, step: number): (dst: Buffer) => void {
  return (dst) => {
    if (region.kind === 'zero') {
      dst.fill(0);
      return;
    }
    const t = templates(region.seed);
    const n = dst.length / PAGE_SIZE;
    for (let j = 0; j < n; j++) {
      const i = firstPage + j * step;
      const off = j * PAGE_SIZE;
      t.copy(dst, off, (i & 0xff) * PAGE_SIZE, ((i & 0xff) + 1) * PAGE_SIZE);
      dst.writeBigUInt64LE(BigInt(region.start + i * PAGE_SIZE), off);
    }
  };
}

function regionEntries(r: RegionSpec): EntrySpec[] {
  const flags = PE_LAZY | PE_PRESENT;
  const out: EntrySpec[] = [];
  if (r.kind === 'sparse') {
    const step = r.step ?? 4;
    if (!(step >= 1)) throw new RangeError(`region ${r.name}: step must be >= 1`);
    // Present pages are not adjacent (unless step 1), so CRIU writes one entry per page.
    if (step === 1) return regionEntries({ ...r, kind: 'dense' });
    for (let i = 0; i < r.pages; i += step) {
      out.push({ vaddr: r.start + i * PAGE_SIZE, nrPages: 1, flags, data: fillPages(r, i, 1) });
    }
    return out;
  }
  for (let i = 0; i < r.pages; i += MAX_ENTRY_PAGES) {
    const n = Math.min(MAX_ENTRY_PAGES, r.pages - i);
    out.push({ vaddr: r.start + i * PAGE_SIZE, nrPages: n, flags, data: fillPages(r, i, 1) });
  }
  return out;
}

/** Writes a synthetic image set whose pages follow the real fixture's content formula. */
export function generateImageSet(dir: string, spec: GenerateSpec): void {
  const processes: ProcessSpec[] = spec.processes.map((p) => {
    const regions = [...p.regions].sort((a, b) => a.start - b.start);
    for (const r of regions) {
      if (r.start % PAGE_SIZE !== 0 || r.pages < 1) throw new RangeError(`region ${r.name}: start must be page aligned and pages >= 1`);
    }
    return {
      pid: p.pid,
      ppid: p.ppid,
      vmas: regions.map((r) => ({ start: r.start, end: r.start + r.pages * PAGE_SIZE })),
      entries: regions.flatMap(regionEntries),
    };
  });
  writeImageSet(dir, spec.parent === undefined ? { processes } : { processes, parent: spec.parent });
}
