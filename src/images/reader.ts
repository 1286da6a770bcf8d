import * as fs from 'fs';
import * as path from 'path';
import { PAGE_SIZE, hex } from '../address';
import { ImageError } from './errors';
import { decodeEntry, MAGIC, splitEntries, IMG_VERSION_V1, IMG_VERSION_V1_1 } from './framing';
import { RawMessage } from './proto';


/** PagemapEntry.flags bits (criu/include/pagemap.h). */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

/** Linux MAP_* bits as stored in VmaEntry.flags (x86_64 values). */
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_GROWSDOWN = 0x100;
export const MAP_LOCKED = 0x2000;
export const MAP_HUGETLB = 0x40000;

/** VmaEntry.status bits (criu/include/image.h). */
export const VMA_AREA_REGULAR = 1 << 0;
export const VMA_AREA_STACK = 1 << 1;
export const VMA_AREA_VSYSCALL = 1 << 2;
export const VMA_AREA_VDSO = 1 << 3;
export const VMA_AREA_HEAP = 1 << 5;
export const VMA_FILE_PRIVATE = 1 << 6;
export const VMA_FILE_SHARED = 1 << 7;
export const VMA_ANON_SHARED = 1 << 8;
export const VMA_ANON_PRIVATE = 1 << 9;
export const VMA_AREA_VVAR = 1 << 12;
export const VMA_AREA_MEMFD = 1 << 14;

export interface Inventory {
  imgVersion: number;
  fdinfoPerId: boolean;
  nsPerId?: boolean;
  rootCgSet?: number;
  lsmtype?: number;
  dumpUptime?: number;
  preDumpMode?: number;
  tcpClose?: boolean;
  networkLockMethod?: number;
  dumpCriuRunId?: string;
  allowUprobes?: boolean;
}

export interface PstreeEntry {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  threads: number[];
}

export interface Vma {
  start: number;
  end: number;
  pgoff: number;
  shmid: number;
  prot: number;
  flags: number;
  status: number;
  fd: number;
  madv?: number;
  fdflags?: number;
}

export interface MmImage {
  file: string;
  vmas: Vma[];
  exeFileId: number;
  dumpable?: number;
  thpDisabled?: boolean;
}

export interface PagemapEntry {
  /** Index among the pagemap's entries (0 = first entry after the head), for error messages. */
  index: number;
  vaddr: number;
  nrPages: number;
  /** PE_* bits after CRIU 4.2's reader rules (in_parent folded in, absent = PE_PRESENT). */
  flags: number;
  /** Byte offset in the pages file if PE_PRESENT, else -1. */
  offset: number;
}

export interface Pagemap {
  file: string;
  pagesId: number;
  /** Absolute path of pages-<pagesId>.img next to the pagemap. */
  pagesFile: string;
  entries: PagemapEntry[];
  /** Bytes the PE_PRESENT entries need in the pages file. */
  presentBytes: number;
}

export interface ReadOptions {
  /** img_version from the inventory; read from inventory.img when omitted. */
  imgVersion?: number;
  /** Errors show file paths relative to this directory (useful inside a parent chain). */
  rootDir?: string;
}

export function displayName(file: string, rootDir?: string): string {
  if (rootDir === undefined) return path.basename(file);
  const rel = path.relative(rootDir, file);
  return rel === '' ? path.basename(file) : rel;
}

function readImageFile(file: string, display: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new ImageError(file, `${what} not found in ${path.dirname(path.resolve(file))}`, { display, cause: e });
    }
    throw new ImageError(file, `cannot read ${what}: ${(e as Error).message}`, { display, cause: e });
  }
}

/**
 * Converts a decoded 64-bit field (decimal string, or number when protobufjs runs without
 * long.js) to a JS number. Addresses above 2^53 cannot be represented exactly; silently
 * rounding them would serve the wrong page, so they are rejected.
 */
function safeNum(v: unknown, file: string, display: string, field: string, ctx: string): number {
  let n: number;
  if (typeof v === 'number') {
    n = v;
  } else if (typeof v === 'string') {
    const big = BigInt(v);
    if (big > BigInt(Number.MAX_SAFE_INTEGER) || big < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new ImageError(file, `${ctx}${field} = ${big >= 0n ? '0x' + big.toString(16) : big.toString()} is beyond 2^53, which faultline cannot represent exactly`, { display, field });
    }
    n = Number(big);
  } else {
    throw new ImageError(file, `${ctx}${field} is missing`, { display, field });
  }
  if (!Number.isSafeInteger(n)) {
    throw new ImageError(file, `${ctx}${field} = ${n} is beyond 2^53, which faultline cannot represent exactly`, { display, field });
  }
  return n;
}

function optNum(m: RawMessage, key: string, file: string, display: string, ctx: string): number | undefined {
  return m[key] === undefined ? undefined : safeNum(m[key], file, display, key, ctx);
}

export function readInventory(dir: string, opts: Pick<ReadOptions, 'rootDir'> = {}): Inventory {
  const file = path.join(dir, 'inventory.img');
  const display = displayName(file, opts.rootDir);
  const raw = splitEntries(readImageFile(file, display, 'inventory image'), file, MAGIC.INVENTORY, null, { display });
  if (raw.length !== 1) {
    throw new ImageError(file, `expected exactly 1 InventoryEntry, found ${raw.length}`, { display });
  }
  const m = decodeEntry('inventory', raw[0]!, 0, file, { display });
  const imgVersion = m.img_version as number;
  if (imgVersion !== IMG_VERSION_V1 && imgVersion !== IMG_VERSION_V1_1) {
    throw new ImageError(file, `unsupported img_version ${imgVersion} (CRIU images are version 1 or 2); was this written by a newer CRIU?`, {
      display,
      field: 'img_version',
    });
  }
  if (m.fdinfo_per_id !== true) {
    // CRIU's lazy-pages daemon refuses these too ("Too old image").
    throw new ImageError(file, 'fdinfo_per_id is not set: image set is too old (pre-1.x CRIU) for lazy restore', {
      display,
      field: 'fdinfo_per_id',
    });
  }
  const inv: Inventory = { imgVersion, fdinfoPerId: true };
  const ctx = 'InventoryEntry.';
  if (m.ns_per_id !== undefined) inv.nsPerId = m.ns_per_id as boolean;
  if (m.root_cg_set !== undefined) inv.rootCgSet = m.root_cg_set as number;
  if (m.lsmtype !== undefined) inv.lsmtype = m.lsmtype as number;
  const up = optNum(m, 'dump_uptime', file, display, ctx);
  if (up !== undefined) inv.dumpUptime = up;
  if (m.pre_dump_mode !== undefined) inv.preDumpMode = m.pre_dump_mode as number;
  if (m.tcp_close !== undefined) inv.tcpClose = m.tcp_close as boolean;
  if (m.network_lock_method !== undefined) inv.networkLockMethod = m.network_lock_method as number;
  if (m.dump_criu_run_id !== undefined) inv.dumpCriuRunId = m.dump_criu_run_id as string;
  if (m.allow_uprobes !== undefined) inv.allowUprobes = m.allow_uprobes as boolean;
  return inv;
}

function versionOf(dir: string, opts: ReadOptions): number {
  return opts.imgVersion ?? readInventory(dir, opts).imgVersion;
}

export function readPstree(dir: string, opts: ReadOptions = {}): PstreeEntry[] {
  const imgVersion = versionOf(dir, opts);
  const file = path.join(dir, 'pstree.img');
  const display = displayName(file, opts.rootDir);
  const raw = splitEntries(readImageFile(file, display, 'process tree image'), file, MAGIC.PSTREE, imgVersion, { display });
  if (raw.length === 0) throw new ImageError(file, 'no PstreeEntry records (empty process tree)', { display });
  const seen = new Set<number>();
  return raw.map((r, i) => {
    const m = decodeEntry('pstree', r, i, file, { display });
    const e: PstreeEntry = {
      pid: m.pid as number,
      ppid: m.ppid as number,
      pgid: m.pgid as number,
      sid: m.sid as number,
      threads: ((m.threads as number[] | undefined) ?? []).slice(),
    };
    if (seen.has(e.pid)) throw new ImageError(file, `entry ${i}: pid ${e.pid} appears twice`, { display, field: 'pid' });
    seen.add(e.pid);
    return e;
  });
}

export function readMm(dir: string, pid: number, opts: ReadOptions = {}): MmImage {
  const imgVersion = versionOf(dir, opts);
  const file = path.join(dir, `mm-${pid}.img`);
  const display = displayName(file, opts.rootDir);
  const raw = splitEntries(readImageFile(file, display, `memory map image of pid ${pid}`), file, MAGIC.MM, imgVersion, { display });
  if (raw.length !== 1) throw new ImageError(file, `expected exactly 1 MmEntry, found ${raw.length}`, { display });
  const m = decodeEntry('mm', raw[0]!, 0, file, { display });
  const rawVmas = (m.vmas as RawMessage[] | undefined) ?? [];
  // The x86_64 vsyscall page sits at 0xffffffffff600000, beyond 2^53. The kernel provides it,
  // CRIU never restores it and it has no pagemap entries, so it is dropped rather than rejected.
  const vmas = rawVmas.flatMap((v, i): Vma[] => ((v.status as number) & VMA_AREA_VSYSCALL ? [] : [toVma(v, i)]));
  function toVma(v: RawMessage, i: number): Vma {
    const ctx = `vmas[${i}].`;
    const vma: Vma = {
      start: safeNum(v.start, file, display, 'start', ctx),
      end: safeNum(v.end, file, display, 'end', ctx),
      pgoff: safeNum(v.pgoff, file, display, 'pgoff', ctx),
      shmid: safeNum(v.shmid, file, display, 'shmid', ctx),
      prot: v.prot as number,
      flags: v.flags as number,
      status: (v.status as number) >>> 0,
      fd: safeNum(v.fd, file, display, 'fd', ctx),
    };
    const madv = optNum(v, 'madv', file, display, ctx);
    if (madv !== undefined) vma.madv = madv;
    if (v.fdflags !== undefined) vma.fdflags = v.fdflags as number;
    if (vma.start % PAGE_SIZE !== 0 || vma.end % PAGE_SIZE !== 0 || vma.end <= vma.start) {
      throw new ImageError(file, `vmas[${i}] ${hex(vma.start)}-${hex(vma.end)} is empty or not page aligned`, { display, field: `vmas[${i}]` });
    }
    return vma;
  }
  for (let i = 1; i < vmas.length; i++) {
    if (vmas[i]!.start < vmas[i - 1]!.end) {
      throw new ImageError(file, `vmas[${i}] ${hex(vmas[i]!.start)}-${hex(vmas[i]!.end)} overlaps or precedes vmas[${i - 1}] ${hex(vmas[i - 1]!.start)}-${hex(vmas[i - 1]!.end)} (VMAs must be sorted)`, {
        display,
        field: `vmas[${i}]`,
      });
    }
  }
  const mm: MmImage = { file, vmas, exeFileId: m.exe_file_id as number };
  if (m.dumpable !== undefined) mm.dumpable = m.dumpable as number;
  if (m.thp_disabled !== undefined) mm.thpDisabled = m.thp_disabled as boolean;
  return mm;
}

/**
 * Reads pagemap-<pid>.img with CRIU 4.2's rules, checks entries are page aligned, non-empty,
 * sorted and non-overlapping, and assigns each PE_PRESENT entry its offset in the pages file.
 */
export function readPagemap(dir: string, pid: number, opts: ReadOptions = {}): Pagemap {
  const imgVersion = versionOf(dir, opts);
  const file = path.join(dir, `pagemap-${pid}.img`);
  const display = displayName(file, opts.rootDir);
  const raw = splitEntries(readImageFile(file, display, `page map image of pid ${pid}`), file, MAGIC.PAGEMAP, imgVersion, { display });
  if (raw.length === 0) throw new ImageError(file, 'missing PagemapHead (file has no entries)', { display });
  const head = decodeEntry('pagemapHead', raw[0]!, 0, file, { display });
  const pagesId = head.pages_id as number;
  const entries: PagemapEntry[] = [];
  let offset = 0;
  let prevEnd = -1;
  for (let i = 1; i < raw.length; i++) {
    const index = i - 1;
    const m = decodeEntry('pagemapEntry', raw[i]!, i, file, { display });
    // Messages are built only on error: this loop runs once per entry, thousands per process.
    const vaddr = typeof m.vaddr === 'number' && Number.isSafeInteger(m.vaddr) ? m.vaddr : safeNum(m.vaddr, file, display, 'vaddr', `entry ${index}: `);
    const nrPages =
      m.nr_pages === undefined
        ? (m.compat_nr_pages as number)
        : typeof m.nr_pages === 'number' && Number.isSafeInteger(m.nr_pages)
          ? m.nr_pages
          : safeNum(m.nr_pages, file, display, 'nr_pages', `entry ${index}: `);
    let flags: number;
    if (m.in_parent === true) flags = ((m.flags as number | undefined) ?? 0) | PE_PARENT;
    else flags = m.flags !== undefined ? (m.flags as number) : PE_PRESENT;
    const where = () => `entry ${index} (vaddr ${hex(vaddr)})`;
    if (vaddr % PAGE_SIZE !== 0) throw new ImageError(file, `${where()}: vaddr is not page aligned`, { display, field: 'vaddr' });
    if (nrPages === 0) throw new ImageError(file, `${where()}: page count is 0 (neither nr_pages nor compat_nr_pages set)`, { display, field: 'nr_pages' });
    const end = vaddr + nrPages * PAGE_SIZE;
    if (!Number.isSafeInteger(end)) throw new ImageError(file, `${where()}: ${nrPages} pages run past 2^53`, { display, field: 'nr_pages' });
    if (vaddr < prevEnd) {
      throw new ImageError(file, `${where()}: overlaps or precedes the previous entry ending at ${hex(prevEnd)} (entries must be sorted)`, { display, field: 'vaddr' });
    }
    if ((flags & PE_PRESENT) && (flags & PE_PARENT)) {
      throw new ImageError(file, `${where()}: flags ${flags} have both PE_PRESENT and PE_PARENT`, { display, field: 'flags' });
    }
    prevEnd = end;
    const present = (flags & PE_PRESENT) !== 0;
    entries.push({ index, vaddr, nrPages, flags, offset: present ? offset : -1 });
    if (present) offset += nrPages * PAGE_SIZE;
  }
  return { file, pagesId, pagesFile: path.resolve(dir, `pages-${pagesId}.img`), entries, presentBytes: offset };
}

/** criu/include/vma.h vma_entry_can_be_lazy(). */
export function vmaCanBeLazy(vma: Pick<Vma, 'flags' | 'status'>): boolean {
  return (
    (vma.flags & MAP_ANONYMOUS) !== 0 &&
    (vma.flags & MAP_PRIVATE) !== 0 &&
    (vma.flags & MAP_LOCKED) === 0 &&
    (vma.flags & MAP_HUGETLB) === 0 &&
    (vma.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL)) === 0
  );
}
