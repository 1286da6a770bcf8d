// The progress bar (issue 11): on a terminal, `faultline lazy-pages` draws pages in place of the
// total, the rate and the time left while the restore fills; with stderr a pipe it draws nothing.
// The terminal is a real pseudo-terminal (Python's pty module), the restore a real one, verified.
import t from 'tap';
import * as path from 'node:path';
import { runRestore } from '../../src/target/run';
import { MiB, denseTree, makeImages, stopOutcome, tempDir } from '../helpers/restore';

// pty.spawn gives the daemon a terminal on 0-2 (fd 3, --status-fd, is inherited as it is) and copies
// what it draws to this process; its exit status is the daemon's.
const PTY = ['python3', '-c', 'import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))'];

t.test('on a terminal: a progress bar while the restore fills; on a pipe: none', async (t) => {
  const dir = tempDir(t, 'progress');
  const images = makeImages(dir, denseTree(2, 128 * MiB));
  // One worker and small fill copies: the fill lasts long enough for several redraws.
  const daemonArgs = ['--workers', '1', '--fill-chunk', '4'];
  const tty = await runRestore({ imagesDir: images, workDir: path.join(dir, 'tty'), daemonArgs, daemonWrap: PTY, target: { pattern: 'random', fraction: 0.2, seed: 3 } });
  const o = stopOutcome(tty);
  t.equal(tty.daemon.code, 0, `daemon exits 0 ${tty.daemon.stderr}`);
  t.equal(o.complete, 2, 'both processes verified every page');
  t.equal(o.mismatches, 0, 'no byte differs from the images');
  // What the terminal showed (stdout of the pty copier): the bar, redrawn, ending at 100 %.
  const screen = tty.daemon.stdout.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
  t.match(screen, /faultline \S+ \d+% \| \d+\/\d+ MiB \| \d+ MiB\/s \| ETA (\?|[\d.]+s) \| \d+ processes, \d+ faults/, 'the bar shows pages, rate, ETA');
  t.match(screen, /100% \| (\d+)\/\1 MiB \| \d+ MiB\/s \| ETA 0s/, 'and ends with every lazy page in place');
  t.ok((screen.match(/\d+% \|/g) ?? []).length >= 2, `redrawn while filling (${(screen.match(/\d+% \|/g) ?? []).length} frames)`);

  const piped = await runRestore({ imagesDir: images, workDir: path.join(dir, 'pipe'), daemonArgs, target: { pattern: 'random', fraction: 0.2, seed: 3 } });
  t.equal(piped.daemon.code, 0, 'daemon exits 0');
  t.notMatch(piped.daemon.stderr, /% \|/, 'no bar on a pipe');
  t.notMatch(piped.daemon.stdout, /% \|/, 'nor on stdout');
});
