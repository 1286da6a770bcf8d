// Restored programs that do not hold still: each uffd event alone, while pages are still missing,
// with every touched page verified (image data where it belongs, zeros after DONTNEED).
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { TARGET, runRestore, type RestoreResult } from '../../src/target/run';
import { MiB, denseTree, makeImages, tempDir } from '../helpers/restore';

// 2 processes of 12 MiB: pages 0-1023 dense, then (in a second VMA) sparse, then zeros.
// Three workers: every process is filled by its owner and by two others on fill leases, so every
// event here also races copies from workers that learn of it only through the copy gate's epoch.
const WORKERS = 3;
async function scripted(t: Test, name: string, script: string[], opts: { threads?: number; processes?: number; pagesEach?: number; daemonArgs?: string[] } = {}): Promise<RestoreResult> {
  const dir = tempDir(t, name);
  const images = makeImages(dir, denseTree(opts.processes ?? 2, opts.pagesEach ?? 12 * MiB));
  return runRestore({
    imagesDir: images,
    workDir: dir,
    daemonArgs: ['--workers', String(WORKERS), ...(opts.daemonArgs ?? [])],
    target: { fraction: 0.3, pattern: 'random', threads: opts.threads ?? 1, extraArgs: script },
  });
}

function assertClean(t: Test, r: RestoreResult, processes: number): void {
  t.equal(r.daemon.code, 0, `daemon exits 0 ${r.daemon.stderr.trim()}`);
  t.equal(r.target.code, 0, `target exits 0 ${r.target.stderr.trim()}`);
  t.equal(r.target.summary?.mismatches, 0, 'no byte differs from what the program must see');
  t.equal(r.daemon.summary?.workers, WORKERS, `${WORKERS} workers filled`);
  t.equal(r.target.processes.length, processes, `${processes} process reports`);
  for (const p of r.target.processes) t.equal(p.mismatches, 0, `pid ${p.pid}${(p as { forkOf?: number }).forkOf ? ' (forked)' : ''}: 0 mismatches over ${p.verified} pages`);
}

t.test('fork mid-restore: the child faults and verifies all its inherited memory', async (t) => {
  // 64 MiB each: the background fill (≈ 30 ms) is still running when the processes fork.
  const r = await scripted(t, 'fork', ['--script', 'touch:0-50,fork,touch:50-120'], { pagesEach: 64 * MiB });
  assertClean(t, r, 4);
  const children = r.target.processes.filter((p) => (p as { forkOf?: number }).forkOf);
  t.equal(children.length, 2, 'one forked child per process');
  for (const c of children) t.ok(c.verified >= c.pages, `forked child of ${c.pid} verified all ${c.pages} pages`);
  t.ok((r.daemon.summary?.processes ?? 0) >= 3, `the daemon restored children it learnt of through UFFD_EVENT_FORK (${r.daemon.summary?.processes} processes)`);
});

t.test('mremap move: the image data travels with the pages', async (t) => {
  assertClean(t, await scripted(t, 'mremap', ['--script', 'touch:0-10,mremap:100-300>s0,touch:s0-s50']), 2);
});

t.test('mremap grow and shrink', async (t) => {
  assertClean(t, await scripted(t, 'grow', ['--script', 'shrink:0-1024-24,touch:900-1000,grow:0-1000+16']), 2);
});

t.test('two regions swapped through a temporary address', async (t) => {
  assertClean(t, await scripted(t, 'swap', ['--script', 'touch:0-20,swap:100-300,500-700,touch:100-150,touch:500-550']), 2);
});

t.test('MADV_DONTNEED: the range reads as zeros afterwards, never as image data', async (t) => {
  assertClean(t, await scripted(t, 'dontneed', ['--script', 'touch:300-320,dontneed:300-400,touch:300-400']), 2);
});

t.test('munmap mid-restore', async (t) => {
  assertClean(t, await scripted(t, 'unmap', ['--script', 'unmap:200-600,touch:600-700']), 2);
});

t.test('a process exiting mid-restore while the others complete', async (t) => {
  // Three workers filling every process can otherwise complete pid 2 before it exits, and then
  // nothing exits early: seen under the suite's load with 64 MiB each and 256-page leases, and once
  // more with 2048-page ones. One-page leases make the fill of 3 × 64 MiB take ≈ 0.5 s.
  const r = await scripted(t, 'exit', ['--script-pid', '2:touch:0-10,exit'], { processes: 3, pagesEach: 64 * MiB, daemonArgs: ['--fill-chunk', '1'] });
  assertClean(t, r, 3);
  t.ok((r.daemon.summary?.exitedEarly ?? 0) >= 1, `exited early: ${r.daemon.summary?.exitedEarly}`);
  const others = r.target.processes.filter((p) => p.pid !== 2);
  for (const p of others) t.equal(p.verified, p.pages, `pid ${p.pid} fully verified`);
});

t.test('a child that becomes a zombie', async (t) => {
  assertClean(t, await scripted(t, 'zombie', ['--script', 'touch:0-10,zombie,touch:10-40']), 2);
});

t.test('several threads faulting the same pages at once', async (t) => {
  assertClean(t, await scripted(t, 'same', ['--script', 'threads-same:0-200'], { threads: 4 }), 2);
});

t.test('the restore target refuses a malformed --script step in one line, before anything runs', async (t) => {
  for (const [script, shown] of [
    ['sleep:abc', 'sleep:abc'],
    ['sleep:70000', 'sleep:70000'],
    ['sleep', 'sleep'],
    ['touch', 'touch'],
    ['touch:1-2,sleep:5x,touch:3-4', 'sleep:5x'],
    ['nap:5', 'nap'],
  ]) {
    const r = spawnSync(TARGET, ['--script', script!], { encoding: 'utf8' });
    t.equal(r.status, 2, `--script ${script}: usage error`);
    t.match(r.stderr, new RegExp(`^faultline-target: --script: (bad|unknown) step '${shown!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' \\(see --help\\)\n$`), `--script ${script}: names the step`);
  }
});
