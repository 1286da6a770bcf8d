// Scripts written for `criu lazy-pages` work unchanged: zdtm's exact command line, -d, --pidfile,
// -o (relative to the work dir, as criu), -v…; logs are criu-like text lines that zdtm's grep for
// "Error" finds; and a signal mid-restore stops the tree instead of abandoning it to zero-filled
// memory, with the reason as an Error line in the log.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, TARGET, parseTargetOutput, runRestore, targetArgs } from '../../src/target/run';
import { writeTargetPlan } from '../../src/target/plan';
import { MiB, assertRestored, assertStopped, denseTree, makeImages, tempDir } from '../helpers/restore';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

// "(SS.UUUUUU) PID: " then criu's level word, as criu/log.c prints with -v3 and up.
const TEXT_LINE = /^\(\d\d+\.\d{6}\) \d+: /;

t.test('-d --pidfile -o -v4 with relative paths: detaches when ready, files go to the work dir, text log', async (t) => {
  const dir = tempDir(t, 'daemon');
  const images = makeImages(dir, denseTree(2, 12 * MiB));
  const work = path.join(dir, 'work');
  fs.mkdirSync(work);
  // Run from a directory of its own: relative -o and --pidfile must not land here.
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', images, '-W', work, '-d', '--pidfile', 'daemon.pid', '-o', 'lazy.log', '-v4'], { cwd, encoding: 'utf8', timeout: 30_000 });
  t.equal(r.status, 0, `the foreground process exits 0 once the daemon is ready ${r.stderr}`);
  t.same(fs.readdirSync(cwd), [], 'nothing written to the current directory');
  t.ok(fs.existsSync(path.join(work, 'lazy-pages.socket')), 'the socket is listening in the work dir');
  const log = path.join(work, 'lazy.log');
  const pid = Number(fs.readFileSync(path.join(work, 'daemon.pid'), 'utf8'));
  t.ok(pid > 0 && alive(pid), `the daemon (pid ${pid}) runs in the background, pidfile in the work dir`);

  const plan = path.join(dir, 'target.plan');
  writeTargetPlan(images, plan, path.join(work, 'lazy-pages.socket'));
  const target = spawn(TARGET, targetArgs(plan, { fraction: 0.3, verifyAll: true }), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  target.stdout.on('data', (d) => (out += d));
  // The daemon is not our child: poll until it has finished, then let the target verify everything.
  const deadline = Date.now() + 30_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.notOk(alive(pid), 'the daemon exited when the tree was restored');
  target.kill('SIGUSR1');
  const code = await new Promise((r) => target.once('close', r));
  t.equal(code, 0, 'target verified every page');
  const { summary } = parseTargetOutput(out);
  t.equal(summary?.mismatches, 0);
  const lines = fs.readFileSync(log, 'utf8').trim().split('\n');
  const records = lines.filter((l) => TEXT_LINE.test(l));
  t.ok(records.length > 3, 'the log holds criu-like text lines');
  t.ok(records.every((l) => l.startsWith('(') && l.includes(`) ${pid}: `)), 'each names the daemon process');
  t.ok(records.some((l) => /process handed over vpid=\d+ hostPid=\d+/.test(l)), '-v4 logs debug events, the restored pid as vpid');
  t.notOk(lines.some((l) => l.startsWith('{')), 'no JSON by default');
  t.ok(lines.some((l) => /^faultline: restore complete$/.test(l)), 'the summary went to the log (a daemon has no terminal)');
});

t.test("zdtm's exact lazy-pages command line: restores every page, the log in the images dir", async (t) => {
  const dir = tempDir(t, 'zdtm-args');
  const images = makeImages(dir, denseTree(2, 12 * MiB));
  // runRestore adds -D/-W (images) and --status-fd 3 itself; the rest is what zdtm passes.
  const r = await runRestore({
    imagesDir: images,
    workDir: images,
    daemonArgs: ['--no-default-config', '--log-file', 'lazy-pages.log', '--images-dir', images, '--verbosity=4'],
    target: { fraction: 0.5 },
  });
  assertRestored(t, r, 2);
  const log = fs.readFileSync(path.join(images, 'lazy-pages.log'), 'utf8');
  t.match(log, /waiting for the restorer/, 'the log is in the images dir');
  t.notMatch(log, /Error|Warn/, "nothing for zdtm's grep in a good run");
});

t.test('no -W: relative -o goes to the images dir; SIGTERM before the restorer comes is an Error line there', async (t) => {
  const dir = tempDir(t, 'no-workdir');
  const images = makeImages(dir, denseTree(1, 12 * MiB));
  const cwd = path.join(dir, 'cwd');
  fs.mkdirSync(cwd);
  const child = spawn(process.execPath, [CLI, 'lazy-pages', '--images-dir', path.relative(cwd, images), '-o', 'lp.log', '-v', '--status-fd', '3'], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const ready = await new Promise<boolean>((r) => {
    (child.stdio[3] as NodeJS.ReadableStream).once('data', () => r(true));
    child.once('exit', () => r(false));
  });
  t.ok(ready, `ready ${stderr}`);
  t.ok(fs.existsSync(path.join(images, 'lazy-pages.socket')), 'socket in the images dir');
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.once('exit', r));
  t.equal(code, 1, 'exit 1');
  t.same(fs.readdirSync(cwd), [], 'nothing in the current directory');
  t.match(stderr.trim(), /^faultline: error: received SIGTERM before the restore completed; the restored processes were stopped$/, 'one error line on stderr');
  const log = fs.readFileSync(path.join(images, 'lp.log'), 'utf8').trim().split('\n');
  // -v is verbosity 3 (criu's default 2, plus one): info lines too.
  t.ok(log.some((l) => /^\(\d\d\.\d{6}\) \d+: waiting for the restorer/.test(l)), '-v gives info lines');
  t.ok(log.some((l) => /^\(\d\d\.\d{6}\) \d+: Error \(faultline\): fail-stop: received SIGTERM before the restore completed/.test(l)), `an Error line with the reason: ${log.join(' | ')}`);
});

t.test('SIGTERM mid-restore stops the tree and exits non-zero; the reason is an Error line', async (t) => {
  const dir = tempDir(t, 'sigterm');
  let sent = false;
  let daemonPid = 0;
  let seen = '';
  // A fill of one page per copy over 2 × 128 MiB takes far longer than the signal's way to the
  // daemon: 2 × 12 MiB at full speed once completed first, on a machine busy with other tests.
  const r = await runRestore({
    imagesDir: makeImages(dir, denseTree(2, 128 * MiB)),
    workDir: dir,
    daemonArgs: ['-v4', '--workers', '1', '--fill-chunk', '1'],
    target: { fraction: 0.2 },
    onDaemonStderr: (chunk) => {
      seen += chunk;
      const m = /^\(\d+\.\d+\) (\d+): /m.exec(seen);
      if (m) daemonPid = Number(m[1]);
      if (!sent && daemonPid && seen.includes('process handed over')) {
        sent = true;
        process.kill(daemonPid, 'SIGTERM');
      }
    },
  });
  t.ok(sent, 'SIGTERM sent after the first hand-over');
  // -v4 also prints the text log on stderr; the one plain error line is what a person reads.
  assertStopped(t, r, /received SIGTERM before the restore completed/);
  t.match(r.daemon.stderr, /\) \d+: Error \(faultline\): fail-stop: received SIGTERM before the restore completed killed=\d+/, 'the log line is at Error level');
});

t.test('--log-format json: pino lines with one pid key (ours); a restored process is vpid', async (t) => {
  const dir = tempDir(t, 'json');
  const r = await runRestore({
    imagesDir: makeImages(dir, denseTree(2, 12 * MiB)),
    workDir: dir,
    daemonArgs: ['-v4', '-o', 'lazy.log', '--log-format', 'json'],
    target: { fraction: 0.2 },
  });
  assertRestored(t, r, 2);
  const lines = fs.readFileSync(path.join(dir, 'lazy.log'), 'utf8').trim().split('\n');
  t.ok(lines.length > 3);
  for (const l of lines) {
    t.equal((l.match(/"pid":/g) ?? []).length, 1, `one "pid" key: ${l}`);
    t.equal(JSON.parse(l).name, 'faultline');
  }
  t.ok(lines.some((l) => /"vpid":\d+/.test(l) && /process handed over/.test(l)), 'the restored process pid is vpid');
});

t.test('usage errors exit 2 with one line', async (t) => {
  const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', '/tmp', '--workers', 'zero'], { encoding: 'utf8' });
  t.equal(r.status, 2);
  t.match(r.stderr.trim(), /^faultline: error: --workers must be a positive integer, got 'zero'$/);
  const u = spawnSync(process.execPath, [CLI, 'lazy-pages', '--no-such-flag'], { encoding: 'utf8' });
  t.equal(u.status, 2);
  t.equal(u.stderr, "faultline: error: unknown option '--no-such-flag'\n");
  const f = spawnSync(process.execPath, [CLI, 'lazy-pages', '--log-format', 'xml'], { encoding: 'utf8' });
  t.equal(f.status, 2);
  t.equal(f.stderr, "faultline: error: --log-format must be 'text' or 'json', got 'xml'\n");
  for (const bad of ['abc', '-30', '1.5']) {
    const n = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', '/tmp', '--nice', bad], { encoding: 'utf8' });
    t.equal(n.status, 2, `--nice ${bad}`);
    t.equal(n.stderr, `faultline: error: --nice must be an integer from -20 to 19, got '${bad}'\n`);
  }
});
