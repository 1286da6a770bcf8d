import { hex } from '../address';
import { ImageError } from './errors';
import { decodeMessage, MessageKind, messageNames, RawMessage } from './proto';

export const MAGIC = {
  INVENTORY: 0x58313116,
  COMMON: 0x54564319,
  SERVICE: 0x55105940,
  PSTREE: 0x50273030,
  IDS: 0x54432030,
  MM: 0x57492820,
  PAGEMAP: 0x56084025,
  CORE: 0x55053847,
} as const;

const MAGIC_NAMES: Record<number, string> = {
  [MAGIC.INVENTORY]: 'INVENTORY',
  [MAGIC.COMMON]: 'common image header',
  [MAGIC.SERVICE]: 'service header',
  [MAGIC.PSTREE]: 'PSTREE',
  [MAGIC.IDS]: 'IDS',
  [MAGIC.MM]: 'MM',
  [MAGIC.PAGEMAP]: 'PAGEMAP',
  [MAGIC.CORE]: 'CORE',
};

function magicName(m: number): string {
  const n = MAGIC_NAMES[m];
  return n ? `${hex(m)} (${n})` : hex(m);
}

/** img_version values CRIU 4.2 accepts; they decide whether the common magic is present. */
export const IMG_VERSION_V1 = 1;
export const IMG_VERSION_V1_1 = 2;

export interface RawEntry {
  /** Byte offset of the entry's length word in the file. */
  offset: number;
  body: Buffer;
}

export interface FrameOptions {
  /** Display name for errors (defaults to the file's basename). */
  display?: string;
}

/**
 * Checks the magic words and splits the rest into u32-length-prefixed entries.
 * `imgVersion` null means "this is the inventory", which never carries the common magic.
 */
export function splitEntries(buf: Buffer, file: string, ownMagic: number, imgVersion: number | null, opts: FrameOptions = {}): RawEntry[] {
  const err = (detail: string) => new ImageError(file, detail, { display: opts.display });
  let pos = 0;
  const expectMagic = (want: number) => {
    if (buf.length < pos + 4) {
      throw err(`file ends at byte ${buf.length} before the ${magicName(want)} magic word at byte ${pos} (truncated or empty image)`);
    }
    const got = buf.readUInt32LE(pos);
    if (got !== want) {
      throw err(`wrong magic at byte ${pos}: expected ${magicName(want)}, found ${magicName(got)}`);
    }
    pos += 4;
  };
  if (imgVersion === null) {
    expectMagic(ownMagic);
  } else if (imgVersion === IMG_VERSION_V1_1) {
    expectMagic(MAGIC.COMMON);
    expectMagic(ownMagic);
  } else if (imgVersion === IMG_VERSION_V1) {
    expectMagic(ownMagic);
  } else {
    throw err(`cannot read image for inventory img_version ${imgVersion} (supported: 1, 2)`);
  }
  const out: RawEntry[] = [];
  while (pos < buf.length) {
    const start = pos;
    if (buf.length - pos < 4) {
      throw err(`entry ${out.length} at byte ${start}: truncated length word (${buf.length - pos} of 4 bytes before end of file at byte ${buf.length})`);
    }
    const len = buf.readUInt32LE(pos);
    pos += 4;
    if (buf.length - pos < len) {
      throw err(`entry ${out.length} at byte ${start}: truncated body: length word says ${len} bytes but only ${buf.length - pos} remain (file is ${buf.length} bytes)`);
    }
    out.push({ offset: start, body: buf.subarray(pos, pos + len) });
    pos += len;
  }
  return out;
}

export function decodeEntry(kind: MessageKind, entry: RawEntry, index: number, file: string, opts: FrameOptions = {}): RawMessage {
  try {
    return decodeMessage(kind, entry.body);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new ImageError(file, `entry ${index} at byte ${entry.offset}: cannot decode ${messageNames[kind]} (${why})`, {
      display: opts.display,
      cause: e,
    });
  }
}

/** Builds a whole image file: magic words then length-prefixed entries. */
export function frameEntries(ownMagic: number, imgVersion: number | null, bodies: Uint8Array[]): Buffer {
  const head: number[] = imgVersion === null || imgVersion === IMG_VERSION_V1 ? [ownMagic] : [MAGIC.COMMON, ownMagic];
  let size = head.length * 4;
  for (const b of bodies) size += 4 + b.length;
  const out = Buffer.alloc(size);
  let pos = 0;
  for (const m of head) pos = out.writeUInt32LE(m, pos);
  for (const b of bodies) {
    pos = out.writeUInt32LE(b.length, pos);
    out.set(b, pos);
    pos += b.length;
  }
  return out;
}
