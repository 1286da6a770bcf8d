// The guardian against real CRIU (issue 10): `criu restore --lazy-pages` of a self-verifying tree,
// and faultline lazy-pages SIGKILLed at a random moment while the tree verifies every word. No
// process may ever find a wrong word: each either reported a clean verification or was SIGKILLed.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { criuSkip } from '../helpers/criu';
import { clearResults, dumpWorkload, killUnder, processesUnder, within } from '../helpers/criu-restore';
import { criuRestoreLazy, startLazyDaemon } from '../../src/criu/run';
import { readResults, signalTree } from '../../src/criu/workload';

const skip = criuSkip();
const SEED = Number(process.env.FAULTLINE_KILL_SEED ?? Date.now() % 100000);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

t.test('criu restore --lazy-pages, faultline SIGKILLed at random moments: no process reads a zero page', { skip }, async (t) => {
  const d = await dumpWorkload(t, 'criu-guardian', { procs: 3, mib: 96, threads: 2, action: 'verify' });
  t.teardown(() => void killUnder(d.dir));
  /**
   * One restore whose daemon is SIGKILLed `atMs` into the tree's verification, counted from the
   * daemon's "restore finished": uffds still in the hand-over socket when the daemon dies close with
   * it, before anyone holds a copy (criu lazy-pages has the same window; see guardian.test.ts).
   * Returns once nothing of the tree runs any more (or 20 s passed).
   */
  const killedRestore = async (name: string, atMs: number, extraArgs: string[] = []) => {
    clearResults(d);
    const workDir = path.join(d.dir, name);
    fs.mkdirSync(workDir);
    const daemon = startLazyDaemon('faultline', { imagesDir: d.images, workDir, extraArgs });
    await within(daemon.ready, 20_000, 'faultline lazy-pages ready');
    const restore = await criuRestoreLazy(d.images, { workDir, timeoutMs: 30_000 });
    signalTree(restore.rootHostPid, 'SIGUSR1');
    const log = () => fs.readFileSync(daemon.logFile!, 'utf8');
    for (const until = Date.now() + 10_000; Date.now() < until && !/restore finished/.test(log()); ) await sleep(2);
    await sleep(atMs);
    daemon.child.kill('SIGKILL');
    const exit = await within(daemon.exit, 20_000, 'faultline lazy-pages exit');
    for (const until = Date.now() + 20_000; processesUnder(d.out).length && Date.now() < until; ) await sleep(50);
    return { exit, log: log(), results: readResults(d.out) };
  };

  let x = SEED || 1;
  const next = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  t.comment(`kill moments from seed ${SEED} (replay with FAULTLINE_KILL_SEED=${SEED})`);
  const runs = 8;
  let stopped = 0;
  for (let i = 0; i < runs; i++) {
    // 0-120 ms into the verification of 288 MiB, most of it still lazy
    const at = Math.round(next() * 120);
    const { exit, log, results: rs } = await killedRestore(`work${i}`, at);
    const bad = rs.filter((r) => r.mismatches !== 0);
    t.same(bad.map((r) => `process ${r.index}: ${r.mismatches} wrong words, first ${r.first_mismatch}`), [], `run ${i} (kill ${at} ms into the verification): no process read a wrong word (${rs.length} of ${d.procs} reported)`);
    if (exit.signal === 'SIGKILL' && rs.length < d.procs) {
      stopped++;
      t.match(exit.stderr, /faultline-guardian: error: the daemon \(pid \d+\) ended without finishing the restore: killed \d+ restored processes/, `run ${i}: the guardian stopped the tree and said why`);
      // in criu's log shape too, where zdtm and a -d daemon's operator look
      t.match(log, /\d+: Error \(faultline-guardian\): the daemon \(pid \d+\) ended without finishing the restore/, `run ${i}: and in the -o log`);
    }
    t.same(processesUnder(d.out), [], `run ${i}: nothing of the tree is left running`);
  }
  t.ok(stopped > 0, `${stopped} of ${runs} kills landed before the tree had verified everything`);

  // The same kill without the guardian: the hole it closes (criu lazy-pages has it too).
  const { results } = await killedRestore('unguarded', 20, ['--no-guardian']);
  const wrong = results.reduce((n, r) => n + r.mismatches, 0);
  t.ok(wrong > 0, `--no-guardian: the tree ran on and read ${wrong} wrong words after the daemon was killed`);
});
