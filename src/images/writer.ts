import * as fs from 'fs';
import * as path from 'path';
import { frameEntries, IMG_VERSION_V1_1, MAGIC } from './framing';
import { encodeMessage } from './proto';
import { MAP_ANONYMOUS, MAP_PRIVATE, PE_PRESENT, VMA_ANON_PRIVATE, VMA_AREA_REGULAR } from './reader';
import { PAGE_SIZE } from '../address';

/** Fills `dst` (exactly nrPages*4096 bytes) with an entry's page data. */
export type PageFiller = (dst: Buffer) => void;

export interface VmaSpec {
  start: number;
  end: number;
  /** Default MAP_PRIVATE|MAP_ANONYMOUS (0x22). */
  flags?: number;
  /** Default VMA_AREA_REGULAR|VMA_ANON_PRIVATE (0x201). */
  status?: number;
  /** Default PROT_READ|PROT_WRITE (3). */
  prot?: number;
}

export interface EntrySpec {
  vaddr: number;
  nrPages: number;
  flags: number;
  /** nrPages*4096 bytes (or a filler) when flags has PE_PRESENT; must be absent otherwise. */
  data?: Buffer | PageFiller;
}

export interface ProcessSpec {
  pid: number;
  ppid: number;
  pgid?: number;
  sid?: number;
  vmas: VmaSpec[];
  entries: EntrySpec[];
}

export interface ImageSetSpec {
  processes: ProcessSpec[];
  /** Target of a `parent` symlink (a previous snapshot), relative like CRIU's --prev-images-dir. */
  parent?: string;
}

const DEFAULT_VMA_FLAGS = MAP_PRIVATE | MAP_ANONYMOUS;
const DEFAULT_VMA_STATUS = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
const U32_MAX = 0xffffffff;

/**
 * Writes an image set in CRIU 4.2's format (img_version 2). Pagemap entries carry both the
 * 4.2 nr_pages field and compat_nr_pages so that older CRIUs and crit read the same counts.
 * pages-<id>.img ids are 1..n in process order, one per process, like a CRIU dump.
 */
export function writeImageSet(dir: string, spec: ImageSetSpec): void {
  fs.mkdirSync(dir, { recursive: true });
  const v = IMG_VERSION_V1_1;
  const put = (name: string, data: Buffer) => fs.writeFileSync(path.join(dir, name), data);

  put('inventory.img', frameEntries(MAGIC.INVENTORY, null, [encodeMessage('inventory', { img_version: v, fdinfo_per_id: true, ns_per_id: true })]));

  const root = spec.processes.find((p) => p.ppid === 0) ?? spec.processes[0];
  const rootPid = root ? root.pid : 0;
  put(
    'pstree.img',
    frameEntries(
      MAGIC.PSTREE,
      v,
      spec.processes.map((p) => encodeMessage('pstree', { pid: p.pid, ppid: p.ppid, pgid: p.pgid ?? rootPid, sid: p.sid ?? rootPid, threads: [p.pid] })),
    ),
  );

  spec.processes.forEach((p, i) => {
    const pagesId = i + 1;
    const vmas = p.vmas.map((m) => ({
      start: m.start,
      end: m.end,
      pgoff: 0,
      shmid: 0,
      prot: m.prot ?? 3,
      flags: m.flags ?? DEFAULT_VMA_FLAGS,
      status: m.status ?? DEFAULT_VMA_STATUS,
      fd: -1,
    }));
    const zero = { mm_start_code: 0, mm_end_code: 0, mm_start_data: 0, mm_end_data: 0, mm_start_stack: 0, mm_start_brk: 0, mm_brk: 0, mm_arg_start: 0, mm_arg_end: 0, mm_env_start: 0, mm_env_end: 0 };
    put(`mm-${p.pid}.img`, frameEntries(MAGIC.MM, v, [encodeMessage('mm', { ...zero, exe_file_id: 0, vmas })]));

    const bodies: Uint8Array[] = [encodeMessage('pagemapHead', { pages_id: pagesId })];
    for (const e of p.entries) {
      if (e.nrPages < 1 || e.nrPages > U32_MAX) throw new RangeError(`pid ${p.pid} entry ${e.vaddr.toString(16)}: nrPages ${e.nrPages} out of range`);
      bodies.push(encodeMessage('pagemapEntry', { vaddr: e.vaddr, compat_nr_pages: e.nrPages, flags: e.flags, nr_pages: e.nrPages }));
    }
    put(`pagemap-${p.pid}.img`, frameEntries(MAGIC.PAGEMAP, v, bodies));

    const fd = fs.openSync(path.join(dir, `pages-${pagesId}.img`), 'w');
    try {
      let scratch: Buffer | null = null;
      for (const e of p.entries) {
        const present = (e.flags & PE_PRESENT) !== 0;
        const want = e.nrPages * PAGE_SIZE;
        if (!present) {
          if (e.data !== undefined) throw new Error(`pid ${p.pid} entry 0x${e.vaddr.toString(16)}: data given but flags ${e.flags} lack PE_PRESENT`);
          continue;
        }
        let chunk: Buffer;
        if (typeof e.data === 'function') {
          if (!scratch || scratch.length < want) scratch = Buffer.allocUnsafe(want);
          chunk = scratch.subarray(0, want);
          e.data(chunk);
        } else if (e.data) {
          chunk = e.data;
        } else {
          throw new Error(`pid ${p.pid} entry 0x${e.vaddr.toString(16)}: PE_PRESENT needs ${want} bytes of data`);
        }
        if (chunk.length !== want) throw new Error(`pid ${p.pid} entry 0x${e.vaddr.toString(16)}: data is ${chunk.length} bytes, expected ${want}`);
        let off = 0;
        while (off < chunk.length) off += fs.writeSync(fd, chunk, off, chunk.length - off);
      }
    } finally {
      fs.closeSync(fd);
    }
  });

  if (spec.parent !== undefined) {
    const link = path.join(dir, 'parent');
    fs.rmSync(link, { force: true });
    fs.symlinkSync(spec.parent, link);
  }
}
