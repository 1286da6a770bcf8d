export { MemoryMap, type LazyRange } from './memory-map';
export { MemoryMapError, MisalignedAddressError, InvalidRangeError, RangeOverlapError } from './errors';
