import type * as protobuf from 'protobufjs';

/*
 * Transcription of the subset of CRIU's images/*.proto (v4.2) that lazy restore needs.
 * proto2 like the originals: `required` matters because CRIU's own decoders (and crit, which
 * uses Python protobuf) reject messages missing required fields, so the writer must set them.
 * Sub-messages we never interpret are declared as `bytes`, which is wire-compatible and keeps
 * unknown contents out of our way.
 */
const PROTO_TEXT = `
syntax = "proto2";

message inventory_entry {
  required uint32 img_version = 1;
  optional bool fdinfo_per_id = 2;
  optional bytes root_ids = 3;
  optional bool ns_per_id = 4;
  optional uint32 root_cg_set = 5;
  optional uint32 lsmtype = 6;
  optional uint64 dump_uptime = 8;
  optional uint32 pre_dump_mode = 9;
  optional bool tcp_close = 10;
  optional uint32 network_lock_method = 11;
  optional bytes plugins_entry = 12;
  optional string dump_criu_run_id = 13;
  optional bool allow_uprobes = 14;
}

message pstree_entry {
  required uint32 pid = 1;
  required uint32 ppid = 2;
  required uint32 pgid = 3;
  required uint32 sid = 4;
  repeated uint32 threads = 5;
}

message vma_entry {
  required uint64 start = 1;
  required uint64 end = 2;
  required uint64 pgoff = 3;
  required uint64 shmid = 4;
  required uint32 prot = 5;
  required uint32 flags = 6;
  required uint32 status = 7;
  required sint64 fd = 8;
  optional uint64 madv = 9;
  optional uint32 fdflags = 10;
}

message mm_entry {
  required uint64 mm_start_code = 1;
  required uint64 mm_end_code = 2;
  required uint64 mm_start_data = 3;
  required uint64 mm_end_data = 4;
  required uint64 mm_start_stack = 5;
  required uint64 mm_start_brk = 6;
  required uint64 mm_brk = 7;
  required uint64 mm_arg_start = 8;
  required uint64 mm_arg_end = 9;
  required uint64 mm_env_start = 10;
  required uint64 mm_env_end = 11;
  required uint32 exe_file_id = 12;
  repeated uint64 mm_saved_auxv = 13;
  repeated vma_entry vmas = 14;
  optional int32 dumpable = 15;
  repeated bytes aios = 16;
  optional bool thp_disabled = 17;
}

message pagemap_head {
  required uint32 pages_id = 1;
}

message pagemap_entry {
  required uint64 vaddr = 1;
  required uint32 compat_nr_pages = 2;
  optional bool in_parent = 3;
  optional uint32 flags = 4;
  optional uint64 nr_pages = 5;
}
`;

/** The schema as protobufjs types: built on first use, only to encode (the writer, tests). */
let root: protobuf.Root | undefined;
function schema(): protobuf.Root {
  // protobufjs (its parser and code generator) costs tens of ms of CPU to load and set up
  // (docs/DESIGN.md, "Start-up"), in every thread that reads images (the daemon's main thread and each worker): the decoder below does
  // not need it, so it is loaded only by what encodes.
  root ??= (require('protobufjs') as typeof protobuf).parse(PROTO_TEXT, { keepCase: true }).root;
  return root;
}

const TYPE_NAMES = {
  inventory: 'inventory_entry',
  pstree: 'pstree_entry',
  vma: 'vma_entry',
  mm: 'mm_entry',
  pagemapHead: 'pagemap_head',
  pagemapEntry: 'pagemap_entry',
} as const;

/** protobufjs types of the schema (loads protobufjs on first access). */
export const messages = Object.defineProperties({} as { readonly [K in keyof typeof TYPE_NAMES]: protobuf.Type }, Object.fromEntries(
  Object.entries(TYPE_NAMES).map(([k, name]) => [k, { enumerable: true, get: () => schema().lookupType(name) }]),
));

export type MessageKind = keyof typeof TYPE_NAMES;

/** Human names used in error messages (CRIU's CamelCase names, as in its docs and crit). */
export const messageNames: Record<MessageKind, string> = {
  inventory: 'InventoryEntry',
  pstree: 'PstreeEntry',
  vma: 'VmaEntry',
  mm: 'MmEntry',
  pagemapHead: 'PagemapHead',
  pagemapEntry: 'PagemapEntry',
};

/**
 * Plain-object view of a decoded message: only the fields present on the wire (absent is not zero:
 * the pagemap rules need the difference); 64-bit fields as numbers when they fit in 2^53, else as
 * decimal strings, so that callers still see larger values exactly and can refuse them.
 */
export type RawMessage = Record<string, unknown>;

const TWO_53_HIGH = 0x20_0000; // a u64 whose high word is below this fits in a double exactly

type Scalar = 'uint32' | 'int32' | 'bool' | 'uint64' | 'int64' | 'sint64' | 'string' | 'bytes';

interface FieldDef {
  name: string;
  /** A scalar type, or the name of a message of the schema. */
  type: string;
  required: boolean;
  repeated: boolean;
}

interface MessageDef {
  name: string;
  byNumber: Map<number, FieldDef>;
  /** Repeated fields start as empty arrays (protobufjs has them so too); others start absent. */
  repeated: string[];
  required: string[];
}

const SCALARS = new Set<string>(['uint32', 'int32', 'bool', 'uint64', 'int64', 'sint64', 'string', 'bytes']);

/**
 * The field tables of PROTO_TEXT, read by a parser for exactly the subset written there (one
 * `label type name = number;` per line): one schema for both this decoder and protobufjs' encoder.
 */
function parseSchema(text: string): Map<string, MessageDef> {
  const defs = new Map<string, MessageDef>();
  let cur: MessageDef | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let m: RegExpExecArray | null;
    if (!line || line.startsWith('syntax ')) continue;
    if ((m = /^message (\w+) \{$/.exec(line))) {
      cur = { name: m[1]!, byNumber: new Map(), repeated: [], required: [] };
      defs.set(cur.name, cur);
    } else if (line === '}') {
      cur = undefined;
    } else if (cur && (m = /^(required|optional|repeated) (\w+) (\w+) = (\d+);$/.exec(line))) {
      const f: FieldDef = { name: m[3]!, type: m[2]!, required: m[1] === 'required', repeated: m[1] === 'repeated' };
      cur.byNumber.set(Number(m[4]), f);
      if (f.repeated) cur.repeated.push(f.name);
      if (f.required) cur.required.push(f.name);
    } else {
      throw new Error(`internal: proto.ts cannot read its schema line '${line}'`);
    }
  }
  for (const d of defs.values()) {
    for (const f of d.byNumber.values()) {
      if (!SCALARS.has(f.type) && !defs.has(f.type)) throw new Error(`internal: proto.ts: unknown type ${f.type} of ${d.name}.${f.name}`);
    }
  }
  return defs;
}

const SCHEMA = parseSchema(PROTO_TEXT);

/** Wire-format reader over [pos, end) of buf. */
class WireReader {
  /** The last varint read, as its low and high 32-bit words (both unsigned). */
  lo = 0;
  hi = 0;

  constructor(
    readonly buf: Buffer,
    public pos: number,
    readonly end: number,
  ) {}

  private byte(): number {
    if (this.pos >= this.end) throw new RangeError(`index out of range: ${this.pos} + 1 > ${this.end}`);
    return this.buf[this.pos++]!;
  }

  varint(): void {
    let lo = 0;
    let hi = 0;
    let b = 0;
    for (let i = 0; i < 4; i++) {
      b = this.byte();
      lo |= (b & 0x7f) << (7 * i);
      if (b < 0x80) return this.set(lo, hi);
    }
    b = this.byte();
    lo |= (b & 0x7f) << 28;
    hi = (b & 0x7f) >>> 4;
    if (b < 0x80) return this.set(lo, hi);
    for (let i = 0; i < 5; i++) {
      b = this.byte();
      hi |= (b & 0x7f) << (7 * i + 3);
      if (b < 0x80) return this.set(lo, hi);
    }
    throw new Error(`invalid varint encoding at offset ${this.pos}`);
  }

  private set(lo: number, hi: number): void {
    this.lo = lo >>> 0;
    this.hi = hi >>> 0;
  }

  /** A length-delimited value's bounds [start, end), which it then skips. */
  delimited(): [number, number] {
    this.varint();
    const len = this.hi ? Infinity : this.lo;
    if (len > this.end - this.pos) throw new RangeError(`index out of range: ${this.pos} + ${len} > ${this.end}`);
    const start = this.pos;
    this.pos += len;
    return [start, this.pos];
  }

  /** A field's key: its number and wire type; 0 and keys past 32 bits are refused, as protobufjs does. */
  tag(): number {
    this.varint();
    if (this.hi) throw new Error(`invalid tag encoding at offset ${this.pos}`);
    if (this.lo >>> 3 === 0) throw new Error(`illegal tag: field number 0 at offset ${this.pos}`);
    return this.lo;
  }

  skip(wireType: number, field: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        return this.advance(8);
      case 2:
        this.delimited();
        return;
      case 3:
        for (;;) {
          const tag = this.tag();
          if ((tag & 7) === 4) {
            if (tag >>> 3 !== field) throw new Error(`invalid end group tag at offset ${this.pos}`);
            return;
          }
          this.skip(tag & 7, tag >>> 3);
        }
      case 5:
        return this.advance(4);
      default:
        throw new Error(`invalid wire type ${wireType} at offset ${this.pos}`);
    }
  }

  private advance(n: number): void {
    if (n > this.end - this.pos) throw new RangeError(`index out of range: ${this.pos} + ${n} > ${this.end}`);
    this.pos += n;
  }
}

/** A 64-bit value: a number when exact (below 2^53), else its decimal string. */
function u64(lo: number, hi: number): number | string {
  return hi < TWO_53_HIGH ? hi * 0x1_0000_0000 + lo : ((BigInt(hi) << 32n) | BigInt(lo)).toString();
}

/** Signed: negative values as decimal strings, as protobufjs' Long.toString gave them. */
function i64(lo: number, hi: number): number | string {
  return hi & 0x8000_0000 ? BigInt.asIntN(64, (BigInt(hi) << 32n) | BigInt(lo)).toString() : u64(lo, hi);
}

function scalar(r: WireReader, type: Scalar): unknown {
  if (type === 'string' || type === 'bytes') {
    const [start, end] = r.delimited();
    return type === 'string' ? r.buf.toString('utf8', start, end) : r.buf.subarray(start, end);
  }
  r.varint();
  switch (type) {
    case 'uint32':
      return r.lo;
    case 'int32':
      return r.lo | 0;
    case 'bool':
      return r.lo !== 0;
    case 'uint64':
      return u64(r.lo, r.hi);
    case 'int64':
      return i64(r.lo, r.hi);
    case 'sint64': {
      const mask = -(r.lo & 1); // zigzag
      return i64((((r.lo >>> 1) | (r.hi << 31)) ^ mask) >>> 0, ((r.hi >>> 1) ^ mask) >>> 0);
    }
  }
}

function decodeFields(def: MessageDef, r: WireReader): RawMessage {
  const out: RawMessage = {};
  for (const k of def.repeated) out[k] = [];
  while (r.pos < r.end) {
    const key = r.tag();
    const wt = key & 7;
    const f = def.byNumber.get(key >>> 3);
    if (!f) {
      r.skip(wt, key >>> 3); // unknown fields are skipped, as protobuf does
      continue;
    }
    const sub = SCHEMA.get(f.type);
    let v: unknown;
    if (sub) {
      if (wt !== 2) throw new Error(`invalid wire type ${wt} for ${def.name}.${f.name} (a message)`);
      const [start, end] = r.delimited();
      v = decodeFields(sub, new WireReader(r.buf, start, end));
    } else {
      const type = f.type as Scalar;
      const delimited = type === 'string' || type === 'bytes';
      if (f.repeated && !delimited && wt === 2) {
        // packed
        const [start, end] = r.delimited();
        const pr = new WireReader(r.buf, start, end);
        const arr = out[f.name] as unknown[];
        while (pr.pos < pr.end) arr.push(scalar(pr, type));
        continue;
      }
      if (wt !== (delimited ? 2 : 0)) throw new Error(`invalid wire type ${wt} for ${def.name}.${f.name} (${type})`);
      v = scalar(r, type);
    }
    if (f.repeated) (out[f.name] as unknown[]).push(v);
    else out[f.name] = v;
  }
  for (const k of def.required) if (!(k in out)) throw new Error(`missing required '${k}'`);
  return out;
}

/**
 * Decodes one entry without protobufjs (see schema()): only the fields present on the wire,
 * repeated fields as arrays (empty when absent), bytes as Buffers sharing `body`'s memory.
 * Truncated or malformed input, a known field with the wrong wire type (protobuf-c, hence CRIU,
 * refuses those too) or a missing required field throws an Error that says which.
 */
export function decodeMessage(kind: MessageKind, body: Uint8Array): RawMessage {
  if (kind === 'pagemapEntry') {
    const fast = decodePagemapEntryFast(body);
    if (fast) return fast;
  }
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  return decodeFields(SCHEMA.get(TYPE_NAMES[kind])!, new WireReader(buf, 0, buf.length));
}

/**
 * PagemapEntry, the one message a dump holds thousands of (one per run of pages; a sparse region
 * makes one per page), decoded without protobufjs' objects, which cost an object per field and a GC
 * pause while the restorer waited on the first faults (docs/DESIGN.md, "Start-up"). Plain
 * varints only, every value below 2^53 and both required fields present; anything else (unknown
 * fields, other wire types, big or missing values) returns undefined and goes the general way,
 * which keeps its exact errors.
 */
function decodePagemapEntryFast(b: Uint8Array): RawMessage | undefined {
  let vaddr: number | undefined;
  let compat: number | undefined;
  let inParent: boolean | undefined;
  let flags: number | undefined;
  let nrPages: number | undefined;
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (pos >= b.length) return -1;
      const byte = b[pos++]!;
      v += (byte & 0x7f) * mul;
      if (byte < 0x80) return v;
      mul *= 128;
    }
    return -1; // 8 bytes of 7 bits = 2^56: past 2^53, or malformed
  };
  while (pos < b.length) {
    const key = varint();
    if (key < 0 || (key & 7) !== 0) return undefined;
    const v = varint();
    if (v < 0 || v > Number.MAX_SAFE_INTEGER) return undefined;
    switch (key >>> 3) {
      case 1:
        vaddr = v;
        break;
      case 2:
        if (v > 0xffff_ffff) return undefined;
        compat = v;
        break;
      case 3:
        inParent = v !== 0;
        break;
      case 4:
        if (v > 0xffff_ffff) return undefined;
        flags = v;
        break;
      case 5:
        nrPages = v;
        break;
      default:
        return undefined;
    }
  }
  if (vaddr === undefined || compat === undefined) return undefined;
  const out: RawMessage = { vaddr, compat_nr_pages: compat };
  if (inParent !== undefined) out.in_parent = inParent;
  if (flags !== undefined) out.flags = flags;
  if (nrPages !== undefined) out.nr_pages = nrPages;
  return out;
}

export function encodeMessage(kind: MessageKind, obj: Record<string, unknown>): Uint8Array {
  const t = messages[kind];
  const err = t.verify(obj);
  if (err) throw new Error(`internal: cannot encode ${messageNames[kind]}: ${err}`);
  return t.encode(t.fromObject(obj)).finish();
}
