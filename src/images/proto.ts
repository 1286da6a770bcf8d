import * as protobuf from 'protobufjs';

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

const root = protobuf.parse(PROTO_TEXT, { keepCase: true }).root;

export const messages = {
  inventory: root.lookupType('inventory_entry'),
  pstree: root.lookupType('pstree_entry'),
  vma: root.lookupType('vma_entry'),
  mm: root.lookupType('mm_entry'),
  pagemapHead: root.lookupType('pagemap_head'),
  pagemapEntry: root.lookupType('pagemap_entry'),
} as const;

export type MessageKind = keyof typeof messages;

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

function plainValue(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(plainValue);
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if ('low' in v && 'high' in v && 'unsigned' in v) {
    const l = v as { low: number; high: number; unsigned: boolean; toString(): string };
    const high = l.high >>> 0;
    // A pagemap holds thousands of entries: converting each through a string (toObject's
    // longs: String) cost ~25 ms and as much again in GC per process at hand-over.
    if (l.unsigned || l.high >= 0) return high < TWO_53_HIGH ? high * 0x1_0000_0000 + (l.low >>> 0) : l.toString();
    return l.toString();
  }
  return plainObject(v as Record<string, unknown>);
}

function plainObject(msg: Record<string, unknown>): RawMessage {
  const out: RawMessage = {};
  for (const k of Object.keys(msg)) out[k] = plainValue(msg[k]);
  return out;
}

export function decodeMessage(kind: MessageKind, body: Uint8Array): RawMessage {
  if (kind === 'pagemapEntry') {
    const fast = decodePagemapEntryFast(body);
    if (fast) return fast;
  }
  return plainObject(messages[kind].decode(body) as unknown as Record<string, unknown>);
}

/**
 * PagemapEntry, the one message a dump holds thousands of (one per run of pages; a sparse region
 * makes one per page), decoded without protobufjs' objects: through them a 4,000-entry pagemap cost
 * ~25 ms and a GC pause of as much again while the restorer waited on the first faults. Plain
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
