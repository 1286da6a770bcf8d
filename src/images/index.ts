export { ImageError } from './errors';
export {
  PE_PARENT,
  PE_LAZY,
  PE_PRESENT,
  MAP_PRIVATE,
  MAP_ANONYMOUS,
  MAP_SHARED,
  MAP_LOCKED,
  MAP_HUGETLB,
  MAP_GROWSDOWN,
  VMA_AREA_REGULAR,
  VMA_AREA_VDSO,
  VMA_AREA_VVAR,
  VMA_AREA_VSYSCALL,
  VMA_ANON_PRIVATE,
  readInventory,
  readPstree,
  readMm,
  readPagemap,
  vmaCanBeLazy,
} from './reader';
export type { Inventory, PstreeEntry, Vma, MmImage, Pagemap, PagemapEntry } from './reader';
export { ProcessImages } from './pages';
export type { ProcessImagesOptions, OpenPagesFile, AddressRange, PageData, PresentRun } from './pages';
export { writeImageSet } from './writer';
export type { ImageSetSpec, ProcessSpec, VmaSpec, EntrySpec, PageFiller } from './writer';
export { generateImageSet, expectedPage, MAX_ENTRY_PAGES } from './generate';
export type { GenerateSpec, RegionSpec } from './generate';
