// The restorer → daemon stream (criu-lazy-pages.md §2), fed to the parser in every split the kernel
// may produce, and malformed in every way we could think of.
import t from 'tap';
import { HandoverParser, RESTORE_FINISHED, type HandoverEvent } from '../../src/engine/handover';
import { HandoverProtocolError } from '../../src/engine/errors';

const i32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v | 0);
  return b;
};
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

/** A CRIU-like session: zombie 4, then pids 2, 1, 3 each with an fd, then RESTORE_FINISHED. */
function session(): { bytes: Buffer; fdAt: Map<number, number> } {
  const parts: Buffer[] = [];
  const fdAt = new Map<number, number>();
  let off = 0;
  const add = (b: Buffer, fd?: number) => {
    if (fd !== undefined) fdAt.set(off, fd);
    parts.push(b);
    off += b.length;
  };
  add(i32(-4));
  for (const [pid, fd] of [[2, 102], [1, 101], [3, 103]]) {
    add(i32(pid));
    add(Buffer.from([0]), fd);
  }
  add(u32(RESTORE_FINISHED));
  return { bytes: Buffer.concat(parts), fdAt };
}

/** Feeds `bytes` cut at `cuts`, attaching each fd to the chunk holding its byte, as the kernel does. */
function feedChunks(p: HandoverParser, bytes: Buffer, fdAt: Map<number, number>, cuts: number[]): HandoverEvent[] {
  const out: HandoverEvent[] = [];
  const edges = [0, ...cuts.filter((c) => c > 0 && c < bytes.length), bytes.length];
  for (let i = 0; i + 1 < edges.length; i++) {
    const fds: number[] = [];
    for (const [at, fd] of fdAt) if (at >= edges[i] && at < edges[i + 1]) fds.push(fd);
    out.push(...p.feed(bytes.subarray(edges[i], edges[i + 1]), fds, 777));
  }
  out.push(...p.feed(Buffer.alloc(0), [], 777));
  return out;
}

const expected: HandoverEvent[] = [
  { type: 'zombie', pid: 4 },
  { type: 'process', pid: 2, uffd: 102, senderPid: 777 },
  { type: 'process', pid: 1, uffd: 101, senderPid: 777 },
  { type: 'process', pid: 3, uffd: 103, senderPid: 777 },
  { type: 'finished' },
];

t.test('merged: the whole session in one read', async (t) => {
  const { bytes, fdAt } = session();
  t.same(feedChunks(new HandoverParser(4, 'sock'), bytes, fdAt, []), expected);
});

t.test('split: pid and fd byte in separate reads, as CRIU sends them', async (t) => {
  const { bytes, fdAt } = session();
  t.same(feedChunks(new HandoverParser(4, 'sock'), bytes, fdAt, [4, 8, 9, 13, 14, 18, 19]), expected);
});

t.test('every single cut point and byte-by-byte', async (t) => {
  const { bytes, fdAt } = session();
  for (let c = 1; c < bytes.length; c++) t.same(feedChunks(new HandoverParser(4, 'sock'), bytes, fdAt, [c]), expected, `cut at ${c}`);
  const all = Array.from({ length: bytes.length }, (_, i) => i);
  t.same(feedChunks(new HandoverParser(4, 'sock'), bytes, fdAt, all), expected, 'one byte per read');
});

const bad: [string, (p: HandoverParser) => void, RegExp][] = [
  ['EOF before RESTORE_FINISHED', (p) => p.feed(Buffer.alloc(0), [], 1), /sock: connection closed before RESTORE_FINISHED \(after 0 of 2 processes\)/],
  ['EOF after one process', (p) => (p.feed(Buffer.concat([i32(1), Buffer.from([0])]), [9], 1), p.feed(Buffer.alloc(0), [], 1)), /after 1 of 2/],
  ['fd byte without SCM_RIGHTS', (p) => p.feed(Buffer.concat([i32(1), Buffer.from([0])]), [], 1), /pid 1: the hand-over byte came without a uffd/],
  ['more fds than processes', (p) => p.feed(Buffer.concat([i32(1), Buffer.from([0]), i32(-2), u32(RESTORE_FINISHED)]), [5, 6], 1), /1 file descriptors more than processes/],
  ['RESTORE_FINISHED too early', (p) => p.feed(u32(RESTORE_FINISHED), [], 1), /RESTORE_FINISHED after 0 of 2 processes/],
  ['something else where RESTORE_FINISHED belongs', (p) => p.feed(Buffer.concat([i32(-1), i32(-2), u32(0xdeadbeef)]), [], 1), /expected RESTORE_FINISHED .* got 0xdeadbeef/],
  ['bytes after RESTORE_FINISHED', (p) => p.feed(Buffer.concat([i32(-1), i32(-2), u32(RESTORE_FINISHED), Buffer.from('junk')]), [], 1), /4 unexpected bytes after RESTORE_FINISHED/],
  ['pid 0', (p) => p.feed(i32(0), [], 1), /pid 0 is not a process/],
  ['text garbage', (p) => p.feed(Buffer.from('hello world!'), [], 1), /sock: pid \d+: the hand-over byte came without a uffd/],
  ['data after EOF', (p) => (p.feed(Buffer.concat([i32(-1), i32(-2), u32(RESTORE_FINISHED)]), [], 1), p.feed(Buffer.alloc(0), [], 1), p.feed(Buffer.from([1]), [], 1)), /data after EOF/],
];

for (const [name, act, msg] of bad) {
  t.test(`malformed: ${name}`, async (t) => {
    const p = new HandoverParser(2, 'sock');
    let err: unknown;
    try {
      act(p);
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof HandoverProtocolError, 'a HandoverProtocolError');
    t.match((err as Error)?.message, msg);
    t.notMatch((err as Error)?.message, /\n/, 'one line');
  });
}

t.test('fds left behind by a failure can be collected for closing', async (t) => {
  const p = new HandoverParser(2, 'sock');
  t.throws(() => p.feed(Buffer.concat([i32(1), Buffer.from([0]), i32(-2), u32(RESTORE_FINISHED)]), [5, 6], 1));
  t.same(p.leftoverFds(), [6]);
});
