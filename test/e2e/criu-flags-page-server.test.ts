// `faultline page-server --lazy-pages` as criu's users run it: zdtm's exact command line, exit 0
// once its restore session is over (zdtm waits for that), -d, criu's defaults (port chosen by the
// kernel, every IPv4 address), --keep-serving for many sessions, and TLS peer-name checks.
import t, { type Test } from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { CLI } from '../../src/target/run';
import { encodeClose, encodeGet } from '../../src/protocol/page-server-wire';
import { BASE, MiB, denseTree, makeImages, tempDir } from '../helpers/restore';

const P = 4096;

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

interface Server {
  child: ChildProcess;
  stderr: () => string;
  exit: Promise<number | null>;
}

/** Starts the CLI and waits for its --status-fd byte (fd 3). */
async function start(t: Test, args: string[], cwd?: string): Promise<Server> {
  const child = spawn(process.execPath, [CLI, 'page-server', ...args, '--status-fd', '3'], { cwd, stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const ready = await Promise.race([new Promise<boolean>((r) => (child.stdio[3] as NodeJS.ReadableStream).once('data', () => r(true))), exit.then(() => false)]);
  if (!ready) throw new Error(`page server did not start: ${err}`);
  return { child, stderr: () => err, exit };
}

/** One restore session as a lazy-pages client runs it: GETs, CLOSE, status, hang up. */
async function session(port: number, gets: number, opts: { connect?: () => net.Socket } = {}): Promise<{ pages: number; status: number }> {
  const s = opts.connect ? opts.connect() : net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    s.once(opts.connect ? 'secureConnect' : 'connect', () => resolve());
    s.once('error', reject);
  });
  let buf = Buffer.alloc(0);
  s.on('data', (d: Buffer) => (buf = Buffer.concat([buf, d])));
  for (let i = 0; i < gets; i++) s.write(encodeGet(1, BASE + i * P, 1));
  s.write(encodeClose());
  const want = gets * (32 + P) + 4;
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  for (let i = 0; i < 500 && buf.length < want; i++) await new Promise((r) => setTimeout(r, 10));
  s.end();
  await closed;
  return { pages: buf.length >= want ? gets : -1, status: buf.length >= want ? buf.readInt32LE(want - 4) : -1 };
}

const dir = tempDir(t, 'ps-flags');
const images = makeImages(dir, denseTree(1, 12 * MiB));

t.test("zdtm's exact command line: serves one session and exits 0; pidfile and log in the images dir", async (t) => {
  const cwd = path.join(dir, 'zdtm-cwd');
  fs.mkdirSync(cwd);
  const port = await freePort();
  const s = await start(t, ['--no-default-config', '--log-file', 'page-server.log', '--images-dir', path.relative(cwd, images), '--verbosity=4', '--pidfile', 'ps.pid', '--port', String(port), '--lazy-pages'], cwd);
  t.equal(Number(fs.readFileSync(path.join(images, 'ps.pid'), 'utf8')), s.child.pid, 'ps.pid (relative) is in the images dir');
  const r = await session(port, 3);
  t.same(r, { pages: 3, status: 0 }, 'GETs answered, CLOSE answered 0');
  t.equal(await s.exit, 0, 'exits 0 once the session is over');
  t.same(fs.readdirSync(cwd), [], 'nothing in the current directory');
  const log = fs.readFileSync(path.join(images, 'page-server.log'), 'utf8');
  t.match(log, /\) \d+: page server: session over after 1 connection\(s\), 3 GETs, 3 pages, 0 refused/);
  t.notMatch(log, /Error|Warn/, "nothing for zdtm's grep");
});

t.test("criu's defaults: the kernel picks the port, every IPv4 address", async (t) => {
  const s = await start(t, ['--lazy-pages', '-D', images]);
  const m = /^faultline page-server: listening on 0\.0\.0\.0:(\d+)$/m.exec(s.stderr());
  t.ok(m && Number(m[1]) > 0, `ready line: ${s.stderr()}`);
  t.same(await session(Number(m![1]), 1), { pages: 1, status: 0 });
  t.equal(await s.exit, 0);
});

t.test('--keep-serving: two restores one after the other, then SIGTERM ends it with 0', async (t) => {
  const port = await freePort();
  const s = await start(t, ['--lazy-pages', '--keep-serving', '-D', images, '--address', '127.0.0.1', '--port', String(port)]);
  t.same(await session(port, 2), { pages: 2, status: 0 }, 'first restore');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(s.child.exitCode, null, 'still serving after the first');
  t.same(await session(port, 4), { pages: 4, status: 0 }, 'second restore');
  s.child.kill('SIGTERM');
  t.equal(await s.exit, 0);
});

t.test('a session that ends in a refusal: exit 1, one line naming the peer and the fault', async (t) => {
  const port = await freePort();
  const s = await start(t, ['--lazy-pages', '-D', images, '--port', String(port), '-o', path.join(dir, 'bad.log')]);
  const c = net.connect({ host: '127.0.0.1', port });
  await new Promise((r) => c.once('connect', r));
  c.write(encodeGet(99, BASE, 1));
  c.resume();
  await new Promise((r) => c.once('close', r));
  t.equal(await s.exit, 1);
  const lines = s.stderr().trim().split('\n').filter((l) => l.startsWith('faultline: error:'));
  t.equal(lines.length, 1);
  t.match(lines[0], /^faultline: error: page-server peer 127\.0\.0\.1:\d+: request 1: GET pid 99 .*unknown pid/);
  const log = fs.readFileSync(path.join(dir, 'bad.log'), 'utf8');
  t.match(log, /Warn  \(faultline\): page-server peer 127\.0\.0\.1:\d+: request 1: GET pid 99/);
  t.match(log, /Error \(faultline\): page server: the restore session ended badly/);
});

t.test('-d: detaches once listening, the pidfile names the daemon, which exits after its session', async (t) => {
  const port = await freePort();
  const r = spawnSync(process.execPath, [CLI, 'page-server', '-d', '--lazy-pages', '-D', images, '-W', dir, '--pidfile', 'psd.pid', '-o', 'psd.log', '--port', String(port)], { encoding: 'utf8', timeout: 20_000 });
  t.equal(r.status, 0, r.stderr);
  const pid = Number(fs.readFileSync(path.join(dir, 'psd.pid'), 'utf8'));
  t.ok(pid > 0 && pid !== r.pid);
  t.doesNotThrow(() => process.kill(pid, 0), 'the daemon runs');
  t.same(await session(port, 1), { pages: 1, status: 0 });
  let gone = false;
  for (let i = 0; i < 200 && !gone; i++) {
    await new Promise((res) => setTimeout(res, 20));
    try {
      process.kill(pid, 0);
    } catch {
      gone = true;
    }
  }
  t.ok(gone, 'the daemon exited after its session');
  t.match(fs.readFileSync(path.join(dir, 'psd.log'), 'utf8'), /listening on 0\.0\.0\.0:\d+/);
});

t.test("--tls: the client's certificate must name our --address unless --tls-no-cn-verify", async (t) => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    t.plan(0, 'skip: openssl is not installed, cannot make test certificates');
    return;
  }
  const certs = path.join(dir, 'certs');
  fs.mkdirSync(certs);
  const mk = (name: string, ip: string) => {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', `/CN=${name}`, '-addext', `subjectAltName=IP:${ip}`,
      '-keyout', path.join(certs, `${name}.key`), '-out', path.join(certs, `${name}.pem`)], { stdio: 'ignore' });
    return { key: fs.readFileSync(path.join(certs, `${name}.key`)), cert: fs.readFileSync(path.join(certs, `${name}.pem`)) };
  };
  mk('server', '127.0.0.1');
  const good = mk('good', '127.0.0.1');
  const other = mk('other', '10.9.9.9');
  // Both clients are trusted (the CA file holds both certificates): only the name differs.
  fs.writeFileSync(path.join(certs, 'ca.pem'), Buffer.concat([good.cert, other.cert]));
  const tlsArgs = ['--tls', '--tls-cert', 'certs/server.pem', '--tls-key', 'certs/server.key', '--tls-cacert', 'certs/ca.pem'];
  const client = (port: number, id: { key: Buffer; cert: Buffer }) => () =>
    tls.connect({ host: '127.0.0.1', port, ...id, ca: fs.readFileSync(path.join(certs, 'server.pem')), checkServerIdentity: () => undefined });

  const port = await freePort();
  const s = await start(t, ['--lazy-pages', '--keep-serving', '-D', images, '-W', dir, '--address', '127.0.0.1', '--port', String(port), ...tlsArgs]);
  t.same(await session(port, 2, { connect: client(port, good) }), { pages: 2, status: 0 }, 'a certificate for 127.0.0.1 is served');
  const refused = await session(port, 1, { connect: client(port, other) }).catch((e: Error) => e);
  t.ok(refused instanceof Error || refused.pages === -1, 'a certificate for 10.9.9.9 gets nothing');
  for (let i = 0; i < 100 && !/does not name/.test(s.stderr()); i++) await new Promise((r) => setTimeout(r, 20));
  t.match(s.stderr(), /Warn  \(faultline\): page-server peer 127\.0\.0\.1:\d+: the client's certificate does not name 127\.0\.0\.1 .*--tls-no-cn-verify/);
  s.child.kill('SIGTERM');
  t.equal(await s.exit, 0);

  const port2 = await freePort();
  const s2 = await start(t, ['--lazy-pages', '-D', images, '-W', dir, '--address', '127.0.0.1', '--port', String(port2), ...tlsArgs, '--tls-no-cn-verify']);
  t.same(await session(port2, 1, { connect: client(port2, other) }), { pages: 1, status: 0 }, 'with --tls-no-cn-verify the name is not checked');
  t.equal(await s2.exit, 0, 'and the session ends the server with 0');

  const bad = spawnSync(process.execPath, [CLI, 'page-server', '--lazy-pages', '-D', images, '-W', dir, ...tlsArgs, '--tls-cacrl', 'certs/nope.crl'], { encoding: 'utf8' });
  t.equal(bad.status, 2);
  t.match(bad.stderr, /^faultline: error: --tls-cacrl certs\/nope\.crl: cannot read .*\/certs\/nope\.crl: ENOENT\n$/);
});
