// Signals the daemon does not expect (issue 10): each one whose default action would end the Node
// process mid-restore must end it through fail-stop (tree killed, missing pages poisoned, one error
// line), never by Node's default, which leaves the tree reading zeros. SIGUSR1 must not open
// Node's inspector in the daemon.
import t from 'tap';
import * as path from 'node:path';
import { runRestore } from '../../src/target/run';
import { MiB, denseTree, makeImages, stopOutcome, tempDir } from '../helpers/restore';

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
