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
 * Plain-object view of a decoded message. 64-bit fields come out as decimal strings
 * (toObject longs: String) so that values above 2^53 are still exact when we validate them.
 */
export type RawMessage = Record<string, unknown>;

export function decodeMessage(kind: MessageKind, body: Uint8Array): RawMessage {
  const t = messages[kind];
  const msg = t.decode(body);
  // defaults:false keeps "absent" distinguishable from "zero", which the pagemap rules need.
  return t.toObject(msg, { longs: String, defaults: false, arrays: true, bytes: Buffer }) as RawMessage;
}

export function encodeMessage(kind: MessageKind, obj: Record<string, unknown>): Uint8Array {
  const t = messages[kind];
  const err = t.verify(obj);
  if (err) throw new Error(`internal: cannot encode ${messageNames[kind]}: ${err}`);
  return t.encode(t.fromObject(obj)).finish();
}
