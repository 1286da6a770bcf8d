// `criu restore --lazy-pages` while faultline fails: a bad image, and a page server that is killed
// mid-restore. faultline must exit non-zero with one `faultline: error:` line naming what is at
// fault, and kill the restored tree before it lets go of a uffd, so that no process ever reads zeros
// where the image has data (a process that managed to report must report 0 mismatches).
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuSkip } from '../helpers/criu';
import { dumpWorkload, freePort, killUnder, processesUnder, within, type Dumped } from '../helpers/criu-restore';
import { criuRestoreLazy, startLazyDaemon, startPageServer, type CriuRestored, type DaemonExit } from '../../src/criu/run';
import { descendants, readResults, signalTree } from '../../src/criu/workload';

const skip = criuSkip();

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The wait status a zombie left in /proc/<pid>/stat (field 52), or 'gone' once it was reaped. */
function endOf(pid: number): 'gone' | 'running' | { signal: number } {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return 'gone';
  }
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (f[0] !== 'Z') return 'running';
  return { signal: Number(f[49]) & 0x7f };
}


/**
 * The checks of a restore faultline had to stop: its exit and its one error line, the tree dead by
 * SIGKILL (every pid we saw is gone or a zombie killed by signal 9, and nothing of the tree runs),
 * and no process that reported found a wrong word.
 */
async function assertStopped(t: Test, d: Dumped, daemon: DaemonExit, mentions: RegExp, seen: number[]): Promise<void> {
  t.not(daemon.code, 0, `faultline lazy-pages exits non-zero (${daemon.code ?? daemon.signal})`);
  const lines = daemon.stderr.split('\n').filter((l) => l.startsWith('faultline: error:'));
  t.equal(lines.length, 1, `exactly one error line: ${JSON.stringify(lines)}`);
  t.match(lines[0] ?? '', mentions, 'the error names what is at fault');
  t.equal(daemon.error !== undefined || daemon.summary === undefined, true, 'no success summary');
  // PID 1 reaps slowly here: give the kills a moment to land, then nothing of the tree may run
  const deadline = Date.now() + 5000;
  while (processesUnder(d.out).length && Date.now() < deadline) await sleep(50);
  t.same(processesUnder(d.out), [], 'no process of the restored tree is running');
  for (const pid of seen) {
    const end = endOf(pid);
    if (end === 'gone') continue;
    t.same(end, { signal: 9 }, `restored pid ${pid} was killed by SIGKILL`);
  }
  const rs = readResults(d.out);
  for (const r of rs) t.equal(r.mismatches, 0, `process ${r.index} reported, and found no wrong word (first: ${r.first_mismatch})`);
  t.comment(`${rs.length} of ${d.procs} processes reported before the tree was killed; pids seen: ${seen.join(' ') || 'none'}`);
}

t.test('a damaged image: faultline stops the tree that criu restore is bringing up', { skip }, async (t) => {
  const d = await dumpWorkload(t, 'criu-failstop-image', { procs: 4, mib: 8, threads: 1, action: 'verify' });
  t.teardown(() => void killUnder(d.dir));
  // criu restore reads the intact images (it copies non-lazy pages from pages-*.img itself, and
  // loops forever on a truncated one); faultline gets a copy in which one process's pages are cut short.
  const bad = path.join(d.dir, 'bad-images');
  fs.cpSync(d.images, bad, { recursive: true });
  const victim = fs.readdirSync(bad).filter((f) => /^pages-\d+\.img$/.test(f)).sort()[1]!;
  fs.truncateSync(path.join(bad, victim), Math.floor(fs.statSync(path.join(bad, victim)).size / 2 / 4096) * 4096);

  const workDir = path.join(d.dir, 'work');
  fs.mkdirSync(workDir);
  const daemon = startLazyDaemon('faultline', { imagesDir: bad, workDir });
  t.teardown(() => daemon.kill());
  await within(daemon.ready, 20_000, 'faultline lazy-pages ready');
  const restore = await criuRestoreLazy(d.images, { workDir, timeoutMs: 30_000 }).catch((e: Error) => e);
  const seen = restore instanceof Error ? [] : [restore.rootHostPid, ...descendants(restore.rootHostPid)];
  if (!(restore instanceof Error)) signalTree(restore.rootHostPid, 'SIGUSR1');
  const exit = await within(daemon.exit, 20_000, 'faultline lazy-pages exit');
  t.comment(`criu restore: ${restore instanceof Error ? restore.message : `exit 0, root ${restore.rootHostPid}`}`);
  await assertStopped(t, d, exit, new RegExp(`${victim.replace('.', '\\.')}`), seen);
});

t.test('the page server is killed mid-restore: faultline stops the tree', { skip }, async (t) => {
  const d = await dumpWorkload(t, 'criu-failstop-server', { procs: 2, mib: 128, threads: 1, action: 'verify' });
  t.teardown(() => void killUnder(d.dir));
  const workDir = path.join(d.dir, 'work');
  fs.mkdirSync(path.join(workDir, 'server'), { recursive: true });
  const lazy = path.join(d.dir, 'lazy-images');
  const port = await freePort();
  const server = startPageServer('criu', { imagesDir: d.images, workDir: path.join(workDir, 'server'), address: '127.0.0.1', port });
  t.teardown(() => server.kill());
  await within(server.ready, 20_000, 'criu page-server ready');
  const daemon = startLazyDaemon('faultline', { imagesDir: lazy, workDir, pageServer: { address: '127.0.0.1', port } });
  t.teardown(() => daemon.kill());
  await within(daemon.ready, 20_000, 'faultline lazy-pages ready');

  let restore: CriuRestored | Error = await criuRestoreLazy(d.images, { workDir, timeoutMs: 30_000 }).catch((e: Error) => e);
  const seen = restore instanceof Error ? [] : [restore.rootHostPid, ...descendants(restore.rootHostPid)];
  // The tree runs, most of its 256 MiB still lazy: the server goes away without a word.
  server.child.kill('SIGKILL');
  const serverExit = await server.exit;
  if (!(restore instanceof Error)) signalTree(restore.rootHostPid, 'SIGUSR1');
  const exit = await within(daemon.exit, 20_000, 'faultline lazy-pages exit');
  t.equal(restore instanceof Error, false, `criu restore succeeded before the server was killed: ${restore instanceof Error ? restore.message : 'exit 0'}`);
  t.equal(serverExit.signal, 'SIGKILL', 'the page server was killed mid-restore');
  const s = exit.summary;
  t.comment(`faultline ${exit.code === 0 ? `finished first (${s?.pagesByFill} pages by fill)` : 'stopped'}`);
  await assertStopped(t, d, exit, new RegExp(`page server 127\\.0\\.0\\.1:${port}`), seen);
});
