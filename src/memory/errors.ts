import { hex } from '../address';

/** Base class so callers can catch every MemoryMap failure with one instanceof test. */
export class MemoryMapError extends Error {
  override name = 'MemoryMapError';
}

/** An address, length or image offset that is not a multiple of PAGE_SIZE, negative or beyond 2^53. */
export class MisalignedAddressError extends MemoryMapError {
  override name = 'MisalignedAddressError';
  constructor(readonly what: string, readonly value: number) {
    super(`${what} ${Number.isFinite(value) ? hex(value) : String(value)} is not a non-negative page-aligned safe integer`);
  }
}

/** A range whose end is not after its start, or bounds given in the wrong order. */
export class InvalidRangeError extends MemoryMapError {
  override name = 'InvalidRangeError';
  constructor(readonly start: number, readonly end: number, reason: string) {
    super(`invalid range [${hex(start)}, ${hex(end)}): ${reason}`);
  }
}

/** A range that would overlap one already in the map (or precede its predecessor when building). */
export class RangeOverlapError extends MemoryMapError {
  override name = 'RangeOverlapError';
  constructor(readonly start: number, readonly end: number, readonly otherStart: number, readonly otherEnd: number) {
    super(`range [${hex(start)}, ${hex(end)}) overlaps or is out of order with [${hex(otherStart)}, ${hex(otherEnd)})`);
  }
}
