// The page server over real TCP (and TLS) sockets on 127.0.0.1, driven by a raw node:net client:
// exact bytes, FIFO replies, clamping at entry/range ends, several clients, and every kind of bad
// request ending that connection with one log line while the server keeps serving others.
import t, { type Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { PE_LAZY, PE_PRESENT, ProcessImages, writeImageSet, type EntrySpec } from '../../src/images';
import { PageServer, type LogLevel } from '../../src/server/page-server';
import { encodeClose, encodeGet, encodeHeader, PS_IOV_GET } from '../../src/protocol/page-server-wire';
import { BASE, ROOT, tempDir } from '../helpers/restore';
import { PAGE_SIZE } from '../../src/address';

const P = PAGE_SIZE;
const LAZY = PE_LAZY | PE_PRESENT;
// pid 1: A (2 entries, contiguous in file) | B adjacent VMA | C: lazy entry then a non-lazy one.
const A = BASE;
const A_PAGES = 1100;
const B = A + A_PAGES * P;
const B_PAGES = 8;
const C = BASE + 0x1000_0000;
const C_LAZY = 16;
const C_EAGER = 16;
const SPARSE = BASE + 0x2000_0000; // lazy pages at every 4th page, holes between
// pid 2: one 512-page region at the same address as pid 1's A, with different bytes.
const D_PAGES = 512;

/** Independent of the image reader: what page `vaddr` of `pid` holds. */
function pageBytes(pid: number, vaddr: number): Buffer {
  const b = Buffer.allocUnsafe(P);
  const k = (vaddr / P) & 0xff;
  for (let i = 0; i < P; i++) b[i] = (i * 7 + k * 13 + pid * 101) & 0xff;
  b.writeBigUInt64LE(BigInt(vaddr), 0);
  b.writeUInt32LE(pid, 8);
  return b;
}

function entry(pid: number, vaddr: number, nrPages: number, flags: number): EntrySpec {
  return {
    vaddr,
    nrPages,
    flags,
    data: (dst: Buffer) => {
      for (let j = 0; j < nrPages; j++) pageBytes(pid, vaddr + j * P).copy(dst, j * P);
    },
  };
}

function makeTestImages(dir: string): string {
  const images = path.join(dir, 'images');
  writeImageSet(images, {
    processes: [
      {
        pid: 1,
        ppid: 0,
        vmas: [
          { start: A, end: A + A_PAGES * P },
          { start: B, end: B + B_PAGES * P },
          { start: C, end: C + (C_LAZY + C_EAGER) * P },
          { start: SPARSE, end: SPARSE + 64 * P },
        ],
        entries: [
          entry(1, A, 1024, LAZY),
          entry(1, A + 1024 * P, A_PAGES - 1024, LAZY),
          entry(1, B, B_PAGES, LAZY),
          entry(1, C, C_LAZY, LAZY),
          entry(1, C + C_LAZY * P, C_EAGER, PE_PRESENT),
          ...Array.from({ length: 16 }, (_, i) => entry(1, SPARSE + i * 4 * P, 1, LAZY)),
        ],
      },
      { pid: 2, ppid: 1, vmas: [{ start: A, end: A + D_PAGES * P }], entries: [entry(2, A, D_PAGES, LAZY)] },
    ],
  });
  return images;
}

/** A client that only collects bytes; the tests decode replies by hand. */
class Raw {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  closed = false;
  error: Error | null = null;

  constructor(readonly sock: net.Socket) {
    sock.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.poke();
    });
    sock.on('error', (e) => {
      this.error = e;
    });
    sock.on('close', () => {
      this.closed = true;
      this.poke();
    });
    sock.on('end', () => this.poke());
  }

  static connect(port: number): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  get localPort(): number {
    return this.sock.localPort!;
  }

  send(b: Buffer): void {
    this.sock.write(b);
  }

  get received(): number {
    return this.buf.length;
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed after ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Waits for the server to close; returns whatever arrived before. */
  async untilClosed(): Promise<Buffer> {
    while (!this.closed) await new Promise<void>((r) => (this.wake = r));
    return this.buf;
  }

  async reply(): Promise<{ cmd: number; pad: number; nrPages: number; vaddr: number; dstId: number; data: Buffer }> {
    const h = await this.read(32);
    const r = {
      cmd: h.readUInt32LE(0),
      pad: h.readUInt32LE(4),
      nrPages: Number(h.readBigUInt64LE(8)),
      vaddr: Number(h.readBigUInt64LE(16)),
      dstId: Number(h.readBigUInt64LE(24)),
    };
    return { ...r, data: Buffer.from(await this.read(r.nrPages * P)) };
  }
}

interface Logged {
  level: LogLevel;
  msg: string;
}

const dir = tempDir(t, 'page-server');
const imagesDir = makeTestImages(dir);
const logs: Logged[] = [];
const server = new PageServer({ imagesDir, log: (level, msg) => logs.push({ level, msg }) });
const reference = new Map([1, 2].map((pid) => [pid, ProcessImages.open(imagesDir, pid)]));
let port = 0;

t.before(async () => {
  port = (await server.listen()).port;
});
t.teardown(() => server.close());
t.beforeEach(() => {
  logs.length = 0;
});

/** The bytes the server must send for (pid, vaddr, pages): from the reader and from the formula. */
function expectBytes(t: Test, pid: number, vaddr: number, pages: number, data: Buffer, what: string): void {
  const loc = reference.get(pid)!.locate(vaddr, pages);
  t.ok(loc && loc.pages >= pages, `${what}: reader has ${pages} contiguous pages`);
  const fromImages = loc!.buf.subarray(loc!.offset, loc!.offset + pages * P);
  t.ok(data.equals(fromImages), `${what}: bytes equal ProcessImages.locate`);
  let bad = -1;
  for (let i = 0; i < pages && bad < 0; i++) if (!data.subarray(i * P, (i + 1) * P).equals(pageBytes(pid, vaddr + i * P))) bad = i;
  t.equal(bad, -1, `${what}: every page holds its own address and pid`);
}

async function getOk(t: Test, c: Raw, pid: number, vaddr: number, ask: number, expectPages: number): Promise<void> {
  c.send(encodeGet(pid, vaddr, ask));
  const r = await c.reply();
  t.equal(r.cmd, 0x00040006, 'reply cmd ADD_F|PE_PRESENT');
  t.equal(r.pad, 0);
  t.equal(r.vaddr, vaddr, 'vaddr echoed');
  t.equal(r.dstId, pid, 'dst_id echoed');
  t.equal(r.nrPages, expectPages, `GET ${ask} pages at 0x${vaddr.toString(16)} → ${expectPages}`);
  expectBytes(t, pid, vaddr, r.nrPages, r.data, `pid ${pid} 0x${vaddr.toString(16)}`);
}

t.test('GET returns exactly the image bytes, pid by pid', async (t) => {
  const c = await Raw.connect(port);
  await getOk(t, c, 1, A, 1, 1);
  await getOk(t, c, 2, A, 1, 1);
  await getOk(t, c, 1, A + 5 * P, 64, 64);
  await getOk(t, c, 2, A + 100 * P, 412, 412);
  await getOk(t, c, 1, SPARSE + 8 * P, 4, 1); // a lone lazy page between holes
  await getOk(t, c, 1, C, C_LAZY, C_LAZY);
  c.sock.destroy();
  t.equal(logs.filter((l) => l.level === 'warn' || l.level === 'error').length, 0, 'nothing refused');
});

t.test('a GET spanning two pagemap entries', async (t) => {
  const c = await Raw.connect(port);
  // A's two entries are contiguous in memory and in pages-1.img: one reply may cover both.
  await getOk(t, c, 1, A + 1000 * P, 100, 100);
  // A and B are separate VMAs (and entries): clamped at A's end, the rest comes with a second GET.
  await getOk(t, c, 1, B - 4 * P, 8, 4);
  await getOk(t, c, 1, B, 4, 4);
  // C's lazy entry is followed by non-lazy data in the same file run: never served, even adjacent.
  await getOk(t, c, 1, C + 10 * P, 20, C_LAZY - 10);
  // Asking past the end of a whole region is clamped, not refused.
  await getOk(t, c, 2, A + (D_PAGES - 2) * P, 100, 2);
  c.send(encodeClose());
  t.same(await c.read(4), Buffer.alloc(4));
  c.sock.end();
  await c.untilClosed();
});

t.test('a pipeline of many GETs is answered in request order', async (t) => {
  const c = await Raw.connect(port);
  let seed = 12345;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  const reqs: { pid: number; vaddr: number; ask: number; want: number }[] = [];
  for (let i = 0; i < 300; i++) {
    const pid = 1 + rnd(2);
    const pages = pid === 1 ? A_PAGES : D_PAGES;
    const first = rnd(pages);
    const ask = 1 + rnd(32);
    reqs.push({ pid, vaddr: A + first * P, ask, want: Math.min(ask, pages - first) });
  }
  c.send(Buffer.concat(reqs.map((r) => encodeGet(r.pid, r.vaddr, r.ask))));
  let bad = 0;
  for (const [i, r] of reqs.entries()) {
    const got = await c.reply();
    const loc = reference.get(r.pid)!.locate(r.vaddr, r.want)!;
    if (got.vaddr !== r.vaddr || got.dstId !== r.pid || got.nrPages !== r.want || !got.data.equals(loc.buf.subarray(loc.offset, loc.offset + r.want * P))) {
      if (bad++ < 3) t.fail(`reply ${i + 1}: ${JSON.stringify({ ...got, data: undefined })} for ${JSON.stringify(r)}`);
    }
  }
  t.equal(bad, 0, `${reqs.length} replies in order with the right bytes`);
  c.send(encodeClose());
  t.same(await c.read(4), Buffer.alloc(4), 'CLOSE answered with int32 0');
  t.equal(c.received, 0, 'nothing after the CLOSE status');
  c.sock.end();
  await c.untilClosed();
  t.pass('server closes after the client does');
});

t.test('two concurrent connections, requests interleaved', async (t) => {
  const [c1, c2] = await Promise.all([Raw.connect(port), Raw.connect(port)]);
  c1.send(Buffer.concat([encodeGet(1, A, 300), encodeGet(1, A + 300 * P, 300)]));
  c2.send(Buffer.concat([encodeGet(2, A, 200), encodeGet(2, A + 200 * P, 300)]));
  const [a, b] = await Promise.all([
    (async () => [await c1.reply(), await c1.reply()])(),
    (async () => [await c2.reply(), await c2.reply()])(),
  ]);
  expectBytes(t, 1, A, 300, a[0]!.data, 'conn 1 reply 1');
  expectBytes(t, 1, A + 300 * P, 300, a[1]!.data, 'conn 1 reply 2');
  expectBytes(t, 2, A, 200, b[0]!.data, 'conn 2 reply 1');
  expectBytes(t, 2, A + 200 * P, 300, b[1]!.data, 'conn 2 reply 2');
  for (const c of [c1, c2]) {
    c.send(encodeClose());
    t.same(await c.read(4), Buffer.alloc(4));
    c.sock.end();
  }
  await Promise.all([c1.untilClosed(), c2.untilClosed()]);
});

t.test('a client that does not read holds the server back (backpressure)', async (t) => {
  const c = await Raw.connect(port);
  c.sock.pause();
  const before = server.stats.gets;
  // 200 × 4.3 MiB of replies asked for; only what fits in the socket buffers may be produced.
  c.send(Buffer.concat(Array.from({ length: 200 }, () => encodeGet(1, A, A_PAGES))));
  await new Promise((r) => setTimeout(r, 300));
  const served = server.stats.gets - before;
  t.ok(served < 20, `server stopped after ${served} replies while the client read nothing`);
  c.sock.resume();
  await c.reply();
  await c.reply();
  await new Promise((r) => setTimeout(r, 100));
  t.ok(server.stats.gets - before > served, 'reading resumes the server');
  c.sock.destroy();
  await c.untilClosed();
  await getFresh(t);
});

/** A new connection is still served after something went wrong on another. */
async function getFresh(t: Test): Promise<void> {
  const c = await Raw.connect(port);
  await getOk(t, c, 2, A + 7 * P, 2, 2);
  c.sock.destroy();
}

async function refused(t: Test, bytes: Buffer, field: RegExp, reason: RegExp, opts: { end?: boolean; afterReplies?: number } = {}): Promise<void> {
  const c = await Raw.connect(port);
  const peer = `127.0.0.1:${c.localPort}`;
  c.send(bytes);
  if (opts.end) c.sock.end();
  for (let i = 0; i < (opts.afterReplies ?? 0); i++) await c.reply();
  const rest = await c.untilClosed();
  t.equal(rest.length, 0, 'no data for the bad request');
  const lines = logs.filter((l) => l.level === 'warn' || l.level === 'error');
  t.equal(lines.length, 1, `one log line: ${JSON.stringify(lines)}`);
  const msg = lines[0]?.msg ?? '';
  t.ok(msg.startsWith(`page-server peer ${peer}: request `), `names the peer: ${msg}`);
  t.match(msg, reason, 'says why');
  t.match(msg, field, 'names the field');
  t.match(msg, /closing connection$/);
  t.notMatch(msg, /\n/, 'one line');
  await getFresh(t);
}

const get = (mut: (b: Buffer) => void) => {
  const b = encodeGet(1, A, 1);
  mut(b);
  return b;
};

t.test('refused: unknown command', (t) => refused(t, get((b) => b.writeUInt32LE(0x55, 0)), /cmd|command/, /unknown command 0x55/));
t.test('refused: dump-side command (OPEN2)', (t) => refused(t, get((b) => b.writeUInt32LE(4, 0)), /command/, /OPEN2 \(4\) is not served/));
t.test('accepted: garbage in the padding bytes 4..7, as CRIU\'s client sends them', async (t) => {
  const c = await Raw.connect(port);
  c.send(get((b) => b.writeUInt32LE(0x7f93, 4)));
  const r = await c.reply();
  t.equal(r.cmd, 0x00040006, 'answered with ADD_F|PE_PRESENT');
  t.equal(r.nrPages, 1);
  expectBytes(t, 1, A, 1, r.data, 'the page asked for');
  const close = encodeClose();
  close.writeUInt32LE(0xffffffff, 4);
  c.send(close);
  t.same(await c.read(4), Buffer.alloc(4), 'CLOSE with garbage padding answered with status 0');
  c.sock.end();
  await c.untilClosed();
  t.same(logs.filter((l) => l.level === 'warn' || l.level === 'error'), [], 'nothing logged as a problem');
});
t.test('refused: nr_pages 0', (t) => refused(t, get((b) => b.writeBigUInt64LE(0n, 8)), /nr_pages/, /nr_pages 0 out of range/));
t.test('refused: huge nr_pages', (t) => refused(t, get((b) => b.writeBigUInt64LE(1n << 40n, 8)), /nr_pages/, /nr_pages 1099511627776 out of range 1\.\.1048576/));
t.test('refused: unaligned vaddr', (t) => refused(t, get((b) => b.writeBigUInt64LE(BigInt(A + 12), 16)), /vaddr/, /not page aligned/));
t.test('refused: unknown pid', (t) => refused(t, encodeGet(99, A, 1), /dst_id/, /GET pid 99 .*unknown pid/));
t.test('refused: vaddr of non-lazy data', (t) => refused(t, encodeGet(1, C + C_LAZY * P, 1), /vaddr/, /outside every lazy \(PE_LAZY\) range of pid 1/));
t.test('refused: vaddr in a hole between lazy pages', (t) => refused(t, encodeGet(1, SPARSE + P, 1), /vaddr/, /outside every lazy/));
t.test('refused: vaddr outside every VMA', (t) => refused(t, encodeGet(2, B, 1), /vaddr/, /outside every lazy/));
t.test('refused: truncated header, then close', (t) => refused(t, encodeGet(1, A, 1).subarray(0, 13), /header/, /connection closed inside request 1: 13 of 32 header bytes/, { end: true }));
t.test('refused: garbage bytes (an HTTP request)', (t) => refused(t, Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n'), /command/, /unknown command 0x20544547/));
t.test('refused: bad request after good ones; earlier replies still arrive', (t) =>
  refused(t, Buffer.concat([encodeGet(1, A, 2), encodeGet(2, A, 3), encodeHeader({ cmd: PS_IOV_GET, flags: 0, nrPages: 1, vaddr: 0x1000, dstId: 1 })]), /vaddr/, /request 3: .*outside every lazy/, {
    afterReplies: 2,
  }),
);
t.test('refused: bytes after CLOSE', async (t) => {
  const c = await Raw.connect(port);
  c.send(Buffer.concat([encodeClose(), Buffer.from('x')]));
  t.same(await c.read(4), Buffer.alloc(4), 'CLOSE still answered');
  await c.untilClosed();
  t.match(logs.find((l) => l.level === 'warn')?.msg ?? '', /page-server peer 127\.0\.0\.1:\d+: request 2: 1 bytes after CLOSE/);
  await getFresh(t);
});

t.test('image errors and busy ports are reported at start-up', async (t) => {
  t.throws(() => new PageServer({ imagesDir: path.join(dir, 'nope') }), /inventory\.img/);
  const other = new PageServer({ imagesDir, port });
  await t.rejects(other.listen(), { message: `page server: cannot listen on 127.0.0.1:${port}: EADDRINUSE`, code: 'EADDRINUSE' });
});

t.test('CLI --keep-serving: listens, writes --status-fd, serves, exits 0 on SIGTERM', async (t) => {
  const cli = path.join(ROOT, 'dist/src/cli/main.js');
  const child = spawn(process.execPath, [cli, 'page-server', '--lazy-pages', '--keep-serving', '-D', imagesDir, '--address', '127.0.0.1', '--port', '0', '--status-fd', '3'], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const status = await new Promise<Buffer>((r) => (child.stdio[3] as NodeJS.ReadableStream).once('data', (d: Buffer) => r(d)));
  t.same(status, Buffer.from([0]), 'NUL on --status-fd');
  const m = /faultline page-server: listening on 127\.0\.0\.1:(\d+)\n/.exec(stderr);
  t.ok(m, `ready line: ${stderr}`);
  const c = await Raw.connect(Number(m![1]));
  await getOk(t, c, 1, A, 3, 3);
  c.sock.destroy();
  const code = await new Promise<number | null>((r) => {
    child.once('exit', (c) => r(c));
    child.kill('SIGTERM');
  });
  t.equal(code, 0, 'exit 0 on SIGTERM');

  const bad = spawn(process.execPath, [cli, 'page-server', '--lazy-pages', '-D', path.join(dir, 'nope')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  bad.stderr!.on('data', (d) => (err += d));
  const badCode = await new Promise<number | null>((r) => bad.once('exit', (c) => r(c)));
  t.equal(badCode, 1);
  t.match(err, /^faultline: error: .*inventory\.img.*\n$/);
  t.equal(err.split('\n').length, 2, 'one line');
});

t.test('TLS with client certificates', async (t) => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    t.plan(0, 'skip: openssl is not installed, cannot make test certificates');
    return;
  }
  const certDir = path.join(dir, 'certs');
  fs.mkdirSync(certDir);
  // Self-signed EC certificates (cheap to make); each side trusts the other's certificate directly.
  const mk = (name: string) => {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1',
        '-keyout', path.join(certDir, `${name}.key`), '-out', path.join(certDir, `${name}.pem`)],
      { stdio: 'ignore' },
    );
    return { key: fs.readFileSync(path.join(certDir, `${name}.key`)), cert: fs.readFileSync(path.join(certDir, `${name}.pem`)) };
  };
  const srv = mk('server');
  const cli = mk('client');
  const stranger = mk('stranger');
  const tlsLogs: Logged[] = [];
  const ts = new PageServer({ imagesDir, tls: { ...srv, ca: cli.cert }, log: (level, msg) => tlsLogs.push({ level, msg }) });
  const { port: tport } = await ts.listen();
  t.teardown(() => ts.close());

  const connect = (id?: { key: Buffer; cert: Buffer }) =>
    new Promise<Raw>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: tport, ca: srv.cert, ...(id ?? {}) }, () => resolve(new Raw(s)));
      s.once('error', reject);
    });

  const ok = await connect(cli);
  await getOk(t, ok, 1, A + 50 * P, 40, 40);
  await getOk(t, ok, 2, A, D_PAGES, D_PAGES);
  ok.send(encodeClose());
  t.same(await ok.read(4), Buffer.alloc(4), 'CLOSE over TLS');
  ok.sock.end();
  await ok.untilClosed();

  for (const [name, id] of [['no certificate', undefined], ['an untrusted certificate', stranger]] as const) {
    tlsLogs.length = 0;
    let c: Raw | null = null;
    try {
      c = await connect(id);
      // TLS 1.3: the client may finish its handshake before the server rejects its certificate.
      c.send(encodeGet(1, A, 1));
      await c.untilClosed();
      t.equal(c.received, 0, `${name}: no page data`);
    } catch (e) {
      t.pass(`${name}: handshake refused (${(e as Error).message})`);
    }
    for (let i = 0; i < 50 && tlsLogs.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    t.match(tlsLogs.find((l) => l.level === 'warn')?.msg ?? '', /^page-server peer 127\.0\.0\.1:\d+: TLS handshake failed: .*; closing connection$/, `${name}: one log line`);
  }
  t.equal(ts.stats.gets, 2, 'only the authenticated client was served');
});
