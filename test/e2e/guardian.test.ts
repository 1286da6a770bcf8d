// The guardian (issue 10): a daemon SIGKILLed at a random moment of a restore must never leave the
// tree reading zero pages. Each process either verified every one of its pages against the images,
// or was SIGKILLed before it could read a page the daemon had not filled.
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { runRestore, type RestoreResult } from '../../src/target/run';
import { denseTree, killMoments, killRuns, makeImages, MiB, stopOutcome as outcome, tempDir } from '../helpers/restore';

const PROCESSES = 3;
/**
 * Kills the daemon `killAfterMs` after the target's start: before the restorer connected, while uffds
 * are still in the hand-over socket's buffer (the guardian holds the socket and takes them), during
 * the fill, the faults and the events, or after the restore completed. `fromFinished` counts from
 * the daemon's "restore finished" (-v3) instead.
 */
async function killedRestore(t: Test, images: string, dir: string, name: string, killAfterMs: number, daemonArgs: string[], script?: string[], fromFinished = false): Promise<RestoreResult> {
  let daemon: ChildProcess | undefined;
  let seen = '';
  const kill = () => setTimeout(() => daemon?.kill('SIGKILL'), killAfterMs);
  return runRestore({
    imagesDir: images,
    workDir: path.join(dir, name),
    daemonArgs: ['--workers', '2', '-v3', ...daemonArgs],
    target: { pattern: 'random', fraction: 0.5, seed: 11, threads: 2, ...(script ? { extraArgs: script } : {}) },
    onStarted: (d) => {
      daemon = d;
      if (!fromFinished) kill();
    },
    onDaemonStderr: (chunk) => {
      if (!fromFinished || /restore finished/.test(seen)) return;
      seen += chunk;
      if (/restore finished/.test(seen)) kill();
    },
    retries: 0,
  });
}

t.test('SIGKILL of the daemon at random moments: no process ever reads a zero page', async (t) => {
  const dir = tempDir(t, 'guardian');
  const images = makeImages(dir, denseTree(PROCESSES, 64 * MiB));
  const next = killMoments(t);
  const runs = killRuns(t, 12);
  let killedRuns = 0;
  for (let i = 0; i < runs; i++) {
    // Half the runs in the first 10 ms (connect and hand-over), half in 0-250 ms (fill, faults, events).
    const at = Math.round(next() * (i % 2 ? 250 : 10));
    // Every third run forks, so that the guardian also holds children's uffds.
    const script = i % 3 === 2 ? ['--script', 'touch:0-50,fork,touch:50-400'] : undefined;
    const r = await killedRestore(t, images, dir, `run${i}`, at, [], script);
    const o = outcome(r);
    if (o.mismatches) t.comment(`daemon: ${r.daemon.stderr.trim().split('\n').slice(-3).join(' | ')}\ntarget: ${r.target.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    t.equal(o.mismatches, 0, `run ${i} (kill at ${at} ms${script ? ', forking' : ''}): no zero page read (${o.complete} processes complete, ${o.killed} SIGKILLed)`);
    t.same(o.unexplained, [], `run ${i}: every process verified everything or was killed`);
    if (r.daemon.signal === 'SIGKILL' && o.killed > 0) {
      killedRuns++;
      t.match(r.daemon.stderr, /faultline-guardian: error: the daemon \(pid \d+\) ended without finishing the restore(?: \(\d+ hand-overs it never read\))?: killed \d+ restored processes/, `run ${i}: the guardian said why it stopped the tree`);
    }
  }
  t.ok(killedRuns > 0, `${killedRuns} of ${runs} kills landed before the restore completed`);
});

t.test('without the guardian the same kill leaves zero pages (the hole this closes)', async (t) => {
  const dir = tempDir(t, 'no-guardian');
  const images = makeImages(dir, denseTree(2, 128 * MiB));
  // counted from "restore finished": a kill during the hand-over would just make the target abort
  const r = await killedRestore(t, images, dir, 'unguarded', 30, ['--no-guardian'], undefined, true);
  const o = outcome(r);
  t.ok(o.mismatches > 0, `--no-guardian: ${o.mismatches} zero pages read after the daemon was killed`);
});
