// Scripts written for `criu lazy-pages` work unchanged: -d detaches once ready, --pidfile, -o, -v;
// and a signal mid-restore stops the tree instead of abandoning it to zero-filled memory.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, TARGET, parseTargetOutput, runRestore, targetArgs } from '../../src/target/run';
import { writeTargetPlan } from '../../src/target/plan';
import { MiB, assertStopped, denseTree, makeImages, tempDir } from '../helpers/restore';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('-d --pidfile -o -v4: detaches when ready, serves the restore, logs JSON, exits', async (t) => {
  const dir = tempDir(t, 'daemon');
  const images = makeImages(dir, denseTree(2, 12 * MiB));
  const pidfile = path.join(dir, 'daemon.pid');
  const log = path.join(dir, 'lazy.log');
  const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', images, '-W', dir, '-d', '--pidfile', pidfile, '-o', log, '-v4'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(r.status, 0, `the foreground process exits 0 once the daemon is ready ${r.stderr}`);
  t.ok(fs.existsSync(path.join(dir, 'lazy-pages.socket')), 'the socket is listening');
  const pid = Number(fs.readFileSync(pidfile, 'utf8'));
  t.ok(pid > 0 && alive(pid), `the daemon (pid ${pid}) runs in the background`);

  const plan = path.join(dir, 'target.plan');
  writeTargetPlan(images, plan, path.join(dir, 'lazy-pages.socket'));
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
  const json = lines.filter((l) => l.startsWith('{'));
  t.ok(json.length > 3 && json.every((l) => JSON.parse(l).name === 'faultline'), 'the log file holds pino JSON lines');
  t.ok(json.some((l) => /process handed over/.test(l)), '-v4 logs debug events');
  t.ok(lines.some((l) => /^faultline: restore complete$/.test(l)), 'the summary went to the log (a daemon has no terminal)');
});

t.test('SIGTERM mid-restore stops the tree and exits non-zero', async (t) => {
  const dir = tempDir(t, 'sigterm');
  let sent = false;
  let daemonPid = 0;
  const r = await runRestore({
    imagesDir: makeImages(dir, denseTree(2, 12 * MiB)),
    workDir: dir,
    daemonArgs: ['-v4'],
    target: { fraction: 0.2 },
    onDaemonStderr: (chunk) => {
      const m = /"pid":(\d+),"name":"faultline"/.exec(chunk);
      if (m) daemonPid = Number(m[1]);
      if (!sent && daemonPid && chunk.includes('process handed over')) {
        sent = true;
        process.kill(daemonPid, 'SIGTERM');
      }
    },
  });
  t.ok(sent, 'SIGTERM sent after the first hand-over');
  // -v4 also prints JSON logs on stderr; the one plain error line is what a person reads.
  assertStopped(t, r, /received SIGTERM before the restore completed/);
});

t.test('usage errors exit 2 with one line', async (t) => {
  const r = spawnSync(process.execPath, [CLI, 'lazy-pages', '-D', '/tmp', '--workers', 'zero'], { encoding: 'utf8' });
  t.equal(r.status, 2);
  t.match(r.stderr.trim(), /^faultline: error: --workers must be a positive integer, got 'zero'$/);
  const m = spawnSync(process.execPath, [CLI, 'lazy-pages'], { encoding: 'utf8' });
  t.not(m.status, 0);
  t.match(m.stderr, /required option '-D, --images-dir <dir>'/);
});
