// The guardian against real CRIU (issue 10): `criu restore --lazy-pages` of a self-verifying tree,
// and faultline lazy-pages SIGKILLed at a random moment while the tree verifies every word. No
// process may ever find a wrong word: each either reported a clean verification or was SIGKILLed.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuSkip } from '../helpers/criu';
import { dumpWorkload, killUnder, processesUnder, within } from '../helpers/criu-restore';
import { criuRestoreLazy, startLazyDaemon } from '../../src/criu/run';
import { signalTree, type WorkloadResult } from '../../src/criu/workload';

const skip = criuSkip();
const SEED = Number(process.env.FAULTLINE_KILL_SEED ?? Date.now() % 100000);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

t.test('criu restore --lazy-pages, faultline SIGKILLed at random moments: no process reads a zero page', { skip }, async (t) => {
  const d = await dumpWorkload(t, 'criu-guardian', { procs: 3, mib: 96, threads: 2, action: 'verify' });
  t.teardown(() => void killUnder(d.dir));
  let x = SEED || 1;
  const next = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  t.comment(`kill moments from seed ${SEED} (replay with FAULTLINE_KILL_SEED=${SEED})`);
  const runs = 8;
  let stopped = 0;
  for (let i = 0; i < runs; i++) {
    for (const f of fs.readdirSync(d.out)) if (/^result-.*\.json$/.test(f)) fs.rmSync(path.join(d.out, f));
    const workDir = path.join(d.dir, `work${i}`);
    fs.mkdirSync(workDir);
    const daemon = startLazyDaemon('faultline', { imagesDir: d.images, workDir });
    await within(daemon.ready, 20_000, 'faultline lazy-pages ready');
    const restore = await criuRestoreLazy(d.images, { workDir, timeoutMs: 30_000 });
    signalTree(restore.rootHostPid, 'SIGUSR1');
    // 0-120 ms into the verification of 288 MiB, most of it still lazy, counted from the daemon's
    // "restore finished": uffds still in the hand-over socket when the daemon dies close with it,
    // before anyone holds a copy (criu lazy-pages has the same window; see guardian.test.ts).
    const at = Math.round(next() * 120);
    for (const until = Date.now() + 10_000; Date.now() < until && !/restore finished/.test(fs.readFileSync(daemon.logFile!, 'utf8')); ) await sleep(2);
    await sleep(at);
    daemon.child.kill('SIGKILL');
    const exit = await within(daemon.exit, 20_000, 'faultline lazy-pages exit');
    const deadline = Date.now() + 10_000;
    while (processesUnder(d.out).length && Date.now() < deadline) await sleep(50);
    const rs = fs
      .readdirSync(d.out)
      .filter((f) => /^result-.*\.json$/.test(f))
      .map((f) => JSON.parse(fs.readFileSync(path.join(d.out, f), 'utf8')) as WorkloadResult);
    const bad = rs.filter((r) => r.mismatches !== 0);
    t.same(bad.map((r) => `process ${r.index}: ${r.mismatches} wrong words, first ${r.first_mismatch}`), [], `run ${i} (kill ${at} ms into the verification): no process read a wrong word (${rs.length} of ${d.procs} reported)`);
    if (exit.signal === 'SIGKILL' && rs.length < d.procs) {
      stopped++;
      t.match(exit.stderr, /faultline-guardian: error: the daemon \(pid \d+\) ended without finishing the restore: killed \d+ restored processes/, `run ${i}: the guardian stopped the tree and said why`);
      // in criu's log shape too, where zdtm and a -d daemon's operator look
      t.match(fs.readFileSync(daemon.logFile!, 'utf8'), /\d+: Error \(faultline-guardian\): the daemon \(pid \d+\) ended without finishing the restore/, `run ${i}: and in the -o log`);
    }
    t.same(processesUnder(d.out), [], `run ${i}: nothing of the tree is left running`);
  }
  t.ok(stopped > 0, `${stopped} of ${runs} kills landed before the tree had verified everything`);

  // The same kill without the guardian: the hole it closes (criu lazy-pages has it too).
  for (const f of fs.readdirSync(d.out)) if (/^result-.*\.json$/.test(f)) fs.rmSync(path.join(d.out, f));
  const workDir = path.join(d.dir, 'unguarded');
  fs.mkdirSync(workDir);
  const daemon = startLazyDaemon('faultline', { imagesDir: d.images, workDir, extraArgs: ['--no-guardian'] });
  await within(daemon.ready, 20_000, 'faultline lazy-pages ready');
  const restore = await criuRestoreLazy(d.images, { workDir, timeoutMs: 30_000 });
  signalTree(restore.rootHostPid, 'SIGUSR1');
  for (const until = Date.now() + 10_000; Date.now() < until && !/restore finished/.test(fs.readFileSync(daemon.logFile!, 'utf8')); ) await sleep(2);
  await sleep(20);
  daemon.child.kill('SIGKILL');
  await within(daemon.exit, 20_000, 'faultline lazy-pages exit');
  const deadline = Date.now() + 20_000;
  while (processesUnder(d.out).length && Date.now() < deadline) await sleep(50);
  const wrong = fs
    .readdirSync(d.out)
    .filter((f) => /^result-.*\.json$/.test(f))
    .map((f) => (JSON.parse(fs.readFileSync(path.join(d.out, f), 'utf8')) as WorkloadResult).mismatches)
    .reduce((a, b) => a + b, 0);
  t.ok(wrong > 0, `--no-guardian: the tree ran on and read ${wrong} wrong words after the daemon was killed`);
});
