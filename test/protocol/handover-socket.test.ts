// The hand-over over a real unix socket: the C restore target in CRIU's message shapes, and raw
// clients that break the protocol. Every bad case ends with one error line and a non-zero exit.
import t, { type Test } from "tap";
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { runRestore, startDaemon } from '../../src/target/run';
import { MiB, assertRestored, assertStopped, denseTree, makeImages, native, tempDir } from '../helpers/restore';

const small = () => denseTree(2, 12 * MiB);

t.test('merged pid+fd writes (one 5-byte sendmsg per process)', async (t) => {
  const dir = tempDir(t, 'merged');
  const r = await runRestore({ imagesDir: makeImages(dir, small()), workDir: dir, target: { handover: 'merged', fraction: 0.1 } });
  assertRestored(t, r, 2);
});

t.test('pid bytes split across writes', async (t) => {
  const dir = tempDir(t, 'bytewise');
  const r = await runRestore({ imagesDir: makeImages(dir, small()), workDir: dir, target: { handover: 'bytewise', fraction: 0.1 } });
  assertRestored(t, r, 2);
});

t.test('a zombie is handed over as a negative pid and needs no memory', async (t) => {
  const dir = tempDir(t, 'zombie');
  const r = await runRestore({ imagesDir: makeImages(dir, small()), workDir: dir, target: { zombies: [2], fraction: 0.1 } });
  t.equal(r.daemon.code, 0, r.daemon.stderr);
  t.equal(r.daemon.summary?.zombies, 1);
  t.equal(r.daemon.summary?.processes, 1);
  t.equal(r.target.summary?.mismatches, 0);
  const p1 = r.target.processes.find((p) => p.pid === 1);
  t.equal(p1?.verified, p1?.pages, 'the live process is verified');
});

t.test('a pid that is not in pstree.img stops the tree', async (t) => {
  const dir = tempDir(t, 'badpid');
  const r = await runRestore({
    imagesDir: makeImages(dir, small()),
    workDir: dir,
    target: { fraction: 0.1 },
    editPlan: (plan) => plan.replace(/^proc 2 /m, 'proc 99 '),
  });
  assertStopped(t, r, /lazy-pages\.socket \(restorer pid \d+\): pid 99 is not in pstree\.img/);
});

t.test('RESTORE_FINISHED before every pstree process was handed over stops the tree', async (t) => {
  const dir = tempDir(t, 'short');
  const r = await runRestore({
    imagesDir: makeImages(dir, small()),
    workDir: dir,
    target: { fraction: 0.1 },
    // The target restores only pid 1, but pstree.img lists 2 processes.
    editPlan: (plan) => plan.replace(/^proc 2 [\s\S]*$/m, ''),
  });
  assertStopped(t, r, /RESTORE_FINISHED after 1 of 2 processes/);
});

t.test('a second connection is refused while the restore goes on', async (t) => {
  const dir = tempDir(t, 'second');
  let second: Promise<number> | null = null;
  const r = await runRestore({
    // big enough, and filled by one worker, that the restore still goes on when the second client
    // (started on the first hand-over line, as this process reads it) connects
    imagesDir: makeImages(dir, denseTree(2, 64 * MiB)),
    workDir: dir,
    daemonArgs: ['-v4', '--workers', '1'],
    target: { fraction: 0.2 },
    onDaemonStderr: (chunk) => {
      if (second || !chunk.includes('process handed over')) return;
      second = new Promise((resolve) => {
        const fd = native.unixConnect(path.join(dir, 'lazy-pages.socket'));
        const got = native.unixRecv(fd, 16); // blocks until the daemon closes it
        native.closeFd(fd);
        resolve(got?.data.length ?? -1);
      });
    },
  });
  t.ok(second, 'a second client connected during the restore');
  t.equal(await second, 0, 'the second client got EOF');
  t.match(r.daemon.stderr, /refused a connection on lazy-pages.socket: one restorer per daemon/);
  assertRestored(t, r, 2);
});

/** Raw clients: the test process plays a broken restorer (it hands over no uffd, so nothing is killed). */
async function rawSession(t: Test, send: (fd: number) => void): Promise<{ code: number | null; stderr: string }> {
  const dir = tempDir(t, 'raw');
  const images = makeImages(dir, small());
  const { exit } = await startDaemon(images, dir);
  const fd = native.unixConnect(path.join(dir, 'lazy-pages.socket'));
  send(fd);
  native.closeFd(fd);
  return exit;
}

t.test('raw: EOF before RESTORE_FINISHED', async (t) => {
  const e = await rawSession(t, () => undefined);
  t.equal(e.code, 1);
  t.match(e.stderr, /^faultline: error: lazy-pages\.socket \(restorer pid \d+\): connection closed before RESTORE_FINISHED \(after 0 of 2 processes\)/m);
});

t.test('raw: text garbage', async (t) => {
  const e = await rawSession(t, (fd) => native.unixSend(fd, Buffer.from('GET / HTTP/1.0\r\n\r\n'), []));
  t.equal(e.code, 1);
  t.match(e.stderr, /^faultline: error: lazy-pages\.socket \(restorer pid \d+\): pid \d+: the hand-over byte came without a uffd/m);
  t.equal(e.stderr.trim().split('\n').filter((l) => l.startsWith('faultline:')).length, 1, 'one line');
});

t.test('raw: a file descriptor that is not a userfaultfd', async (t) => {
  const devnull = fs.openSync('/dev/null', 'r');
  t.teardown(() => fs.closeSync(devnull));
  const pid = Buffer.alloc(4);
  pid.writeInt32LE(1);
  const e = await rawSession(t, (fd) => {
    native.unixSend(fd, pid, []);
    native.unixSend(fd, Buffer.from([0]), [devnull]);
  });
  t.equal(e.code, 1);
  t.match(e.stderr, /the file descriptor handed over is not a userfaultfd \(\/dev\/null\)/);
});


t.test('a uffd on which UFFDIO_API was never done is refused, not "restored" with nothing served', async (t) => {
  const dir = tempDir(t, 'noapi');
  const images = makeImages(dir, small());
  const { exit } = await startDaemon(images, dir);
  // A child hands it over (the fail-stop SIGKILLs whoever sent a uffd): pid 1, a fresh uffd, no API.
  const sender = `const { native } = require(${JSON.stringify(path.resolve(__dirname, '../../src/native'))});
    const fd = native.unixConnect(${JSON.stringify(path.join(dir, 'lazy-pages.socket'))});
    const uffd = native.uffdCreate(native.uffdConstants.O_CLOEXEC);
    const pid = Buffer.alloc(4); pid.writeInt32LE(1);
    native.unixSend(fd, pid, []); native.unixSend(fd, Buffer.from([0]), [uffd]);
    setTimeout(() => process.exit(0), 10000);`;
  const child = spawnSync(process.execPath, ['-e', sender], { encoding: 'utf8', timeout: 20_000 });
  const e = await exit;
  t.equal(e.code, 1);
  t.match(e.stderr, /^faultline: error: lazy-pages\.socket \(restorer pid \d+\): pid 1 is handed over with a uffd on which UFFDIO_API was never done/m);
  t.equal(child.signal, 'SIGKILL', 'the sender was stopped with the tree');
});

t.test('a restorer that stalls in the middle of a record is stopped, not waited on forever', async (t) => {
  const dir = tempDir(t, 'stall');
  const images = makeImages(dir, small());
  const { exit } = await startDaemon(images, dir, [], 'faultline', { FAULTLINE_PARTIAL_RECORD_MS: '500' });
  const fd = native.unixConnect(path.join(dir, 'lazy-pages.socket'));
  const pid = Buffer.alloc(4);
  pid.writeInt32LE(1);
  native.unixSend(fd, pid, []); // the pid, and never the byte with its uffd
  const started = Date.now();
  const e = await exit;
  native.closeFd(fd);
  t.equal(e.code, 1);
  t.match(e.stderr, /^faultline: error: lazy-pages\.socket \(restorer pid \d+\): sent 4 bytes of a hand-over record and nothing more for 500 ms/m);
  t.ok(Date.now() - started < 5000, 'within a few seconds');
});

t.test('a restorer still in the backlog when the daemon is stopped is taken and killed, never run on zeros', async (t) => {
  // A fast machine fail-stopped a daemon 1 ms after the restore started, before its accept ran: the
  // restorer had sent every uffd and RESTORE_FINISHED into the backlog and released its processes,
  // and closing the socket dropped their uffds (signals.test.ts read 37,800 zero words). The test
  // hook keeps the daemon from accepting on its own, so the restorer waits there for certain.
  const dir = tempDir(t, 'backlog');
  const r = await runRestore({
    imagesDir: makeImages(dir, small()),
    workDir: dir,
    // --no-guardian: the guardian holds the socket and would take the restorer itself
    daemonArgs: ['--no-guardian'],
    daemonEnv: { FAULTLINE_TEST_HOLD_ACCEPT: '1' },
    target: { fraction: 0.5 },
    onStarted: (daemon) => setTimeout(() => daemon.kill('SIGTERM'), 500),
    retries: 0,
  });
  assertStopped(t, r, /received SIGTERM before the restore completed/);
});

t.test('a second restorer that sent a uffd before it was refused is killed, not left on a dropped uffd', async (t) => {
  // CRIU serves one restorer per daemon, so a second connection is closed. Whatever it sent before
  // the daemon got to it would be dropped with it, uffds included: its senders are killed first. The
  // daemon is stopped (SIGSTOP) while the second restorer, a process of its own with a real uffd,
  // connects and sends, so that the data is there when the daemon accepts.
  const dir = tempDir(t, 'second-uffd');
  const socket = path.join(dir, 'lazy-pages.socket');
  let daemon: ChildProcess | undefined;
  let victim: ChildProcess | undefined;
  let victimExit: Promise<NodeJS.Signals | null> | undefined;
  const r = await runRestore({
    imagesDir: makeImages(dir, denseTree(2, 64 * MiB)),
    workDir: dir,
    daemonArgs: ['-v4', '--workers', '1'],
    target: { fraction: 0.2 },
    onStarted: (d) => (daemon = d),
    onDaemonStderr: (chunk) => {
      if (victim || !daemon || !chunk.includes('process handed over')) return;
      daemon.kill('SIGSTOP');
      victim = spawn(process.execPath, ['-e', SECOND_RESTORER, NATIVE, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
      victimExit = new Promise((resolve) => victim!.once('exit', (_code, signal) => resolve(signal)));
      victim.stdout!.once('data', () => daemon!.kill('SIGCONT'));
      victim.once('exit', () => daemon!.kill('SIGCONT'));
    },
  });
  t.ok(victim, 'a second restorer connected during the restore');
  t.equal(await victimExit, 'SIGKILL', 'the second restorer, which had sent its uffd, was SIGKILLed');
  t.match(r.daemon.stderr, /refused a connection on lazy-pages.socket: one restorer per daemon/);
  assertRestored(t, r, 2);
});

/** A restorer in a process of its own: a real uffd, connect, pid 1 and the uffd in one message, then wait. */
const SECOND_RESTORER = `
const { native } = require(process.argv[1]);
const c = native.uffdConstants;
const uffd = native.uffdCreate(c.O_CLOEXEC | c.O_NONBLOCK);
native.uffdApi(uffd, 0n);
const fd = native.unixConnect(process.argv[2]);
const pid = Buffer.alloc(4);
pid.writeInt32LE(1);
native.unixSend(fd, pid, [uffd]);
process.stdout.write('sent\\n');
setTimeout(() => process.exit(0), 10000);
`;
const NATIVE = path.resolve(__dirname, '../../src/native');
