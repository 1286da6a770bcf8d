// Shared pieces of the real-CRIU end-to-end tests (criu-remote, criu-scale, criu-failstop): dump the
// project's workload tree with `criu dump`, restore it with `criu restore --lazy-pages` served by a
// lazy-pages daemon (faultline's or criu's) that reads the local images or a page server (faultline's
// or criu's), possibly across the fl-src/fl-dst network namespaces and with TLS, and check what
// every restored process found when it verified its own memory word by word.
import type { Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { tempDir, ROOT } from './restore';
import {
  criuDump,
  criuRestoreLazy,
  startLazyDaemon,
  startPageServer,
  type CriuRestored,
  type DaemonExit,
  type LazyDaemon,
  type LazyDaemonKind,
  type TlsFiles,
} from '../../src/criu/run';
import {
  WORDS_PER_PAGE,
  expectedPages,
  killTree,
  signalTree,
  startWorkload,
  waitResults,
  type WorkloadAction,
  type WorkloadResult,
} from '../../src/criu/workload';

export const NETNS = path.join(ROOT, 'scripts/netns.sh');

export interface Dumped {
  dir: string;
  /** The whole dump: what `criu restore` and a page server read. */
  images: string;
  /**
   * The same without pages-*.img: what a lazy-pages daemon with --page-server gets, so that every
   * lazy page it serves must have crossed the connection (criu restore itself still needs the
   * pages files: it copies the non-lazy pages, stacks for one, before the tree runs).
   */
  lazyImages: string;
  /** Where the restored processes write result-<index>.json (baked into their memory at dump). */
  out: string;
  procs: number;
  mib: number;
  action: WorkloadAction;
  dumpMs: number;
  /** From the workload's start to its root's ready file (every process filled its memory). */
  fillMs: number;
}

export interface DumpOptions {
  procs: number;
  mib: number;
  threads?: number;
  action: WorkloadAction;
  seed?: number;
}

/** Starts the workload tree and `criu dump`s it (which kills it); one dump serves many restores. */
export async function dumpWorkload(t: Test, name: string, o: DumpOptions): Promise<Dumped> {
  const dir = tempDir(t, name);
  const images = path.join(dir, 'images');
  const out = path.join(dir, 'out');
  const t0 = performance.now();
  const w = await startWorkload({ dir: out, procs: o.procs, mib: o.mib, threads: o.threads ?? 2, action: o.action, seed: o.seed, readyTimeoutMs: 120_000 });
  const fillMs = performance.now() - t0;
  // criu dump kills the tree when it succeeds; this is for a dump that failed
  t.teardown(() => killTree(w.rootPid, w.rootStartTime));
  const { dumpMs } = await criuDump(w.rootPid, images, { timeoutMs: 180_000 });
  const lazyImages = path.join(dir, 'lazy-images');
  fs.mkdirSync(lazyImages);
  for (const f of fs.readdirSync(images)) {
    if (f.startsWith('pages-') || f.endsWith('.log')) continue;
    fs.copyFileSync(path.join(images, f), path.join(lazyImages, f));
  }
  return { dir, images, lazyImages, out, procs: o.procs, mib: o.mib, action: o.action, dumpMs, fillMs };
}

/**
 * Processes whose command line mentions a path under `dir` (a test's own temporary directory):
 * the workload tree (its --out, restored processes keep the argv they were dumped with), and the
 * criu and faultline processes of that test. `live` leaves zombies out.
 */
export function processesUnder(dir: string, live = true): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (!argv.some((a) => a === dir || a.startsWith(dir + '/'))) continue;
      if (live) {
        const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
        if (stat[stat.lastIndexOf(')') + 2] === 'Z') continue;
      }
      out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

/**
 * SIGKILLs what processesUnder finds: what a restore that failed or hung left behind without a
 * pidfile, and criu's own helpers that outlive a `criu restore` killed at its timeout.
 */
export function killUnder(dir: string): number[] {
  const pids = processesUnder(dir);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  return pids;
}

/** Removes the previous restore's results, so that a second restore of one dump starts clean. */
export function clearResults(d: Dumped): void {
  for (const f of fs.readdirSync(d.out)) if (f.startsWith('result-')) fs.rmSync(path.join(d.out, f));
}

export interface Tls {
  files: TlsFiles;
  /** Pass --tls-no-cn-verify to both sides (as zdtm does). */
  noCnVerify?: boolean;
}

/**
 * A CA and two certificates it signed (server, client), made with openssl. criu checks the peer's
 * certificate against its own --address on both ends (criu/tls.c: gnutls_certificate_verify_peers3
 * with hostname = opts.addr), so both carry `ip` as CN and subjectAltName; with `ip` undefined they
 * carry only a DNS name, which passes only with --tls-no-cn-verify.
 */
export function makeCerts(dir: string, ip: string | undefined): TlsFiles {
  fs.mkdirSync(dir, { recursive: true });
  const f = (n: string) => path.join(dir, n);
  const ossl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=faultline test CA', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  const name = ip ?? 'faultline.test';
  const san = ip ? `subjectAltName=IP:${ip}` : `subjectAltName=DNS:${name}`;
  fs.writeFileSync(f('ext.cnf'), `${san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n`);
  for (const who of ['server', 'client']) {
    ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`));
    ossl('x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f('ext.cnf'), '-out', f(`${who}.pem`));
  }
  return { cacert: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

/** The client's half of makeCerts' set. */
export function clientCerts(server: TlsFiles): TlsFiles {
  const dir = path.dirname(server.cert);
  return { cacert: server.cacert, cert: path.join(dir, 'client.pem'), key: path.join(dir, 'client.key') };
}

/** Why openssl cannot make certificates here, or '' when it can. */
export function opensslWhy(): string {
  const r = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  return r.status === 0 ? '' : `openssl is not installed (${r.error?.message ?? r.stderr.trim()}), cannot make test certificates`;
}

/** Why scripts/netns.sh cannot make the two test hosts here, or '' when it can. */
export function netnsWhy(): string {
  const check = spawnSync('bash', [NETNS, 'check'], { encoding: 'utf8' });
  return check.status === 0 ? '' : check.stderr.trim() || `scripts/netns.sh check exited ${check.status}`;
}

/** A TCP port nobody listens on at 127.0.0.1 now (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** A port for a server inside fl-c-src, which no test process can probe: below the ephemeral range, random. */
export function netnsPort(): number {
  return 20_000 + Math.floor(Math.random() * 10_000);
}

export interface LazyRunOptions {
  /** A name for this run's work directory (logs, lazy-pages.socket, pidfile). */
  name: string;
  daemon: LazyDaemonKind;
  /** Serve the pages from this kind of page server (else the daemon reads the local images). */
  server?: LazyDaemonKind;
  address?: string;
  port?: number;
  /** Page server in fl-c-src, lazy daemon and criu restore in fl-c-dst (criuNetnsUp): every lazy page crosses the veth. */
  netns?: boolean;
  tls?: Tls;
  daemonArgs?: string[];
  /** faultline: native/bin/faultline-engine-client instead of `faultline lazy-pages` (with `--engine SOCKET` in daemonArgs). */
  engineClient?: boolean;
  /** How long `criu restore` may take (default 30 s). */
  restoreTimeoutMs?: number;
  /** How long the tree may take to report once signalled (default 30 s). */
  resultsTimeoutMs?: number;
}

export interface LazyRun {
  results: WorkloadResult[];
  daemon: DaemonExit;
  server?: DaemonExit;
  restore: CriuRestored;
  workDir: string;
  /** criu restore started → every result written; → the daemon exited. */
  resultsMs: number;
  daemonExitMs: number;
}

/** Resolves with p, or rejects with `what` after ms. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function describe(name: string, e: DaemonExit): string {
  return `${name} exited ${e.code ?? e.signal}: ${e.error ?? (e.stderr.trim().split('\n').find((l) => /error/i.test(l)) || e.stderr.trim().split('\n').pop())}`;
}

/** The failure of a program from its criu log when it has one, else its stderr. */
export function why(d: LazyDaemon, e: DaemonExit): string {
  let log = '';
  if (d.logFile) {
    try {
      log = fs.readFileSync(d.logFile, 'utf8').split('\n').filter((l) => /Error \(/.test(l) && !/RLIMIT_NOFILE/.test(l)).slice(0, 2).join(' | ');
    } catch {
      /* no log */
    }
  }
  return log ? `${describe(d.kind, e)} (log: ${log})` : describe(d.kind, e);
}

/** The tail of a daemon's log (criu) or stderr (faultline), after stopping it. */
async function lastWords(p: LazyDaemon, kind: string, what: string): Promise<string> {
  p.kill();
  const e = await Promise.race([p.exit, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000).unref())]);
  let text = e ? `${e.stderr}` : '';
  if (p.logFile && fs.existsSync(p.logFile)) text += fs.readFileSync(p.logFile, 'utf8');
  const tail = text.trim().split('\n').slice(-12).join('\n    ');
  return `${kind} ${what} (exit ${e ? (e.code ?? e.signal) : 'still running'}), last lines:\n    ${tail}`;
}

/**
 * One lazy restore of a dump: [page server →] lazy-pages daemon → `criu restore --lazy-pages -d`,
 * SIGUSR1 to the tree, every process's result, then the daemon's (and the server's) exit. Kills the
 * restored tree and the programs in the test's teardown.
 */
export async function lazyRestore(t: Test, d: Dumped, o: LazyRunOptions): Promise<LazyRun> {
  clearResults(d);
  const workDir = path.join(d.dir, `work-${o.name}`);
  fs.mkdirSync(workDir, { recursive: true });
  const address = o.address ?? (o.netns ? CSRC_IP : '127.0.0.1');
  const port = o.port ?? (o.netns ? netnsPort() : await freePort());
  const cn = o.tls?.noCnVerify ? ['--tls-no-cn-verify'] : [];

  let server: LazyDaemon | undefined;
  if (o.server) {
    const serverDir = path.join(workDir, 'server');
    fs.mkdirSync(serverDir);
    server = startPageServer(o.server, { imagesDir: d.images, workDir: serverDir, address, port, tls: o.tls?.files, wrap: o.netns ? CSRC : undefined, extraArgs: cn });
    t.teardown(() => server!.kill());
    await within(server.ready, 20_000, `${o.server} page-server ready`);
  }
  const daemon = startLazyDaemon(o.daemon, {
    imagesDir: o.server ? d.lazyImages : d.images,
    workDir,
    pageServer: o.server ? { address, port, tls: o.tls ? clientCerts(o.tls.files) : undefined } : undefined,
    wrap: o.netns ? CDST : undefined,
    extraArgs: [...cn, ...(o.daemonArgs ?? [])],
    engineClient: o.engineClient,
  });
  t.teardown(() => daemon.kill());
  await within(daemon.ready, 20_000, `${o.daemon} lazy-pages ready`);

  let daemonEnded: DaemonExit | undefined;
  let serverEnded: DaemonExit | undefined;
  void daemon.exit.then((e) => (daemonEnded = e));
  void server?.exit.then((e) => (serverEnded = e));
  const t0 = performance.now();
  // A restore that fails or hangs writes no pidfile: find what it left by command line.
  t.teardown(() => void killUnder(d.dir));
  const restore = await criuRestoreLazy(d.images, { workDir, wrap: o.netns ? CDST : undefined, timeoutMs: o.restoreTimeoutMs ?? 30_000 }).catch(async (e: Error) => {
    // A restore that fails or hangs is one of the three programs' doing: say what each last said.
    throw new Error(`${e.message}\n${await lastWords(daemon, o.daemon, 'lazy-pages')}\n${server ? await lastWords(server, o.server!, 'page-server') : ''}`);
  });
  t.teardown(() => killTree(restore.rootHostPid, restore.rootStartTime));

  signalTree(restore.rootHostPid, 'SIGUSR1');
  const count = d.action === 'events' ? 2 * d.procs : d.procs;
  const results = await waitResults(d.out, count, o.resultsTimeoutMs ?? 30_000, () => {
    if (daemonEnded && daemonEnded.code !== 0) return why(daemon, daemonEnded);
    if (server && serverEnded && serverEnded.code !== 0) return why(server, serverEnded);
    return undefined;
  });
  const resultsMs = performance.now() - t0;
  const daemonExit = await within(daemon.exit, 30_000, `${o.daemon} lazy-pages exit after the tree reported`);
  const daemonExitMs = performance.now() - t0;
  const serverExit = server ? await within(server.exit, 15_000, `${o.server} page-server exit after the restore`) : undefined;
  return { results, daemon: daemonExit, server: serverExit, restore, workDir, resultsMs, daemonExitMs };
}

/** Every process (and, for 'events', the child it forked) verified all its pages, word by word, with no mismatch. */
export function assertVerified(t: Test, d: Dumped, results: WorkloadResult[]): void {
  const want = Array.from({ length: d.procs }, (_, i) => (d.action === 'events' ? [String(i), `${i}.f`] : [String(i)])).flat();
  t.same(
    results.map((r) => r.index),
    want,
    `one result per process${d.action === 'events' ? ' and per child forked after restore' : ''}`,
  );
  let bad = 0;
  for (const r of results) {
    const pages = expectedPages(d.mib, d.action, r.index);
    const ok = r.mismatches === 0 && r.error === null && r.pages === pages && r.words === pages * WORDS_PER_PAGE && r.ok;
    if (ok) continue;
    bad++;
    // one failing assertion per field, named, only for the process that is wrong
    t.equal(r.mismatches, 0, `process ${r.index}: 0 mismatches (first: ${r.first_mismatch})`);
    t.equal(r.error, null, `process ${r.index}: every system call of the action succeeded`);
    t.equal(r.pages, pages, `process ${r.index}: ${pages} pages verified`);
    t.equal(r.words, pages * WORDS_PER_PAGE, `process ${r.index}: every word verified`);
    t.ok(r.ok, `process ${r.index} reports ok`);
  }
  const pages = results.reduce((n, r) => n + r.pages, 0);
  t.equal(bad, 0, `${results.length} processes verified ${pages} pages (${pages * WORDS_PER_PAGE} words), 0 mismatches`);
}

/** The daemon and (if any) the page server both exited 0 on their own after the one restore. */
export function assertExits(t: Test, run: LazyRun, o: LazyRunOptions): void {
  t.equal(run.daemon.code, 0, `${o.daemon} lazy-pages exits 0 ${run.daemon.code === 0 ? '' : run.daemon.stderr.trim()}`);
  if (o.daemon === 'faultline') t.ok(run.daemon.summary?.ok, 'faultline lazy-pages printed its ok summary');
  if (o.server) t.equal(run.server?.code, 0, `${o.server} page-server exits 0 after its session ${run.server?.code === 0 ? '' : run.server?.stderr.trim()}`);
}

/**
 * The two test hosts of the real-CRIU remote tests: scripts/netns.sh's veth pair under names of
 * their own (fl-c-src 10.77.1.1, fl-c-dst 10.77.1.2). test/e2e/remote.test.ts runs in parallel with
 * these tests (tap runs two files at once), and it takes fl-src/fl-dst down in its teardown and caps
 * their link at 200 Mbit/s for a while.
 */
export const CSRC = ['ip', 'netns', 'exec', 'fl-c-src'];
export const CDST = ['ip', 'netns', 'exec', 'fl-c-dst'];
export const CSRC_IP = '10.77.1.1';
const CRIU_NETNS_ENV = { ...process.env, FL_NETNS: 'fl-c', FL_NETNS_NET: '10.77.1' };

export function criuNetnsUp(): void {
  criuNetnsDown();
  execFileSync('bash', [NETNS, 'up'], { env: CRIU_NETNS_ENV, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function criuNetnsDown(): void {
  spawnSync('bash', [NETNS, 'down'], { env: CRIU_NETNS_ENV, stdio: 'ignore' });
}
