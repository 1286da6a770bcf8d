// Shared pieces of the end-to-end tests: temporary directories, generated trees, and the assertions
// every restore test makes (daemon exit, target exit, every page verified byte for byte).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Test } from 'tap';
import { generateImageSet, type GenerateSpec } from '../../src/images';
import type { RestoreResult } from '../../src/target/run';
import { native } from '../../src/native';

export const ROOT = path.resolve(__dirname, '../../..');
export const FIXTURE = path.join(ROOT, 'test/fixtures/criu-4.2-two-procs');
export const BASE = 0x2000_0000_0000;
export const MiB = 256; // pages

export function tempDir(t: Test, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `faultline-${name}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Generates a tree into <dir>/images and returns that path. */
export function makeImages(dir: string, spec: GenerateSpec): string {
  const images = path.join(dir, 'images');
  generateImageSet(images, spec);
  return images;
}

/** A copy of a read-only image directory that a test may damage. */
export function copyImages(from: string, dir: string): string {
  const to = path.join(dir, 'images');
  fs.cpSync(from, to, { recursive: true });
  for (const f of fs.readdirSync(to)) fs.chmodSync(path.join(to, f), 0o644);
  return to;
}

export function denseTree(processes: number, pagesEach: number): GenerateSpec {
  // The sparse and zero regions follow the dense one, 256 MiB apart or more for a bigger process.
  const gap = Math.max(0x1000_0000, Math.ceil(((pagesEach - 2048) * 4096) / 0x1000_0000) * 0x1000_0000);
  return {
    processes: Array.from({ length: processes }, (_, i) => ({
      pid: i + 1,
      ppid: i === 0 ? 0 : 1,
      regions: [
        { name: 'dense', start: BASE, pages: pagesEach - 2048, kind: 'dense' as const, seed: 10 + i },
        { name: 'sparse', start: BASE + gap, pages: 1024, kind: 'sparse' as const, step: 4, seed: 20 + i },
        { name: 'zeros', start: BASE + 2 * gap, pages: 1024, kind: 'zero' as const, seed: 0 },
      ],
    })),
  };
}

/** The stress tests' tree: n processes, a 3 MiB dense and a 1 MiB every-third-page sparse region each. */
export function chaosTree(processes: number, seedBase: number): GenerateSpec {
  return {
    processes: Array.from({ length: processes }, (_, i) => ({
      pid: i + 1,
      ppid: i ? 1 : 0,
      regions: [
        { name: 'dense', start: BASE, pages: 768, kind: 'dense' as const, seed: seedBase + i },
        { name: 'sparse', start: BASE + 0x1000_0000, pages: 256, kind: 'sparse' as const, step: 3, seed: seedBase + 10 + i },
      ],
    })),
  };
}

/** The checks of a restore that must succeed: both sides exit 0 and every page was verified. */
export function assertRestored(t: Test, r: RestoreResult, processes: number): void {
  t.equal(r.daemon.code, 0, `daemon exits 0 ${r.daemon.stderr.trim()}`);
  t.equal(r.target.code, 0, `target exits 0 ${r.target.stderr.trim()}`);
  const s = r.target.summary;
  t.ok(s, 'target printed its summary');
  t.equal(s?.mismatches, 0, 'no byte differs from the images');
  t.equal(r.target.processes.length, processes, 'every process reported');
  for (const p of r.target.processes) {
    t.equal(p.verified, p.pages, `pid ${p.pid}: all ${p.pages} pages of its lazy VMAs verified`);
    t.equal(p.mismatches, 0, `pid ${p.pid}: 0 mismatches`);
  }
  t.ok(r.daemon.summary?.ok, 'daemon summary says ok');
}

/** The checks of a restore that must be stopped: one clear line, non-zero exit, tree killed, no bad reads. */
export function assertStopped(t: Test, r: RestoreResult, mentions: RegExp): void {
  t.not(r.daemon.code, 0, 'daemon exits non-zero');
  const lines = r.daemon.stderr.split('\n').filter((l) => l.startsWith('faultline: error:'));
  t.equal(lines.length, 1, `exactly one error line: ${JSON.stringify(r.daemon.stderr)}`);
  t.match(lines[0] ?? '', mentions, 'the error names what is at fault');
  const s = r.target.summary;
  t.equal(s?.mismatches ?? 0, 0, 'no process read wrong data (no zeros where the image has data)');
  t.ok((s?.killed.length ?? 0) > 0, `restored processes were killed: ${JSON.stringify(s?.killed)} ${r.target.stderr.trim()}`);
  for (const k of s?.killed ?? []) t.equal(k.signal, 9, `pid ${k.pid} killed by SIGKILL`);
  // A process that reported (it was not killed) finished its work on memory that was all in place.
  const partial = r.target.processes.filter((p) => p.verified !== p.pages || p.mismatches !== 0);
  t.same(partial.map((p) => `pid ${p.pid}: ${p.verified} of ${p.pages} pages verified, ${p.mismatches} mismatches`), [], 'every process that was not killed verified all its pages');
}

/** Open fds of this process, to check that nothing leaks. */
export function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

export { native };

/** Zero pages read, and processes that neither verified everything nor were SIGKILLed. */
export function stopOutcome(r: RestoreResult): { mismatches: number; killed: number; complete: number; unexplained: string[] } {
  const reports = r.target.processes;
  const mismatches = Math.max(reports.reduce((n, p) => n + p.mismatches, 0), r.target.summary?.mismatches ?? 0);
  const killed = r.target.summary?.killed.filter((k) => k.signal === 9).length ?? 0;
  const complete = reports.filter((p) => p.mismatches === 0 && p.verified === p.pages).length;
  const unexplained: string[] = [];
  if (!r.target.summary) unexplained.push(`the target printed no summary (exit ${r.target.code ?? r.target.signal}): ${r.target.stderr.trim().split('\n').pop()}`);
  for (const p of reports) if (p.verified !== p.pages && p.mismatches === 0) unexplained.push(`pid ${p.pid}: ${p.verified} of ${p.pages} pages verified`);
  return { mismatches, killed, complete, unexplained };
}

/**
 * The restoring side of a remote restore: `full`'s images without its pages files (the page server
 * has them), in <dir>/local.
 */
export function withoutPages(full: string, dir: string): string {
  const local = path.join(dir, 'local');
  fs.mkdirSync(local);
  for (const f of fs.readdirSync(full)) if (!f.startsWith('pages-')) fs.copyFileSync(path.join(full, f), path.join(local, f));
  return local;
}

/**
 * How many kills a kill test makes: FAULTLINE_KILL_RUNS, else `byDefault` (kept small for `npm test`;
 * each CI run draws new moments, and a long soak is FAULTLINE_KILL_RUNS=200).
 */
export function killRuns(t: Test, byDefault: number): number {
  const n = Number(process.env.FAULTLINE_KILL_RUNS ?? byDefault);
  t.comment(`${n} kills (FAULTLINE_KILL_RUNS to change)`);
  return n;
}

/**
 * Random moments for the kill tests, deterministic per seed (FAULTLINE_KILL_SEED, else the clock),
 * the seed printed so that a failing run can be replayed. Returns a generator of values in [0, 1).
 */
export function killMoments(t: Test, what = 'kill moments'): () => number {
  const seed = Number(process.env.FAULTLINE_KILL_SEED ?? Date.now() % 100000);
  t.comment(`${what} from seed ${seed} (replay with FAULTLINE_KILL_SEED=${seed})`);
  let x = seed || 1;
  return () => (x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
}
