// Page contents from image files on local disk. Pages files are mmapped: UFFDIO_COPY reads straight
// from the page cache (DESIGN.md: as fast as anonymous memory when cached).
import { ProcessImages } from '../images';
import { native } from '../native';
import type { ProcessPages } from './page-source';

/** `remoteData`: page contents come from a page server; only mm and pagemaps are read here. */
export function openLocalProcess(imagesDir: string, pid: number, remoteData = false): ProcessPages {
  const images = ProcessImages.open(imagesDir, pid, { openPagesFile: (f) => native.mmapFile(f), remoteData });
  return { source: images, lazyRanges: images.lazyRanges(), lazyVmas: images.lazyVmas() };
}
