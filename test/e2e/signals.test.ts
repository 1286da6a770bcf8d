// Signals the daemon does not expect (issue 10): each one whose default action would end the Node
// process mid-restore must end it through fail-stop (tree killed, missing pages poisoned, one error
// line), never by Node's default, which leaves the tree reading zeros. SIGUSR1 must not open
// Node's inspector in the daemon.
import t from 'tap';
import * as path from 'node:path';
import { runRestore } from '../../src/target/run';
import { MiB, denseTree, killMoments, makeImages, stopOutcome, tempDir } from '../helpers/restore';

const SIGNALS: NodeJS.Signals[] = ['SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGALRM'];

t.test('SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM mid-restore: fail-stop, never zeros', async (t) => {
  const dir = tempDir(t, 'signals');
  const images = makeImages(dir, denseTree(2, 128 * MiB));
  for (const sig of SIGNALS) {
    const r = await runRestore({
      imagesDir: images,
      workDir: path.join(dir, sig),
      // --no-guardian: the daemon's own handling is under test, not the guardian's
      daemonArgs: ['--no-guardian'],
      target: { pattern: 'random', fraction: 0.5, seed: 3 },
      onStarted: (daemon) => setTimeout(() => daemon.kill(sig), 20),
      retries: 0,
    });
    t.equal(r.daemon.code, 1, `${sig}: the daemon exits 1 (${r.daemon.code ?? r.daemon.signal})`);
    t.match(r.daemon.stderr, new RegExp(`faultline: error: received ${sig} before the restore completed; the restored processes were stopped`), `${sig}: one error line naming the signal`);
    t.notMatch(r.daemon.stderr, /Debugger listening/, `${sig}: no inspector opened`);
    const o = stopOutcome(r);
    t.equal(o.mismatches, 0, `${sig}: no zero page read (${o.killed} processes SIGKILLed)`);
    t.same(o.unexplained, [], `${sig}: every process verified everything or was killed`);
  }
});

// Fail-stop while mm events may be pending (issue 10, "poison that holds"): a FORK, REMAP or REMOVE
// that nobody has read yet keeps its thread inside fork()/mremap()/madvise() and makes
// UFFDIO_POISON answer EAGAIN. The tree is SIGKILLed before anything is poisoned, so a thread held
// by an unread event dies there (a fork whose FORK event is unread fails, its child never runs);
// the test SIGTERMs the daemon at random moments of a script full of events, many times.
t.test('SIGTERM at random moments while forks, mremaps and DONTNEEDs are in flight: never zeros', async (t) => {
  const dir = tempDir(t, 'events-stop');
  const images = makeImages(dir, denseTree(2, 32 * MiB));
  const next = killMoments(t, 'stop moments');
  let stopped = 0;
  for (let i = 0; i < 8; i++) {
    // the hand-over takes ~20 ms from the target's start, the script's events the next ~150 ms
    const at = Math.round(next() * 170);
    const r = await runRestore({
      imagesDir: images,
      workDir: path.join(dir, `run${i}`),
      daemonArgs: ['--no-guardian', '--workers', '2'],
      target: { pattern: 'random', fraction: 0.3, seed: 5, threads: 2, extraArgs: ['--script', 'touch:0-20,fork,mremap:100-300>s0,touch:s0-s50,dontneed:400-500,swap:600-700,800-900,touch:400-450,fork,touch:600-650'] },
      onStarted: (daemon) => setTimeout(() => daemon.kill('SIGTERM'), at),
      retries: 0,
    });
    const o = stopOutcome(r);
    if (r.daemon.code === 1) stopped++;
    t.equal(o.mismatches, 0, `run ${i} (SIGTERM at ${at} ms; daemon ${r.daemon.code === 1 ? 'fail-stopped' : `exited ${r.daemon.code}`}): no zero page read (${o.killed} SIGKILLed, ${o.complete} complete)`);
    t.same(o.unexplained, [], `run ${i}: every process verified everything or was killed`);
  }
  t.ok(stopped > 0, `${stopped} of 8 stops landed before the restore completed`);
});
