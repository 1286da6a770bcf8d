// Page contents from image files on local disk. Pages files are mmapped: UFFDIO_COPY reads straight
// from the page cache (DESIGN.md: as fast as anonymous memory when cached).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProcessImages } from '../images';
import { native } from '../native';
import type { ProcessPages } from './page-source';

/** `remoteData`: page contents come from a page server; only mm and pagemaps are read here. */
export function openLocalProcess(imagesDir: string, pid: number, remoteData = false): ProcessPages {
  const images = ProcessImages.open(imagesDir, pid, { openPagesFile: (f) => native.mmapFile(f), remoteData });
  return { source: images, lazyRanges: images.lazyRanges(), lazyVmas: images.lazyVmas() };
}

/**
 * Parsed images shared by the restores an engine serves (a worker's cache): the same checkpoint
 * restored again costs no parsing. Keyed by what the parse read, so a dump rewritten in place (or
 * a changed parent) is parsed afresh, never served stale: mm, pagemap and inventory of the dir and
 * of every parent in its chain, by inode, size, mtime and ctime. The pages files' mappings are
 * shared by the native layer, keyed the same way.
 */
const CACHED = 512;
const cache = new Map<string, { stamp: string; pages: ProcessPages }>();
let parsed = 0;

/** How many processes' images this thread has parsed (cache misses) so far. */
export function processesParsed(): number {
  return parsed;
}

export function openCachedProcess(imagesDir: string, pid: number, remoteData = false): ProcessPages {
  const key = `${path.resolve(imagesDir)}\0${pid}\0${remoteData ? 1 : 0}`;
  const stamp = stampOf(imagesDir, pid);
  const hit = cache.get(key);
  if (hit && hit.stamp === stamp) {
    // most recently used last
    cache.delete(key);
    cache.set(key, hit);
    return hit.pages;
  }
  const pages = openLocalProcess(imagesDir, pid, remoteData);
  parsed++;
  cache.delete(key);
  cache.set(key, { stamp, pages });
  if (cache.size > CACHED) cache.delete(cache.keys().next().value!);
  return pages;
}

function stampOf(imagesDir: string, pid: number): string {
  const parts: string[] = [];
  let dir = imagesDir;
  for (let depth = 0; depth < 32; depth++) {
    for (const f of [`mm-${pid}.img`, `pagemap-${pid}.img`, 'inventory.img']) {
      try {
        const st = fs.statSync(path.join(dir, f));
        parts.push(`${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`);
      } catch {
        parts.push('-');
      }
    }
    const parent = path.join(dir, 'parent');
    let next: string;
    try {
      next = path.resolve(dir, fs.readlinkSync(parent));
    } catch {
      break;
    }
    dir = next;
  }
  return parts.join('|');
}
