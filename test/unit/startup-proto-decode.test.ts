// The image decoder (src/images/proto.ts) reads entries without protobufjs, which costs ~50 ms of
// CPU to load in every thread at start-up. Here it is held to protobufjs' own decoding (the reference
// it replaced, converted the same way: only the fields on the wire, repeated fields as arrays, 64-bit
// values as numbers when exact, else decimal strings) on random entries of every message, on a real
// CRIU 4.2 image set, and on random bytes.
import t from 'tap';
import * as fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { decodeMessage, messages, type MessageKind } from '../../src/images/proto';
import { MAGIC, splitEntries } from '../../src/images/framing';

const FIXTURE = path.resolve(__dirname, '../../../test/fixtures/criu-4.2-two-procs/img');

/** The old decoder: protobufjs, then the plain-object view. */
function reference(kind: MessageKind, body: Uint8Array): Record<string, unknown> {
  return plainObject(messages[kind].decode(body) as unknown as Record<string, unknown>);
}

function plainValue(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(plainValue);
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if ('low' in v && 'high' in v && 'unsigned' in v) {
    const l = v as { low: number; high: number; unsigned: boolean; toString(): string };
    const high = l.high >>> 0;
    if (l.unsigned || l.high >= 0) return high < 0x20_0000 ? high * 0x1_0000_0000 + (l.low >>> 0) : l.toString();
    return l.toString();
  }
  return plainObject(v as Record<string, unknown>);
}

function plainObject(msg: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(msg)) out[k] = plainValue(msg[k]);
  return out;
}

const encode = (kind: MessageKind, obj: Record<string, unknown>) => messages[kind].encode(messages[kind].fromObject(obj)).finish();

const u32 = fc.nat({ max: 0xffff_ffff });
const u64 = fc.oneof(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map((b) => b.toString()));
const i64 = fc.oneof(fc.integer({ min: -1000, max: 1000 }), fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }).map((b) => b.toString()));
const i32 = fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff });
const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
const bytes = fc.uint8Array({ maxLength: 24 }).map((b) => Buffer.from(b));

const vma = fc.record({
  start: u64, end: u64, pgoff: u64, shmid: u64, prot: u32, flags: u32, status: u32, fd: i64, madv: opt(u64), fdflags: opt(u32),
});
const ARBITRARY: Record<MessageKind, fc.Arbitrary<Record<string, unknown>>> = {
  inventory: fc.record({
    img_version: u32, fdinfo_per_id: opt(fc.boolean()), root_ids: opt(bytes), ns_per_id: opt(fc.boolean()), root_cg_set: opt(u32), lsmtype: opt(u32),
    dump_uptime: opt(u64), pre_dump_mode: opt(u32), tcp_close: opt(fc.boolean()), network_lock_method: opt(u32), plugins_entry: opt(bytes),
    dump_criu_run_id: opt(fc.string()), allow_uprobes: opt(fc.boolean()),
  }),
  pstree: fc.record({ pid: u32, ppid: u32, pgid: u32, sid: u32, threads: fc.array(u32, { maxLength: 5 }) }),
  vma,
  mm: fc.record({
    mm_start_code: u64, mm_end_code: u64, mm_start_data: u64, mm_end_data: u64, mm_start_stack: u64, mm_start_brk: u64, mm_brk: u64,
    mm_arg_start: u64, mm_arg_end: u64, mm_env_start: u64, mm_env_end: u64, exe_file_id: u32, mm_saved_auxv: fc.array(u64, { maxLength: 6 }),
    vmas: fc.array(vma, { maxLength: 4 }), dumpable: opt(i32), aios: fc.array(bytes, { maxLength: 2 }), thp_disabled: opt(fc.boolean()),
  }),
  pagemapHead: fc.record({ pages_id: u32 }),
  pagemapEntry: fc.record({ vaddr: u64, compat_nr_pages: u32, in_parent: opt(fc.boolean()), flags: opt(u32), nr_pages: opt(u64) }),
};

const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

t.test('every entry protobufjs writes decodes as protobufjs decodes it', async (t) => {
  for (const kind of Object.keys(ARBITRARY) as MessageKind[]) {
    fc.assert(
      fc.property(ARBITRARY[kind], (o) => {
        const body = encode(kind, defined(o));
        return isDeepStrictEqual(decodeMessage(kind, body), reference(kind, body));
      }),
      { numRuns: 500 },
    );
    t.pass(`${kind}: 500 random entries`);
  }
});

t.test('a real CRIU 4.2 image set decodes as protobufjs decodes it', async (t) => {
  const files: [string, number, number | null, MessageKind[]][] = [['inventory.img', MAGIC.INVENTORY, null, ['inventory']], ['pstree.img', MAGIC.PSTREE, 2, ['pstree']]];
  for (const f of fs.readdirSync(FIXTURE)) {
    if (f.startsWith('mm-')) files.push([f, MAGIC.MM, 2, ['mm']]);
    if (f.startsWith('pagemap-')) files.push([f, MAGIC.PAGEMAP, 2, ['pagemapHead', 'pagemapEntry']]);
  }
  let n = 0;
  for (const [f, magic, version, kinds] of files) {
    const entries = splitEntries(fs.readFileSync(path.join(FIXTURE, f)), f, magic, version);
    entries.forEach((e, i) => {
      const kind = kinds[Math.min(i, kinds.length - 1)]!;
      t.same(decodeMessage(kind, e.body), reference(kind, e.body), `${f} entry ${i}`);
      n++;
    });
  }
  t.ok(n > 10, `${n} entries compared`);
});

t.test('random bytes: whatever decodes, decodes as protobufjs has it; what protobufjs refuses is refused', async (t) => {
  const attempt = (f: () => unknown): { ok: true; v: unknown } | { ok: false } => {
    try {
      return { ok: true, v: f() };
    } catch {
      return { ok: false };
    }
  };
  // Entries of each kind with a few bytes changed, cut short or extended: mostly near-valid input.
  const mangled = (kind: MessageKind) =>
    fc.tuple(ARBITRARY[kind], fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { maxLength: 3 }), fc.nat(), fc.uint8Array({ maxLength: 4 })).map(([o, edits, cut, tail]) => {
      const b = Buffer.from(encode(kind, defined(o)));
      for (const [at, v] of edits) if (b.length) b[at % b.length] = v;
      return Buffer.concat([b.subarray(0, b.length - (cut % 3)), tail]);
    });
  for (const kind of Object.keys(ARBITRARY) as MessageKind[]) {
    fc.assert(
      fc.property(fc.oneof(mangled(kind), fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b))), (body) => {
        const ours = attempt(() => decodeMessage(kind, body));
        const theirs = attempt(() => reference(kind, body));
        if (!theirs.ok) return !ours.ok;
        // Ours may refuse what protobufjs misreads (a known field with the wrong wire type).
        return !ours.ok || isDeepStrictEqual(ours.v, theirs.v);
      }),
      { numRuns: Number(process.env.RUNS ?? 1000) },
    );
    t.pass(`${kind}: mangled or random bodies`);
  }
});

t.test('errors say what is wrong', async (t) => {
  t.throws(() => decodeMessage('pstree', Uint8Array.from([0x08, 0x05])), /missing required 'ppid'/);
  t.throws(() => decodeMessage('pstree', Uint8Array.from([0x08])), /index out of range/);
  t.throws(() => decodeMessage('pstree', Uint8Array.from([0x0a, 0x01, 0x05])), /invalid wire type 2 for pstree_entry.pid/);
  t.throws(() => decodeMessage('pstree', Uint8Array.from([0x08, ...Array(10).fill(0xff), 0x01])), /invalid varint/);
  t.throws(() => decodeMessage('mm', Uint8Array.from([0x72, 0x01, 0x08])), /index out of range/);
  // packed and unpacked repeated scalars both read
  t.same(decodeMessage('pstree', Uint8Array.from([0x08, 1, 0x10, 0, 0x18, 1, 0x20, 1, 0x28, 7, 0x2a, 0x02, 8, 9])).threads, [7, 8, 9]);
});
