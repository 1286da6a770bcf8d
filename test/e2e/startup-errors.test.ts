// Start-up errors and who may hand over (issue 10): a daemon that cannot do its job says so in one
// line naming the flag or path and exits, before it listens; two daemons never share a work
// directory; lazy-pages.socket is 0600 whatever the umask, and a peer that is neither root nor the
// daemon's user is refused even when someone widened the socket's mode.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, startDaemon } from '../../src/target/run';
import { MiB, makeImages, tempDir, denseTree } from '../helpers/restore';

function lazyPages(args: string[], opts: { cwd?: string; stdio?: ('ignore' | 'pipe')[] } = {}) {
  return spawnSync(process.execPath, [CLI, 'lazy-pages', ...args], { encoding: 'utf8', timeout: 20_000, ...opts });
}

t.test('a flag or path the daemon cannot use: one line naming it, a non-zero exit, no socket', async (t) => {
  const dir = tempDir(t, 'startup');
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  const file = path.join(dir, 'a-file');
  fs.writeFileSync(file, '');
  const cases: [string, string[], number, RegExp][] = [
    ['-W missing', ['-W', path.join(dir, 'missing')], 2, /-W .*missing: .*missing does not exist \(ENOENT\)/],
    ['-W a file', ['-W', file], 2, /-W .*a-file: .* is not a directory/],
    ['--workers 1000', ['--workers', '1000'], 2, /--workers must be at most \d+ \(4 × this machine's \d+ CPUs, at least 8\), got '1000'/],
    ['--verbosity abc', ['--verbosity=abc'], 2, /verbosity/],
    ['--fill-chunk 8192', ['--fill-chunk', '8192'], 2, /--fill-chunk must be at most 2048, got '8192'/],
    ['--fault-around 0', ['--fault-around', '0'], 2, /--fault-around must be a positive integer, got '0'/],
    ['--pidfile in a missing directory', ['--pidfile', path.join(dir, 'missing/p.pid')], 2, /--pidfile .*missing\/p\.pid: cannot write .* \(ENOENT\)/],
    ['-o in a missing directory', ['-o', path.join(dir, 'missing/log')], 2, /-o .*missing\/log: cannot open the log file .*ENOENT/],
    ['--status-fd not open', ['--status-fd', '250'], 2, /--status-fd 250: not an open file descriptor/],
  ];
  for (const [what, args, code, line] of cases) {
    const work = args.includes('-W') ? [] : ['-W', dir];
    const r = lazyPages(['-D', images, ...work, ...args]);
    t.equal(r.status, code, `${what}: exit ${code}`);
    const lines = r.stderr.trim().split('\n');
    t.equal(lines.length, 1, `${what}: one line (${r.stderr.trim()})`);
    t.match(lines[0], /^faultline: (error: )?/, `${what}: in faultline's error shape`);
    t.match(lines[0], line, `${what}: names what is wrong`);
    t.notOk(fs.existsSync(path.join(dir, 'lazy-pages.socket')), `${what}: nothing listens`);
  }
});

t.test('--status-fd that is one of Node\'s own descriptors, or read-only, is refused (never written to)', async (t) => {
  const dir = tempDir(t, 'statusfd');
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  // fd 3 read-only: a file opened for reading
  const ro = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', images, '-W', dir, '--status-fd', '3'], {
    encoding: 'utf8',
    timeout: 20_000,
    stdio: ['ignore', 'pipe', 'pipe', fs.openSync(path.join(images, 'inventory.img'), 'r')],
  });
  t.equal(ro.status, 2);
  t.match(ro.stderr, /--status-fd 3: open for reading only/);
  // Node opens its own epoll, eventfds and pipes at start; none of them may be taken for the caller's
  let refusedOwn = 0;
  for (let fd = 4; fd < 16; fd++) {
    const r = lazyPages(['-D', images, '-W', dir, '--status-fd', String(fd)]);
    t.not(r.status, 0, `--status-fd ${fd} (not passed by the caller): refused`);
    if (/this process's own/.test(r.stderr)) refusedOwn++;
    t.notOk(/Assertion|internal error/.test(r.stderr), `--status-fd ${fd}: no crash (${r.stderr.trim().split('\n')[0]})`);
  }
  t.ok(refusedOwn > 0, `${refusedOwn} of Node's own descriptors were recognised as such`);
});

t.test('two daemons on one work directory: the second refuses, the first keeps its socket', async (t) => {
  const dir = tempDir(t, 'twice');
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  const first = await startDaemon(images, dir);
  const second = lazyPages(['-D', images, '-W', dir]);
  t.equal(second.status, 1, 'the second exits 1');
  t.match(second.stderr.trim(), /^faultline: error: -W .*: another lazy-pages daemon serves this work directory \(it holds .*lazy-pages\.lock\)$/);
  t.ok(fs.existsSync(path.join(dir, 'lazy-pages.socket')), "the first daemon's socket is still there");
  t.equal(first.child.exitCode, null, 'the first daemon still runs');
  first.child.kill('SIGTERM');
  const e = await first.exit;
  t.equal(e.code, 1, 'the first ends by fail-stop on SIGTERM');
  // and once it is gone, the work directory is free again
  const third = await startDaemon(images, dir);
  third.child.kill('SIGTERM');
  await third.exit;
});

const setpriv = spawnSync('setpriv', ['--version']).status === 0;

t.test('lazy-pages.socket is 0600 under umask 000, and a peer of another user is refused', { skip: setpriv ? false : 'setpriv (util-linux) is not installed: cannot connect as another user' }, async (t) => {
  const dir = tempDir(t, 'perm');
  fs.chmodSync(dir, 0o755);
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  const d = await startDaemon(images, dir, [], 'faultline', undefined, ['sh', '-c', 'umask 000; exec "$0" "$@"']);
  const sock = path.join(dir, 'lazy-pages.socket');
  t.equal(fs.statSync(sock).mode & 0o777, 0o600, 'socket mode 0600 although the umask was 000');
  // nobody cannot even connect
  const asNobody = (script: string) =>
    spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], { encoding: 'utf8', timeout: 10_000 });
  const connect = `const c = require('net').createConnection(${JSON.stringify(sock)}); c.on('connect', () => console.log('connected')); c.on('end', () => { console.log('EOF'); process.exit(0); }); c.on('error', (e) => { console.log(e.code); process.exit(0); });`;
  t.match(asNobody(connect).stdout, /EACCES/, 'uid 65534 gets EACCES');
  // widened by someone: it connects, and the daemon closes it unread
  fs.chmodSync(sock, 0o777);
  const widened = asNobody(connect);
  t.match(widened.stdout, /connected\s+EOF/, 'uid 65534 on a widened socket: closed unread');
  d.child.kill('SIGTERM');
  const e = await d.exit;
  t.match(e.stderr, /refused a connection on lazy-pages\.socket: its user \(uid 65534\) is neither root nor the daemon's \(uid \d+\)/);
  t.equal(e.code, 1);
});



t.test('--socket-group: the socket is 0660 with that group, whose members may hand over; others cannot connect', { skip: setpriv ? false : 'setpriv (util-linux) is not installed: cannot connect as another user' }, async (t) => {
  const dir = tempDir(t, 'group');
  fs.chmodSync(dir, 0o755);
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  const bad = lazyPages(['-D', images, '-W', dir, '--socket-group', 'no-such-group-here']);
  t.equal(bad.status, 2);
  t.match(bad.stderr.trim(), /^faultline: error: --socket-group no-such-group-here: no such group in \/etc\/group$/);
  const d = await startDaemon(images, dir, ['--socket-group', '65534']);
  const sock = path.join(dir, 'lazy-pages.socket');
  const st = fs.statSync(sock);
  t.equal(st.mode & 0o777, 0o660, 'mode 0660');
  t.equal(st.gid, 65534, 'group 65534');
  const connectAs = (gid: number) =>
    spawnSync('setpriv', ['--reuid=65534', `--regid=${gid}`, '--clear-groups', process.execPath, '-e', `const c = require('net').createConnection(${JSON.stringify(sock)}); c.on('connect', () => { console.log('connected'); c.end(); }); c.on('close', () => process.exit(0)); c.on('error', (e) => { console.log(e.code); process.exit(0); });`], { encoding: 'utf8', timeout: 10_000 });
  t.match(connectAs(12345).stdout, /EACCES/, 'uid 65534 outside the group: EACCES');
  // in the group: taken as the restorer (it then hangs up without handing over: a protocol error)
  t.match(connectAs(65534).stdout, /connected/, 'uid 65534 in group 65534: connected');
  const e = await d.exit;
  t.equal(e.code, 1);
  t.match(e.stderr, /lazy-pages\.socket \(restorer pid \d+\): connection closed before RESTORE_FINISHED/, 'and served as the restorer, not refused');
  t.notMatch(e.stderr, /refused a connection/);
});
