// The page server's bounds on what a client can make it do, over real TCP sockets on 127.0.0.1
// against a real PageServer: connections at once (--max-connections), requests and reply bytes a
// connection leaves unanswered by not reading (--max-outstanding-requests, --max-unsent-bytes: it is
// then not read, so its requests wait in TCP, never in our memory), and time (--idle-timeout-ms: idle
// connections are closed, unless another connection from the same address is busy; one whose
// replies do not move is dropped). Each bound is logged once, naming the peer. Then the CLI, in
// criu's one-restore mode: the bounds apply there too.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { expectedPage } from '../../src/images';
import { PageServer, type LogLevel, type PageServerOptions } from '../../src/server/page-server';
import { encodeClose, encodeGet } from '../../src/protocol/page-server-wire';
import { BASE, ROOT, makeImages, tempDir } from '../helpers/restore';
import { PAGE_SIZE } from '../../src/address';

const P = PAGE_SIZE;
const PAGES = 2048;
const SEED = 7;
const dir = tempDir(t, 'page-server-bounds');
const imagesDir = makeImages(dir, { processes: [{ pid: 1, ppid: 0, regions: [{ name: 'dense', start: BASE, pages: PAGES, kind: 'dense', seed: SEED }] }] });

/**
 * A client that checks replies as they stream in (tens of MiB: never re-concatenated): each is for
 * the next GET it sent (`gets` walks the region), in order, with the image's bytes in its first and
 * last page.
 */
class Client {
  closed = false;
  /** Bytes received in all. */
  received = 0;
  /** Replies received and checked, and how many of them were wrong. */
  replies = 0;
  bad = 0;
  /** GETs sent. */
  asked = 0;
  readonly peer: string;
  private pages = 1;
  private cur: Buffer = Buffer.alloc(32 + P);
  private fill = 0;
  private wake: (() => void) | null = null;

  constructor(readonly sock: net.Socket) {
    this.peer = `${sock.localAddress}:${sock.localPort}`;
    sock.on('data', (c: Buffer) => this.onData(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.closed = true;
      this.poke();
    });
  }

  static connect(port: number, localAddress?: string): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) }, () => resolve(new Client(s)));
      s.once('error', reject);
    });
  }

  /** Sends `n` GETs of `pages` pages, walking the region from where the last one stopped. */
  ask(n: number, pages: number): void {
    if (pages !== this.pages) {
      this.pages = pages;
      this.cur = Buffer.alloc(32 + pages * P);
    }
    this.sock.write(Buffer.concat(Array.from({ length: n }, (_, k) => encodeGet(1, this.vaddrOf(this.asked + k), pages))));
    this.asked += n;
  }


  private vaddrOf(k: number): number {
    return BASE + ((k * this.pages) % PAGES) * P;
  }

  private onData(c: Buffer): void {
    this.received += c.length;
    let o = 0;
    while (o < c.length) {
      const k = Math.min(c.length - o, this.cur.length - this.fill);
      c.copy(this.cur, this.fill, o, o + k);
      this.fill += k;
      o += k;
      if (this.fill === this.cur.length) {
        this.check(this.cur, this.replies++);
        this.fill = 0;
      }
    }
    this.poke();
  }

  private check(r: Buffer, k: number): void {
    const vaddr = this.vaddrOf(k);
    const i = (vaddr - BASE) / P;
    const size = r.length;
    const ok =
      r.readUInt32LE(0) === 0x00040006 &&
      Number(r.readBigUInt64LE(8)) === this.pages &&
      Number(r.readBigUInt64LE(16)) === vaddr &&
      r.subarray(32, 32 + P).equals(expectedPage(vaddr, i, SEED)) &&
      r.subarray(size - P).equals(expectedPage(vaddr + (this.pages - 1) * P, i + this.pages - 1, SEED));
    if (!ok) this.bad++;
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await Promise.race([new Promise<void>((r) => (this.wake = r)), new Promise((r) => setTimeout(r, 50))]);
    }
  }

  /** Waits until every GET sent so far is answered, then checks them all. */
  async answered(t: Test): Promise<void> {
    await this.until(() => this.replies >= this.asked || this.closed, `${this.asked} replies`, 30_000);
    t.equal(this.replies, this.asked, `all ${this.asked} replies received`);
    t.equal(this.bad, 0, 'every reply is for its request, in order, with the image bytes');
  }
}

interface Logged {
  level: LogLevel;
  msg: string;
}

async function start(t: Test, opts: Partial<PageServerOptions>): Promise<{ server: PageServer; port: number; logs: Logged[]; warns: () => string[] }> {
  const logs: Logged[] = [];
  const server = new PageServer({ imagesDir, log: (level, msg) => logs.push({ level, msg }), ...opts });
  const { port } = await server.listen();
  t.teardown(() => server.close());
  return { server, port, logs, warns: () => logs.filter((l) => l.level === 'warn' || l.level === 'error').map((l) => l.msg) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('--max-connections: one more connection is closed at once, logged once with its peer', async (t) => {
  const { server, port, warns } = await start(t, { maxConnections: 2 });
  const a = await Client.connect(port);
  const b = await Client.connect(port);
  a.ask(1, 4);
  await a.answered(t);
  const c = await Client.connect(port);
  const d = await Client.connect(port);
  await c.until(() => c.closed, 'the third connection to be closed');
  await d.until(() => d.closed, 'the fourth connection to be closed');
  t.equal(c.received + d.received, 0, 'nothing is sent on a refused connection');
  t.equal(server.stats.overLimit, 2, 'two connections refused');
  const lines = warns();
  t.equal(lines.length, 1, `one line for the burst: ${JSON.stringify(lines)}`);
  t.equal(lines[0], `page-server peer ${c.peer}: refused: 2 connections open (--max-connections 2)`, 'names the peer and the bound');
  // The first two are still served; once one goes, a new one is taken.
  b.ask(1, 8);
  await b.answered(t);
  a.sock.destroy();
  await t.resolves(
    (async () => {
      for (let i = 0; i < 100 && server.stats.active > 1; i++) await sleep(20);
    })(),
  );
  const e = await Client.connect(port);
  e.ask(2, 16);
  await e.answered(t);
  t.equal(server.stats.overLimit, 2, 'the new connection was not refused');
  b.sock.destroy();
  e.sock.destroy();
});

t.test('--max-outstanding-requests: a client that does not read is not read either; it gets everything once it reads', async (t) => {
  const { server, port, warns } = await start(t, { maxOutstandingRequests: 8, idleTimeoutMs: 0 });
  const c = await Client.connect(port);
  c.sock.pause();
  // 20,000 one-page GETs (640 KB of requests, 82 MB of replies): more replies than the socket buffers hold.
  const N = 20_000;
  c.ask(N, 1);
  const state = () => server.connectionStates()[0]!;
  await c.until(() => !state().reading, 'the server to stop reading');
  const s1 = state();
  await sleep(300);
  const s2 = state();
  t.ok(s2.outstanding <= 8, `at most 8 requests outstanding (${s2.outstanding})`);
  t.equal(s2.bytesRead, s1.bytesRead, `nothing more read while it is over the bound (${s2.bytesRead} of ${N * 32} request bytes read)`);
  t.ok(s2.bytesRead < N * 32 - 256 * 1024, 'the rest of its requests wait in TCP');
  const gets1 = server.stats.gets;
  t.ok(gets1 < N, `${gets1} replies made`);
  c.sock.resume();
  await c.answered(t);
  t.equal(server.stats.gets, N, 'every request answered');
  const lines = warns();
  t.equal(lines.length, 1, `one warning for the connection, however often it went over: ${JSON.stringify(lines)}`);
  t.match(lines[0], new RegExp(`^page-server peer ${c.peer.replace(/\./g, '\\.')}: 8 requests unanswered \\(--max-outstanding-requests 8\\): not reading its requests until it takes its replies$`));
  t.equal(server.stats.throttled, 1);
  c.sock.destroy();
});

t.test('--max-unsent-bytes: bounds the reply bytes a connection can have asked for and not taken', async (t) => {
  const MAX = 4 * 1024 * 1024;
  const { server, port, warns } = await start(t, { maxUnsentBytes: MAX, idleTimeoutMs: 0 });
  const c = await Client.connect(port);
  c.sock.pause();
  const N = 64; // 64 × 1 MiB asked for
  c.ask(N, 256);
  const state = () => server.connectionStates()[0]!;
  await c.until(() => !state().reading, 'the server to stop reading');
  await sleep(200);
  const s = state();
  t.ok(s.unsentBytes >= MAX && s.unsentBytes < MAX + 32 + 256 * P, `${s.unsentBytes} reply bytes owed: the bound, overshot by at most the last request taken`);
  t.ok(s.outstanding < N, `${s.outstanding} of ${N} requests taken`);
  c.sock.resume();
  await c.answered(t);
  const lines = warns();
  t.equal(lines.length, 1, JSON.stringify(lines));
  t.match(lines[0], new RegExp(`^page-server peer ${c.peer.replace(/\./g, '\\.')}: \\d+ bytes of replies not taken \\(--max-unsent-bytes ${MAX}\\): not reading`));
  c.sock.destroy();
});

t.test('--idle-timeout-ms: idle connections are closed; a busy connection from the same address keeps them', async (t) => {
  const IDLE = 600;
  const { server, port, warns } = await start(t, { idleTimeoutMs: IDLE });
  // Two "lanes" of one restore from 127.0.0.1, and one connection from 127.0.0.2.
  const urgent = await Client.connect(port);
  const fill = await Client.connect(port);
  const other = await Client.connect(port, '127.0.0.2');
  urgent.ask(1, 1);
  await urgent.answered(t);
  // The fill lane asks every 100 ms for 1.5 s: the urgent lane, idle all along, stays open.
  const t0 = Date.now();
  let last = 0;
  while (Date.now() - t0 < 1500) {
    fill.ask(1, 4);
    await fill.until(() => fill.replies === fill.asked, 'a fill reply');
    last = Date.now();
    await sleep(100);
  }
  t.equal(fill.bad, 0, 'the fill lane got its pages');
  t.notOk(urgent.closed, 'the idle lane of a busy address is kept open');
  t.ok(other.closed, 'an idle connection from another address was closed');
  const lines = warns();
  t.equal(lines.length, 1, JSON.stringify(lines));
  t.match(lines[0], new RegExp(`^page-server peer ${other.peer.replace(/\./g, "\\.")}: idle for \\d+ ms \\(--idle-timeout-ms ${IDLE}\\) with nothing outstanding: closing connection$`));
  // The address goes quiet: both of its connections are closed about IDLE ms later.
  await urgent.until(() => urgent.closed && fill.closed, 'both lanes to be closed', 5000);
  const after = Date.now() - last;
  t.ok(after >= IDLE - 20 && after < IDLE + 1500, `closed ${after} ms after the address went quiet`);
  t.equal(server.stats.dropped, 3);
  t.equal(warns().length, 3, 'one line per connection');
});

t.test('--idle-timeout-ms: a client whose replies do not move is dropped; a slow reader is not', async (t) => {
  const IDLE = 400;
  const { server, port, warns } = await start(t, { idleTimeoutMs: IDLE });
  const slow = await Client.connect(port);
  const stuck = await Client.connect(port);
  stuck.sock.pause();
  slow.sock.pause();
  // 48 MiB asked by each: far more than the socket buffers hold.
  stuck.ask(48, 256);
  slow.ask(48, 256);
  // The slow reader reads for 30 ms every 150 ms.
  let reading = true;
  const readingLoop = (async () => {
    while (reading && !slow.closed) {
      slow.sock.resume();
      await sleep(30);
      slow.sock.pause();
      await sleep(150);
    }
  })();
  const t0 = Date.now();
  await stuck.until(() => server.stats.dropped > 0, 'the stuck client to be dropped', 5000);
  const after = Date.now() - t0;
  t.ok(after >= IDLE - 20 && after < IDLE + 2000, `dropped after ${after} ms`);
  // the dropped connection leaves the server's list at its 'close', a moment after the drop
  await stuck.until(() => server.connectionStates().length === 1, 'the dropped connection to close', 2000).catch(() => undefined);
  t.equal(server.connectionStates().length, 1, 'only the slow reader is left');
  // A reset: once it reads, it finds its connection gone, with fewer replies than it asked for.
  stuck.sock.resume();
  await stuck.until(() => stuck.closed, 'the stuck client to see the reset');
  t.ok(stuck.replies < 48, `the stuck client got ${stuck.replies} of 48 replies`);
  // The loop ends first: stopped mid-read, its next pause() would come after this resume() and
  // leave the slow reader paused for good (a two-jobs run of the suite timed out so).
  reading = false;
  await readingLoop;
  slow.sock.resume();
  await slow.answered(t);
  t.notOk(slow.closed, 'the slow reader got every reply and is still connected');
  const lines = warns();
  t.equal(lines.length, 1, JSON.stringify(lines));
  t.match(lines[0], new RegExp(`^page-server peer ${stuck.peer.replace(/\./g, '\\.')}: its replies have not moved for \\d+ ms \\(--idle-timeout-ms ${IDLE}\\) with \\d+ requests and \\d+ bytes unanswered \\(it does not read them\\): dropping connection$`));
  t.equal(server.stats.dropped, 1);
  t.equal(server.problems.length, 1, 'a problem of the session');
  slow.sock.destroy();
});

t.test('CLI without --keep-serving (one restore): the bounds apply; a refused extra connection does not fail the session', async (t) => {
  const cli = path.join(ROOT, 'dist/src/cli/main.js');
  const run = (args: string[]) => {
    const child = spawn(process.execPath, [cli, 'page-server', '--lazy-pages', '-D', imagesDir, '--address', '127.0.0.1', '--port', '0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exit = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    const port = async () => {
      for (let i = 0; i < 200; i++) {
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(stderr);
        if (m) return Number(m[1]);
        await sleep(25);
      }
      throw new Error(`no ready line: ${stderr}`);
    };
    return { child, exit, port, stderr: () => stderr };
  };

  const one = run(['--max-connections', '1']);
  const a = await Client.connect(await one.port());
  a.ask(1, 2);
  await a.answered(t);
  const b = await Client.connect(await one.port());
  await b.until(() => b.closed, 'the second connection to be closed');
  a.sock.write(encodeClose());
  await a.until(() => a.received >= 32 + 2 * P + 4, 'the CLOSE reply');
  a.sock.end();
  t.equal(await one.exit, 0, `the session ends with its restore, exit 0: ${one.stderr()}`);
  t.match(one.stderr(), new RegExp(`Warn .*page-server peer ${b.peer.replace(/\./g, '\\.')}: refused: 1 connection open \\(--max-connections 1\\)`));

  const idle = run(['--idle-timeout-ms', '200']);
  const c = await Client.connect(await idle.port());
  t.equal(await idle.exit, 1, 'a session whose connection went idle ended badly');
  t.match(idle.stderr(), new RegExp(`faultline: error: page-server peer ${c.peer.replace(/\./g, '\\.')}: idle for \\d+ ms \\(--idle-timeout-ms 200\\) with nothing outstanding: closing connection`));

  for (const [flag, v] of [['--max-connections', '0'], ['--max-outstanding-requests', 'x'], ['--max-unsent-bytes', '1t'], ['--idle-timeout-ms', '1.5']]) {
    const bad = run([flag!, v!]);
    t.equal(await bad.exit, 2, `${flag} ${v}: usage error`);
    t.match(bad.stderr(), new RegExp(`^faultline: error: ${flag} ${v}: must be a whole number`));
  }
});
