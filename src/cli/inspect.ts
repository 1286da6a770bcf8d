// `faultline inspect -D imgs`: what a checkpoint holds, for the parts that matter to a lazy restore
// (crit show's role, narrowed): processes, their VMAs, lazy / eager / parent / hole pages, the
// pre-dump parent chain and the page images' sizes. The counts come from the same readers the
// daemon uses, so "lazy pages" here is the daemon's summary's `lazy memory` for the same images.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PE_LAZY, PE_PARENT, PE_PRESENT, ProcessImages, readInventory, readPstree } from '../images';

import { PAGE_SIZE } from '../address';

export interface InspectedProcess {
  pid: number;
  ppid: number;
  threads: number;
  vmas: number;
  /** VMAs criu may restore lazily (vma_entry_can_be_lazy). */
  lazyVmas: number;
  /** Pages a lazy restore serves: PE_LAZY entries, cut at VMA boundaries. */
  lazyPages: number;
  /** Pages criu restore copies itself (PE_PRESENT, not lazy). */
  eagerPages: number;
  /** Pages whose data is in the parent pre-dump (PE_PARENT). */
  parentPages: number;
  /** Pages of lazy VMAs with no pagemap entry: they read as zeros (UFFDIO_ZEROPAGE on a fault). */
  holePages: number;
  pagemapEntries: number;
}

export interface InspectReport {
  imagesDir: string;
  imgVersion: number;
  /** The `parent` chain of pre-dump directories, nearest first. */
  parents: string[];
  pagesFiles: { file: string; bytes: number }[];
  processes: InspectedProcess[];
  totals: Omit<InspectedProcess, 'pid' | 'ppid'>;
}

function parentChain(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir; out.length < 64; ) {
    const link = path.join(d, 'parent');
    if (!fs.existsSync(link)) break;
    d = path.resolve(d, fs.readlinkSync(link));
    out.push(d);
  }
  return out;
}

export function inspect(imagesDir: string): InspectReport {
  const dir = path.resolve(imagesDir);
  const { imgVersion } = readInventory(dir);
  const pstree = readPstree(dir, { imgVersion });
  const parents = parentChain(dir);
  const pagesFiles = [dir, ...parents].flatMap((d) =>
    fs
      .readdirSync(d)
      .filter((f) => /^pages-\d+\.img$/.test(f))
      .sort()
      .map((f) => ({ file: path.relative(dir, path.join(d, f)) || f, bytes: fs.statSync(path.join(d, f)).size })),
  );
  // a restoring side's copy (mm and pagemap only): the data lives with a page server
  const remoteData = pagesFiles.length === 0;
  const processes = pstree.map((t): InspectedProcess => {
    const images = ProcessImages.open(dir, t.pid, {
      remoteData,
      openPagesFile: () => {
        throw new Error('inspect does not read page data');
      },
    });
    const lazyVmas = images.lazyVmas();
    const count = (flagged: (flags: number) => boolean) => images.pagemap.entries.filter((e) => flagged(e.flags)).reduce((n, e) => n + e.nrPages, 0);
    let covered = 0;
    for (const e of images.pagemap.entries) {
      const start = e.vaddr;
      const end = e.vaddr + e.nrPages * PAGE_SIZE;
      for (const v of lazyVmas) covered += Math.max(0, Math.min(end, v.end) - Math.max(start, v.start)) / PAGE_SIZE;
    }
    return {
      pid: t.pid,
      ppid: t.ppid,
      threads: t.threads.length,
      vmas: images.mm.vmas.length,
      lazyVmas: lazyVmas.length,
      lazyPages: images.lazyRanges().reduce((n, r) => n + (r.end - r.start) / PAGE_SIZE, 0),
      eagerPages: count((f) => (f & PE_PRESENT) !== 0 && (f & PE_LAZY) === 0),
      parentPages: count((f) => (f & PE_PARENT) !== 0),
      holePages: lazyVmas.reduce((n, v) => n + (v.end - v.start) / PAGE_SIZE, 0) - covered,
      pagemapEntries: images.pagemap.entries.length,
    };
  });
  const totals = { threads: 0, vmas: 0, lazyVmas: 0, lazyPages: 0, eagerPages: 0, parentPages: 0, holePages: 0, pagemapEntries: 0 };
  for (const p of processes) for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += p[k];
  return { imagesDir: dir, imgVersion, parents, pagesFiles, processes, totals };
}

function mib(pages: number): string {
  return `${((pages * PAGE_SIZE) / 2 ** 20).toFixed(1)} MiB`;
}

export function formatInspect(r: InspectReport): string {
  const cols: [string, (p: Omit<InspectedProcess, 'pid' | 'ppid'> & { pid?: number; ppid?: number }) => string][] = [
    ['pid', (p) => (p.pid === undefined ? 'total' : String(p.pid))],
    ['ppid', (p) => (p.ppid === undefined ? '' : String(p.ppid))],
    ['threads', (p) => String(p.threads)],
    ['vmas', (p) => String(p.vmas)],
    ['lazy vmas', (p) => String(p.lazyVmas)],
    ['lazy pages', (p) => `${p.lazyPages} (${mib(p.lazyPages)})`],
    ['eager pages', (p) => String(p.eagerPages)],
    ['in parent', (p) => String(p.parentPages)],
    ['holes', (p) => String(p.holePages)],
    ['pagemap entries', (p) => String(p.pagemapEntries)],
  ];
  const rows = [cols.map(([h]) => h), ...r.processes.map((p) => cols.map(([, f]) => f(p))), cols.map(([, f]) => f(r.totals))];
  const widths = cols.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) => '  ' + row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  const out = [
    `checkpoint ${r.imagesDir} (CRIU image version ${r.imgVersion}), ${r.processes.length} processes`,
    `parent chain: ${r.parents.length ? r.parents.join(' -> ') : 'none'}`,
    '',
    ...rows.map(line),
    '',
    r.pagesFiles.length
      ? `page images: ${r.pagesFiles.map((f) => `${f.file} ${(f.bytes / 2 ** 20).toFixed(1)} MiB`).join(', ')}`
      : 'page images: none here (the data is with a page server)',
  ];
  return out.join('\n');
}

export function inspectCommand(flags: { imagesDir: string; json?: boolean }): number {
  const r = inspect(flags.imagesDir);
  process.stdout.write((flags.json ? JSON.stringify(r) : formatInspect(r)) + '\n');
  return 0;
}
