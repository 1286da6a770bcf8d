import * as fs from 'fs';
import * as path from 'path';
import { firstAbove, hex, PAGE_SIZE } from '../address';
import { ImageError } from './errors';
import {
  displayName,
  MmImage,
  Pagemap,
  PagemapEntry,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT,
  readInventory,
  readMm,
  readPagemap,
  vmaCanBeLazy,
} from './reader';

export type OpenPagesFile = (file: string) => Buffer;

export interface ProcessImagesOptions {
  /** How a pages-<id>.img is mapped into memory; called at most once per file, on first use. */
  openPagesFile?: OpenPagesFile;
  /**
   * Accept entries whose data is not in any pages file (PE_LAZY without PE_PRESENT, as written
   * by `criu dump --lazy-pages`). Their data must come from a page server; locate() throws for
   * them. Off by default so a local restore never serves zeros for pages that had data.
   */
  allowMissingData?: boolean;
  /**
   * Page contents come from a page server (remote lazy restore): only mm and pagemaps are read
   * here, pages files are neither needed nor checked (CRIU reads them the same way in that mode).
   */
  remoteData?: boolean;
}

/** [start, end) in bytes of address space. */
export interface AddressRange {
  start: number;
  end: number;
}

/** Where the bytes of a run of pages live: `pages` contiguous pages at `offset` in `buf`. */
export interface PageData {
  buf: Buffer;
  offset: number;
  pages: number;
}

export interface PresentRun {
  vaddr: number;
  pages: number;
  lazy: boolean;
  /** Absolute path of the pages file holding the data. */
  file: string;
  offset: number;
}

const MAX_PARENT_DEPTH = 64;

/** One snapshot directory's pagemap + pages file; parents form the pre-dump chain. */
class Layer {
  private buf: Buffer | null = null;
  /** Sorted entry start addresses, for binary search without touching the entry objects. */
  private readonly starts: Float64Array;

  constructor(
    readonly dir: string,
    readonly pagemap: Pagemap,
    /** stat size of the pages file, -1 when it does not exist. */
    readonly pagesSize: number,
    readonly parent: Layer | null,
    private readonly rootDir: string,
    private readonly openPagesFile: OpenPagesFile,
  ) {
    this.starts = Float64Array.from(pagemap.entries, (e) => e.vaddr);
  }

  /** Index of the entry containing addr, or -1. */
  find(addr: number): number {
    const s = this.starts;
    const best = firstAbove(s.length, (i) => s[i]!, addr) - 1;
    if (best < 0) return -1;
    const e = this.pagemap.entries[best]!;
    return addr < e.vaddr + e.nrPages * PAGE_SIZE ? best : -1;
  }

  buffer(): Buffer {
    if (this.buf) return this.buf;
    const file = this.pagemap.pagesFile;
    const display = displayName(file, this.rootDir);
    let buf: Buffer;
    try {
      buf = this.openPagesFile(file);
    } catch (e) {
      throw new ImageError(file, `cannot open page data: ${(e as Error).message}`, { display, cause: e });
    }
    if (buf.length < this.pagemap.presentBytes) {
      // The file shrank (or the opener mapped less) after open-time validation.
      throw new ImageError(file, `holds ${buf.length} bytes but ${displayName(this.pagemap.file, this.rootDir)} needs ${this.pagemap.presentBytes}`, { display });
    }
    this.buf = buf;
    return buf;
  }

  locate(addr: number, maxPages: number): PageData | null {
    const i = this.find(addr);
    if (i < 0) return null;
    const entries = this.pagemap.entries;
    const e = entries[i]!;
    const inEntry = (addr - e.vaddr) / PAGE_SIZE;
    let pages = Math.min(maxPages, e.nrPages - inEntry);
    if (e.flags & PE_PRESENT) {
      const offset = e.offset + inEntry * PAGE_SIZE;
      // CRIU cuts contiguous memory into many entries (page-pipe buffer size); merging the
      // ones that are also contiguous in the file gives callers bigger copies.
      for (let j = i + 1; pages < maxPages && j < entries.length; j++) {
        const n = entries[j]!;
        if (!(n.flags & PE_PRESENT) || n.vaddr !== addr + pages * PAGE_SIZE || n.offset !== offset + pages * PAGE_SIZE) break;
        pages = Math.min(maxPages, pages + n.nrPages);
      }
      return { buf: this.buffer(), offset, pages };
    }
    if (e.flags & PE_PARENT) {
      // Open-time validation guarantees the parent has data for every PE_PARENT page.
      return this.parent!.locate(addr, pages);
    }
    throw new ImageError(this.pagemap.file, `entry ${e.index} (vaddr ${hex(e.vaddr)}): flags ${e.flags} say the data is not in the images (dumped with --lazy-pages?); it needs a page server`, {
      display: displayName(this.pagemap.file, this.rootDir),
    });
  }

  /** Data runs for [addr, addr+pages*4096) of a PE_PARENT entry, resolved through ancestors. */
  resolveRuns(addr: number, pages: number, lazy: boolean, out: PresentRun[], child: Pagemap): void {
    const end = addr + pages * PAGE_SIZE;
    while (addr < end) {
      const i = this.find(addr);
      const want = (end - addr) / PAGE_SIZE;
      if (i < 0) {
        throw new ImageError(child.file, `PE_PARENT pages at ${hex(addr)} are not in the parent's ${displayName(this.pagemap.file, this.rootDir)}`, {
          display: displayName(child.file, this.rootDir),
        });
      }
      const e = this.pagemap.entries[i]!;
      const inEntry = (addr - e.vaddr) / PAGE_SIZE;
      const n = Math.min(want, e.nrPages - inEntry);
      if (e.flags & PE_PRESENT) {
        pushRun(out, { vaddr: addr, pages: n, lazy, file: this.pagemap.pagesFile, offset: e.offset + inEntry * PAGE_SIZE });
      } else if (e.flags & PE_PARENT) {
        this.parent!.resolveRuns(addr, n, lazy, out, this.pagemap);
      } else {
        throw new ImageError(this.pagemap.file, `entry ${e.index} (vaddr ${hex(e.vaddr)}): a child snapshot refers to it with PE_PARENT but it has no data either (flags ${e.flags})`, {
          display: displayName(this.pagemap.file, this.rootDir),
        });
      }
      addr += n * PAGE_SIZE;
    }
  }
}

function pushRun(out: PresentRun[], r: PresentRun): void {
  const last = out[out.length - 1];
  if (
    last &&
    last.file === r.file &&
    last.lazy === r.lazy &&
    last.vaddr + last.pages * PAGE_SIZE === r.vaddr &&
    last.offset + last.pages * PAGE_SIZE === r.offset
  ) {
    last.pages += r.pages;
  } else out.push({ ...r });
}

function statSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return -1;
    throw e;
  }
}

/**
 * Memory images of one dumped process: its VMAs and where every page's data lives,
 * across the `parent` pre-dump chain. Everything that can be checked without reading page
 * data is checked in open(), so a restore does not fail half-way.
 */
export class ProcessImages {
  readonly dir: string;
  readonly pid: number;
  readonly mm: MmImage;
  private readonly top: Layer;
  private readonly lazyVmaList: AddressRange[];
  private readonly lazyRangeList: AddressRange[];

  private constructor(dir: string, pid: number, mm: MmImage, top: Layer, lazyVmas: AddressRange[], lazyRanges: AddressRange[]) {
    this.dir = dir;
    this.pid = pid;
    this.mm = mm;
    this.top = top;
    this.lazyVmaList = lazyVmas;
    this.lazyRangeList = lazyRanges;
  }

  static open(dir: string, pid: number, opts: ProcessImagesOptions = {}): ProcessImages {
    const root = path.resolve(dir);
    const openPagesFile = opts.openPagesFile ?? ((f: string) => fs.readFileSync(f));
    const imgVersion = readInventory(root).imgVersion;
    const mm = readMm(root, pid, { imgVersion });
    const top = openLayer(root, pid, imgVersion, root, openPagesFile, !!opts.allowMissingData || !!opts.remoteData, new Set(), 0, !!opts.remoteData);
    const lazyVmas = mm.vmas.filter(vmaCanBeLazy).map((v) => ({ start: v.start, end: v.end }));
    const lazyRanges = computeLazyRanges(mm, top.pagemap, lazyVmas, root);
    return new ProcessImages(root, pid, mm, top, lazyVmas, lazyRanges);
  }

  get pagemap(): Pagemap {
    return this.top.pagemap;
  }

  /** Lazy-eligible VMAs (criu vma_entry_can_be_lazy), sorted. */
  lazyVmas(): AddressRange[] {
    return this.lazyVmaList.map((r) => ({ ...r }));
  }

  /** PE_LAZY entries cut at VMA boundaries (one UFFDIO_COPY may not span two VMAs), sorted. */
  lazyRanges(): AddressRange[] {
    return this.lazyRangeList.map((r) => ({ ...r }));
  }

  /**
   * Where the data of the page at dump-time address imgAddr lives. `pages` (1..maxPages) is
   * how many following pages are contiguous in the same buffer. null = no data (a hole: the
   * page reads as zeros). O(log n) per layer of the parent chain.
   */
  locate(imgAddr: number, maxPages: number): PageData | null {
    if (imgAddr % PAGE_SIZE !== 0) throw new RangeError(`locate: address ${hex(imgAddr)} is not page aligned`);
    if (!(maxPages >= 1)) throw new RangeError(`locate: maxPages must be >= 1 (got ${maxPages})`);
    return this.top.locate(imgAddr, Math.floor(maxPages));
  }

  /** Every run of pages that has data, parent chain resolved, adjacent runs merged. */
  presentRuns(): PresentRun[] {
    const out: PresentRun[] = [];
    const pm = this.top.pagemap;
    for (const e of pm.entries) {
      const lazy = (e.flags & PE_LAZY) !== 0;
      if (e.flags & PE_PRESENT) {
        pushRun(out, { vaddr: e.vaddr, pages: e.nrPages, lazy, file: pm.pagesFile, offset: e.offset });
      } else if (e.flags & PE_PARENT) {
        this.top.parent!.resolveRuns(e.vaddr, e.nrPages, lazy, out, pm);
      }
    }
    return out;
  }
}

function openLayer(
  dir: string,
  pid: number,
  imgVersion: number,
  rootDir: string,
  openPagesFile: OpenPagesFile,
  allowMissingData: boolean,
  seen: Set<string>,
  depth: number,
  remoteData = false,
): Layer {
  const real = fs.realpathSync(dir);
  if (seen.has(real) || depth > MAX_PARENT_DEPTH) {
    const link = path.join(dir, 'parent');
    throw new ImageError(link, `parent chain loops back to ${real} (or is deeper than ${MAX_PARENT_DEPTH})`, { display: displayName(link, rootDir) });
  }
  seen.add(real);
  const pagemap = readPagemap(dir, pid, { imgVersion, rootDir });
  const pmName = displayName(pagemap.file, rootDir);
  const pagesName = displayName(pagemap.pagesFile, rootDir);
  const pagesSize = statSize(pagemap.pagesFile);
  let needsParent = false;
  for (const e of pagemap.entries) {
    if (e.flags & PE_PRESENT && !remoteData) {
      const endByte = e.offset + e.nrPages * PAGE_SIZE;
      if (pagesSize < 0) {
        throw new ImageError(pagemap.pagesFile, `file not found, but ${pmName} entry ${e.index} (vaddr ${hex(e.vaddr)}) has PE_PRESENT data that should be in it`, { display: pagesName });
      }
      if (endByte > pagesSize) {
        throw new ImageError(pagemap.file, `entry ${e.index} (vaddr ${hex(e.vaddr)}): data at bytes ${e.offset}..${endByte} lies past the end of ${pagesName} (${pagesSize} bytes)`, {
          display: pmName,
        });
      }
    } else if (e.flags & PE_PARENT) {
      needsParent = true;
    } else if (!allowMissingData) {
      throw new ImageError(pagemap.file, `entry ${e.index} (vaddr ${hex(e.vaddr)}): flags ${e.flags} mean the data is not in the images (dumped with --lazy-pages?); a local restore cannot serve it`, {
        display: pmName,
      });
    }
  }
  // A dangling or absent `parent` link only matters when something refers to the parent;
  // CRIU itself ignores a parent it cannot open until a PE_PARENT entry needs it.
  let parent: Layer | null = null;
  if (needsParent) {
    const link = path.join(dir, 'parent');
    const linkName = displayName(link, rootDir);
    let target: string;
    try {
      target = fs.readlinkSync(link);
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `cannot be read (${(e as Error).message})`;
      throw new ImageError(link, `${why}, but ${pmName} has PE_PARENT entries (data in a previous snapshot)`, { display: linkName, cause: e });
    }
    const parentDir = path.resolve(dir, target);
    let isDir = false;
    try {
      isDir = fs.statSync(parentDir).isDirectory();
    } catch {
      isDir = false;
    }
    if (!isDir) {
      throw new ImageError(link, `symlink target ${target} (${parentDir}) is not an existing directory; ${pmName} needs it for its PE_PARENT entries`, { display: linkName });
    }
    parent = openLayer(parentDir, pid, imgVersion, rootDir, openPagesFile, allowMissingData, seen, depth + 1, remoteData);
    // Every PE_PARENT page must resolve, checked now rather than on the fault path.
    const scratch: PresentRun[] = [];
    for (const e of pagemap.entries) {
      if (e.flags & PE_PARENT && !(e.flags & PE_PRESENT)) {
        parent.resolveRuns(e.vaddr, e.nrPages, false, scratch, pagemap);
        scratch.length = 0;
      }
    }
  }
  return new Layer(dir, pagemap, pagesSize, parent, rootDir, openPagesFile);
}

/*
 * A PE_LAZY page outside every lazy-eligible VMA is an error rather than silently skipped:
 * CRIU sets PE_LAZY only inside such VMAs, and `criu restore --lazy-pages` skips every PE_LAZY
 * entry, so such a page would be neither restored eagerly nor registered with userfaultfd —
 * its data would be lost without a trace.
 */
function computeLazyRanges(mm: MmImage, pm: Pagemap, lazyVmas: AddressRange[], rootDir: string): AddressRange[] {
  const out: AddressRange[] = [];
  let v = 0;
  for (const e of pm.entries as PagemapEntry[]) {
    if (!(e.flags & PE_LAZY)) continue;
    let start = e.vaddr;
    const end = e.vaddr + e.nrPages * PAGE_SIZE;
    while (v < lazyVmas.length && lazyVmas[v]!.end <= start) v++;
    while (start < end) {
      const vma = lazyVmas[v];
      if (!vma || vma.start > start) {
        const inAny = mm.vmas.find((x) => x.start <= start && start < x.end);
        const why = inAny
          ? `lies in VMA ${hex(inAny.start)}-${hex(inAny.end)} (flags ${hex(inAny.flags)}, status ${hex(inAny.status)}) which cannot be lazy`
          : `is outside every VMA of ${displayName(mm.file, rootDir)}`;
        throw new ImageError(pm.file, `entry ${e.index} (vaddr ${hex(e.vaddr)}): PE_LAZY page ${hex(start)} ${why}`, {
          display: displayName(pm.file, rootDir),
        });
      }
      const cut = Math.min(end, vma.end);
      const last = out[out.length - 1];
      // Merge with the previous range only within the same VMA.
      if (last && last.end === start && start !== vma.start) last.end = cut;
      else out.push({ start, end: cut });
      start = cut;
      if (cut === vma.end) v++;
    }
  }
  return out;
}
