// The page-server wire codec on its own: header bytes as CRIU writes them, the incremental request
// and reply parsers fed byte by byte, and one-line errors that name the peer and the field.
import t, { type Test } from 'tap';
import {
  GET_REPLY_CMD,
  HEADER_SIZE,
  MAX_REQUEST_PAGES,
  PageServerProtocolError,
  ReplyParser,
  RequestParser,
  decodeHeader,
  encodeClose,
  encodeGet,
  encodeGetReply,
  encodeHeader,
  formatPeer,
  PS_IOV_ADD_F,
  PS_IOV_OPEN2,
} from '../../src/protocol/page-server-wire';

const PEER = '10.0.0.7:4242';

t.test('GET header is byte-for-byte the captured CRIU request', async (t) => {
  const want = Buffer.from('07000000' + '00000000' + '0100000000000000' + '0010c8a1507f0000' + '0200000000000000', 'hex');
  t.same(encodeGet(2, 0x7f50a1c81000, 1), want);
  const h = decodeHeader(want);
  t.same(h, { cmd: 7, flags: 0, pad: 0, nrPages: 1, vaddr: 0x7f50a1c81000, dstId: 2 });
  t.equal(encodeGetReply(2, 0x1000, 3).readUInt32LE(0), 0x00040006);
  t.equal(GET_REPLY_CMD, 0x00040006);
  t.same(encodeClose(), Buffer.concat([Buffer.from('23100000', 'hex'), Buffer.alloc(28)]));
  t.equal(formatPeer('::1', 5), '[::1]:5');
});

t.test('request parser: byte-at-a-time input gives the same requests', async (t) => {
  const stream = Buffer.concat([encodeGet(1, 0x1000, 4), encodeGet(2, 0x20000, 1), encodeClose()]);
  const p = new RequestParser(PEER);
  const got = [];
  for (const b of stream) {
    p.push(Buffer.from([b]));
    for (let r = p.next(); r; r = p.next()) got.push(r);
  }
  t.same(got, [
    { kind: 'get', pid: 1, vaddr: 0x1000, nrPages: 4, seq: 1 },
    { kind: 'get', pid: 2, vaddr: 0x20000, nrPages: 1, seq: 2 },
    { kind: 'close', force: false, seq: 3 },
  ]);
  t.doesNotThrow(() => p.end());
});

function reject(t: Test, bytes: Buffer, field: string, msg: RegExp, end = false): void {
  const p = new RequestParser(PEER);
  p.push(bytes);
  let err: unknown;
  try {
    while (p.next());
    if (end) p.end();
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof PageServerProtocolError, 'PageServerProtocolError');
  const e = err as PageServerProtocolError;
  t.equal(e.field, field);
  t.match(e.message, msg);
  t.ok(e.message.startsWith(`page-server peer ${PEER}: request 1: `), e.message);
  t.notMatch(e.message, /\n/);
  t.throws(() => p.next(), 'stays failed');
}

t.test('request parser rejects malformed headers, naming the field', async (t) => {
  const get = (mut: (b: Buffer) => void) => {
    const b = encodeGet(1, 0x1000, 1);
    mut(b);
    return b;
  };
  reject(t, get((b) => b.writeUInt32LE(0x99, 0)), 'cmd', /unknown command 0x99/);
  reject(t, get((b) => b.writeUInt32LE(PS_IOV_OPEN2, 0)), 'cmd', /OPEN2 \(4\) is not served/);
  reject(t, get((b) => b.writeUInt32LE(PS_IOV_ADD_F | (4 << 16), 0)), 'cmd', /ADD_F/);
  reject(t, get((b) => b.writeUInt32LE(7 | (1 << 16), 0)), 'cmd', /flags 0x1/);
  reject(t, get((b) => b.writeBigUInt64LE(0n, 8)), 'nr_pages', /nr_pages 0 out of range/);
  reject(t, get((b) => b.writeBigUInt64LE(BigInt(MAX_REQUEST_PAGES + 1), 8)), 'nr_pages', /out of range/);
  reject(t, get((b) => b.writeBigUInt64LE(0xffffffffffffffffn, 8)), 'nr_pages', /0xffffffffffffffff/);
  reject(t, get((b) => b.writeBigUInt64LE(0x1234n, 16)), 'vaddr', /0x1234 is not page aligned/);
  reject(t, get((b) => b.writeBigUInt64LE(1n << 60n, 16)), 'vaddr', /beyond/);
  reject(t, get((b) => b.writeBigUInt64LE(0n, 24)), 'dst_id', /not a pid/);
  reject(t, get((b) => b.writeBigUInt64LE(1n << 40n, 24)), 'dst_id', /not a pid/);
  reject(t, encodeGet(1, 0x1000, 1).subarray(0, 20), 'header', /20 of 32 header bytes/, true);
});

t.test('padding bytes 4..7 are ignored: CRIU leaves them uninitialised', async (t) => {
  // The value seen from CRIU 4.2's client in the field (issue 8), and all ones.
  for (const pad of [0x7f93, 0xffffffff]) {
    const p = new RequestParser(PEER);
    const get = encodeGet(2, 0x7f50a1c81000, 3);
    get.writeUInt32LE(pad, 4);
    const close = encodeClose();
    close.writeUInt32LE(pad, 4);
    p.push(Buffer.concat([get, close]));
    t.same(p.next(), { kind: 'get', pid: 2, vaddr: 0x7f50a1c81000, nrPages: 3, seq: 1 }, `GET with padding ${pad.toString(16)}`);
    t.same(p.next(), { kind: 'close', force: false, seq: 2 }, `CLOSE with padding ${pad.toString(16)}`);
    // CRIU's server echoes the request's padding in its reply.
    const r = new ReplyParser(PEER);
    r.expectGet(2, 0x7f50a1c81000, 3);
    const h = encodeGetReply(2, 0x7f50a1c81000, 1);
    h.writeUInt32LE(pad, 4);
    r.push(Buffer.concat([h, Buffer.alloc(4096, 7)]));
    t.match(r.next(), { kind: 'pages', pid: 2, vaddr: 0x7f50a1c81000, nrPages: 1 }, `reply with padding ${pad.toString(16)}`);
  }
});

t.test('reply parser: incremental header then data, checked against the requests', async (t) => {
  const data1 = Buffer.alloc(2 * 4096, 0xab);
  const data2 = Buffer.alloc(4096, 0xcd);
  const stream = Buffer.concat([encodeGetReply(1, 0x1000, 2), data1, encodeGetReply(2, 0x9000, 1), data2, Buffer.alloc(4)]);
  const p = new ReplyParser(PEER);
  p.expectGet(1, 0x1000, 8); // asked 8, got 2: a short reply is legal
  p.expectGet(2, 0x9000, 1);
  p.expectClose();
  const got = [];
  for (let i = 0; i < stream.length; i += 1000) {
    p.push(stream.subarray(i, i + 1000));
    for (let r = p.next(); r; r = p.next()) got.push(r.kind === 'pages' ? { ...r, data: Buffer.from(r.data) } : r);
  }
  t.equal(got.length, 3);
  t.match(got[0], { kind: 'pages', seq: 1, pid: 1, vaddr: 0x1000, nrPages: 2 });
  t.same((got[0] as { data: Buffer }).data, data1);
  t.match(got[1], { kind: 'pages', seq: 2, pid: 2, vaddr: 0x9000, nrPages: 1 });
  t.same((got[1] as { data: Buffer }).data, data2);
  t.same(got[2], { kind: 'close', seq: 3, status: 0 });
  t.equal(p.outstanding, 0);
  t.doesNotThrow(() => p.end());
});

t.test('reply parser rejects replies that do not answer the request', async (t) => {
  const cases: [string, (p: ReplyParser) => Buffer, string, RegExp][] = [
    ['wrong cmd', () => encodeHeader({ cmd: 6, flags: 0, nrPages: 1, vaddr: 0x1000, dstId: 1 }), 'cmd', /cmd 0x6, expected 0x40006/],
    ['vaddr not echoed', () => encodeGetReply(1, 0x2000, 1), 'vaddr', /does not echo/],
    ['dst_id not echoed', () => encodeGetReply(3, 0x1000, 1), 'dst_id', /out of order/],
    ['more pages than asked', () => encodeGetReply(1, 0x1000, 5), 'nr_pages', /out of range 1\.\.4/],
    ['zero pages', () => encodeGetReply(1, 0x1000, 0), 'nr_pages', /nr_pages 0/],
  ];
  for (const [name, make, field, msg] of cases) {
    const p = new ReplyParser(PEER);
    p.expectGet(1, 0x1000, 4);
    p.push(make(p));
    const e = (() => {
      try {
        p.next();
      } catch (e) {
        return e as PageServerProtocolError;
      }
      return null;
    })();
    t.ok(e instanceof PageServerProtocolError, name);
    t.equal(e?.field, field, name);
    t.match(e?.message ?? '', msg, name);
    t.match(e?.message ?? '', /^page-server peer 10\.0\.0\.7:4242: reply 1: /, name);
  }
  const p = new ReplyParser(PEER);
  p.push(Buffer.alloc(HEADER_SIZE));
  t.throws(() => p.next(), /unsolicited/);
  const q = new ReplyParser(PEER);
  q.expectGet(1, 0x1000, 1);
  q.push(encodeGetReply(1, 0x1000, 1));
  q.push(Buffer.alloc(100));
  t.equal(q.next(), null);
  t.throws(() => q.end(), /connection closed inside reply 1: 100 of 4096 data bytes/);
});
