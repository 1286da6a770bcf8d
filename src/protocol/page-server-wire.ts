// CRIU page-server wire format (criu/page-xfer.c), as spoken between `criu lazy-pages --page-server`
// and a lazy page source. See docs/criu-lazy-pages.md §4. Everything is little-endian
// (CRIU writes host-order C structs), not network order.

import { PAGE_SIZE, hex } from '../address';
export const HEADER_SIZE = 32;

export const PS_IOV_ADD = 1;
export const PS_IOV_HOLE = 2;
export const PS_IOV_OPEN = 3;
export const PS_IOV_OPEN2 = 4;
export const PS_IOV_PARENT = 5;
export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;

export const PS_CMD_BITS = 16;
export const PS_CMD_MASK = (1 << PS_CMD_BITS) - 1;

/** PE_PRESENT in the flags half of cmd: the reply header carries data. */
export const PE_PRESENT = 4;
/** cmd of every GET reply: ADD_F with PE_PRESENT. */
export const GET_REPLY_CMD = (PE_PRESENT << PS_CMD_BITS) | PS_IOV_ADD_F; // 0x00040006

/** Size of the int32 status a CLOSE / FORCE_CLOSE is answered with. */
export const CLOSE_REPLY_SIZE = 4;

/**
 * Largest nr_pages accepted in a GET (4 GiB). CRIU asks for at most a few MiB; anything near the
 * u64 range is a corrupt or hostile stream, and rejecting it early keeps arithmetic in safe integers.
 */
export const MAX_REQUEST_PAGES = 1 << 20;

const COMMAND_NAMES: Record<number, string> = {
  [PS_IOV_ADD]: 'ADD',
  [PS_IOV_HOLE]: 'HOLE',
  [PS_IOV_OPEN]: 'OPEN',
  [PS_IOV_OPEN2]: 'OPEN2',
  [PS_IOV_PARENT]: 'PARENT',
  [PS_IOV_ADD_F]: 'ADD_F',
  [PS_IOV_GET]: 'GET',
  [PS_IOV_CLOSE]: 'CLOSE',
  [PS_IOV_FORCE_CLOSE]: 'FORCE_CLOSE',
};

export function commandName(cmd: number): string {
  const low = cmd & PS_CMD_MASK;
  return COMMAND_NAMES[low] ?? `0x${low.toString(16)}`;
}

export interface Header {
  /** Low 16 bits of the cmd word. */
  cmd: number;
  /** High 16 bits of the cmd word (PE_* for ADD_F). */
  flags: number;
  nrPages: number;
  vaddr: number;
  dstId: number;
}

/** A malformed message from a peer. `message` is one line naming the peer and the field. */
export class PageServerProtocolError extends Error {
  override name = 'PageServerProtocolError';
  constructor(
    readonly peer: string,
    readonly field: string,
    detail: string,
  ) {
    super(`page-server peer ${peer}: ${detail}`.replace(/\s*\n\s*/g, '; '));
  }
}

/** "a.b.c.d:port" or "[v6]:port", the way the logs name a connection. */
export function formatPeer(address: string | undefined, port: number | undefined): string {
  const a = address ?? '?';
  return `${a.includes(':') ? `[${a}]` : a}:${port ?? '?'}`;
}

/**
 * A TLS record header (handshake 0x16 or alert 0x15, then major version 3) where a page-server
 * command or reply should start: the other side speaks TLS and this one does not. No command or
 * reply starts so (a command's first byte is a small command number, a reply's is PS_IOV_ADD's).
 */
export function looksLikeTls(chunk: Buffer): boolean {
  return chunk.length >= 2 && (chunk[0] === 0x16 || chunk[0] === 0x15) && chunk[1] === 0x03;
}

export function encodeHeader(h: Header, out: Buffer = Buffer.allocUnsafe(HEADER_SIZE), offset = 0): Buffer {
  out.writeUInt32LE(((h.flags << PS_CMD_BITS) | (h.cmd & PS_CMD_MASK)) >>> 0, offset);
  out.writeUInt32LE(0, offset + 4);
  out.writeBigUInt64LE(BigInt(h.nrPages), offset + 8);
  out.writeBigUInt64LE(BigInt(h.vaddr), offset + 16);
  out.writeBigUInt64LE(BigInt(h.dstId), offset + 24);
  return out;
}

export function encodeGet(dstId: number, vaddr: number, nrPages: number): Buffer {
  return encodeHeader({ cmd: PS_IOV_GET, flags: 0, nrPages, vaddr, dstId });
}

export function encodeClose(): Buffer {
  return encodeHeader({ cmd: PS_IOV_CLOSE, flags: 0, nrPages: 0, vaddr: 0, dstId: 0 });
}

export function encodeGetReply(dstId: number, vaddr: number, nrPages: number): Buffer {
  return encodeHeader({ cmd: PS_IOV_ADD_F, flags: PE_PRESENT, nrPages, vaddr, dstId });
}

/**
 * Decodes without judging: u64 fields above 2^53 come back as NaN so validators can report them
 * instead of silently rounding to a neighbouring address.
 */
export function decodeHeader(buf: Buffer, offset = 0): Header & { pad: number } {
  const word = buf.readUInt32LE(offset);
  return {
    cmd: word & PS_CMD_MASK,
    flags: word >>> PS_CMD_BITS,
    pad: buf.readUInt32LE(offset + 4),
    nrPages: safeU64(buf, offset + 8),
    vaddr: safeU64(buf, offset + 16),
    dstId: safeU64(buf, offset + 24),
  };
}

function safeU64(buf: Buffer, offset: number): number {
  const lo = buf.readUInt32LE(offset);
  const hi = buf.readUInt32LE(offset + 4);
  if (hi > 0x1fffff) return NaN;
  return hi * 0x1_0000_0000 + lo;
}

function rawU64(buf: Buffer, offset: number): string {
  return hex(buf.readBigUInt64LE(offset));
}

/** Byte queue that hands out exact-size slices without re-concatenating on every chunk. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // consumed bytes of chunks[0]
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Removes and returns n bytes (n <= length); a view when they lie in one chunk. */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0]!;
      const k = Math.min(n - done, c.length - this.head);
      c.copy(out, done, this.head, this.head + k);
      done += k;
      this.advance(k);
    }
    return out;
  }

  private advance(n: number): void {
    this.length -= n;
    this.head += n;
    while (this.chunks.length > 0 && this.head >= this.chunks[0]!.length) {
      this.head -= this.chunks[0]!.length;
      this.chunks.shift();
    }
  }
}

export type Request =
  | { kind: 'get'; pid: number; vaddr: number; nrPages: number; seq: number }
  | { kind: 'close'; force: boolean; seq: number };

/**
 * Server side: turns the byte stream from a lazy-pages daemon into GET / CLOSE requests.
 * Only what a lazy source must answer is accepted; the dump-side commands (OPEN2, ADD_F, …) are
 * rejected because serving them would mean writing images, which this server never does.
 */
export class RequestParser {
  private readonly q = new ByteQueue();
  private seq = 0;
  private failed: PageServerProtocolError | null = null;

  constructor(readonly peer: string) {}

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /** Bytes received but not yet returned as requests. */
  get buffered(): number {
    return this.q.length;
  }

  /** The next complete request, or null when more bytes are needed. Throws PageServerProtocolError. */
  next(): Request | null {
    if (this.failed) throw this.failed;
    if (this.q.length < HEADER_SIZE) return null;
    const raw = this.q.take(HEADER_SIZE);
    const seq = ++this.seq;
    try {
      return this.validate(raw, seq);
    } catch (e) {
      if (e instanceof PageServerProtocolError) this.failed = e;
      throw e;
    }
  }

  /** The peer closed its side: a partial header left behind is a truncated request. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.q.length > 0) {
      throw (this.failed = this.error(this.seq + 1, 'header', `connection closed inside request ${this.seq + 1}: ${this.q.length} of ${HEADER_SIZE} header bytes received`));
    }
  }

  private error(seq: number, field: string, detail: string): PageServerProtocolError {
    return new PageServerProtocolError(this.peer, field, `request ${seq}: ${detail}`);
  }

  private validate(raw: Buffer, seq: number): Request {
    const h = decodeHeader(raw);
    const name = commandName(h.cmd);
    if (h.cmd !== PS_IOV_GET && h.cmd !== PS_IOV_CLOSE && h.cmd !== PS_IOV_FORCE_CLOSE) {
      const known = COMMAND_NAMES[h.cmd] !== undefined;
      throw this.error(seq, 'cmd', known ? `command ${name} (${h.cmd}) is not served by a lazy page server` : `unknown command ${hex(raw.readUInt32LE(0))}`);
    }
    // Bytes 4..7 are C struct padding (u32 cmd before u64 nr_pages). CRIU's client builds its GET
    // with a designated initializer on the stack, which leaves them uninitialised: they carry
    // whatever was there (seen: 0x7f93). They mean nothing, so they are ignored, never judged.
    if (h.flags !== 0) throw this.error(seq, 'cmd', `${name}: flags ${hex(h.flags)} in the high 16 bits of cmd, must be 0`);
    if (h.cmd !== PS_IOV_GET) return { kind: 'close', force: h.cmd === PS_IOV_FORCE_CLOSE, seq };
    if (!(h.nrPages >= 1 && h.nrPages <= MAX_REQUEST_PAGES)) {
      const shown = Number.isNaN(h.nrPages) ? rawU64(raw, 8) : String(h.nrPages);
      throw this.error(seq, 'nr_pages', `GET: nr_pages ${shown} out of range 1..${MAX_REQUEST_PAGES}`);
    }
    if (Number.isNaN(h.vaddr)) throw this.error(seq, 'vaddr', `GET: vaddr ${rawU64(raw, 16)} is beyond any user address`);
    if (h.vaddr % PAGE_SIZE !== 0) throw this.error(seq, 'vaddr', `GET: vaddr ${hex(h.vaddr)} is not page aligned`);
    if (Number.isNaN(h.dstId) || h.dstId === 0 || h.dstId > 0x7fffffff) {
      throw this.error(seq, 'dst_id', `GET: dst_id ${rawU64(raw, 24)} is not a pid`);
    }
    return { kind: 'get', pid: h.dstId, vaddr: h.vaddr, nrPages: h.nrPages, seq };
  }
}

export interface GetReply {
  kind: 'pages';
  seq: number;
  pid: number;
  vaddr: number;
  nrPages: number;
  /** nrPages * 4096 bytes. A view into received chunks when possible; copy it before the next push if kept. */
  data: Buffer;
}

export interface CloseReply {
  kind: 'close';
  seq: number;
  status: number;
}

export type Reply = GetReply | CloseReply;

type Expected = { kind: 'get'; pid: number; vaddr: number; nrPages: number } | { kind: 'close' };

/**
 * Client side: splits the source's byte stream into GET replies (header + data) and the CLOSE
 * status. Replies carry no request id, so the parser must be told what was asked, in order
 * (expectGet / expectClose); a reply that does not echo its request is fatal, as in CRIU
 * ("Out of order read completed").
 */
export class ReplyParser {
  private readonly q = new ByteQueue();
  private readonly expected: Expected[] = [];
  private expectedHead = 0;
  private header: Header | null = null;
  private seq = 0;
  private failed: PageServerProtocolError | null = null;

  constructor(readonly peer: string) {}

  expectGet(pid: number, vaddr: number, nrPages: number): void {
    this.expected.push({ kind: 'get', pid, vaddr, nrPages });
  }

  expectClose(): void {
    this.expected.push({ kind: 'close' });
  }

  /** Requests sent whose replies have not been returned yet. */
  get outstanding(): number {
    return this.expected.length - this.expectedHead;
  }

  get buffered(): number {
    return this.q.length;
  }

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /** The header of the reply being received, once it is complete (data may still be arriving). */
  get pendingHeader(): Readonly<Header> | null {
    return this.header;
  }

  next(): Reply | null {
    if (this.failed) throw this.failed;
    try {
      return this.step();
    } catch (e) {
      if (e instanceof PageServerProtocolError) this.failed = e;
      throw e;
    }
  }

  /** The source closed the connection: fine only between replies with nothing outstanding. */
  end(): void {
    if (this.failed) throw this.failed;
    const seq = this.seq + 1;
    if (this.header) {
      throw (this.failed = this.error(seq, 'data', `connection closed inside reply ${seq}: ${this.q.length} of ${this.header.nrPages * PAGE_SIZE} data bytes received`));
    }
    if (this.q.length > 0 || this.outstanding > 0) {
      throw (this.failed = this.error(seq, 'header', `connection closed with ${this.outstanding} request(s) unanswered (${this.q.length} bytes of a partial reply)`));
    }
  }

  private error(seq: number, field: string, detail: string): PageServerProtocolError {
    return new PageServerProtocolError(this.peer, field, `reply ${seq}: ${detail}`);
  }

  private step(): Reply | null {
    const want = this.expected[this.expectedHead];
    const seq = this.seq + 1;
    if (!this.header) {
      if (want?.kind === 'close') {
        if (this.q.length < CLOSE_REPLY_SIZE) return null;
        const status = this.q.take(CLOSE_REPLY_SIZE).readInt32LE(0);
        this.consume();
        return { kind: 'close', seq, status };
      }
      if (this.q.length < HEADER_SIZE) return null;
      if (!want) throw this.error(seq, 'header', `${this.q.length} unsolicited bytes (no request outstanding)`);
      const raw = this.q.take(HEADER_SIZE);
      const h = decodeHeader(raw);
      const word = raw.readUInt32LE(0);
      if (word !== GET_REPLY_CMD) throw this.error(seq, 'cmd', `cmd ${hex(word)}, expected ${hex(GET_REPLY_CMD)} (ADD_F|PE_PRESENT)`);
      // Padding again: CRIU's server reuses the request struct for its reply, so it echoes
      // whatever padding the request carried. Ignored, as on the request side.
      if (Number.isNaN(h.dstId) || h.dstId !== want.pid) throw this.error(seq, 'dst_id', `dst_id ${rawU64(raw, 24)} does not echo the request's pid ${want.pid} (out of order reply)`);
      if (Number.isNaN(h.vaddr) || h.vaddr !== want.vaddr) throw this.error(seq, 'vaddr', `vaddr ${rawU64(raw, 16)} does not echo the request's ${hex(want.vaddr)} (out of order reply)`);
      if (!(h.nrPages >= 1 && h.nrPages <= want.nrPages)) {
        const shown = Number.isNaN(h.nrPages) ? rawU64(raw, 8) : String(h.nrPages);
        throw this.error(seq, 'nr_pages', `nr_pages ${shown} out of range 1..${want.nrPages} (the request's count)`);
      }
      this.header = h;
    }
    const bytes = this.header.nrPages * PAGE_SIZE;
    if (this.q.length < bytes) return null;
    const h = this.header;
    this.header = null;
    const data = this.q.take(bytes);
    this.consume();
    return { kind: 'pages', seq, pid: h.dstId, vaddr: h.vaddr, nrPages: h.nrPages, data };
  }

  private consume(): void {
    this.seq++;
    this.expectedHead++;
    // Drop answered expectations in batches so the array does not grow for a whole session.
    if (this.expectedHead >= 1024 && this.expectedHead * 2 >= this.expected.length) {
      this.expected.splice(0, this.expectedHead);
      this.expectedHead = 0;
    }
  }
}
