// The copy floor: how fast UFFDIO_COPY alone fills fresh memory from a scenario's pages file on this
// machine (native/floor/copy-floor.c). An idle drain is judged against it as a fraction: the ratio
// to the C baseline says who is ahead, the fraction of the floor says how much is left to win.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const COPY_FLOOR = path.resolve(__dirname, '../../native/bin/faultline-copy-floor');

/** Pages per UFFDIO_COPY: faultline's largest background chunk (1 MiB). */
export const FLOOR_SLICE = 256;
/** A floor rep of 256 MiB takes ≈ 0.1 s; more of them than the daemons' steadies the median on a noisy VM. */
export const FLOOR_REPS = 5;

export interface FloorResult {
  threads: number;
  /** median over the reps */
  gbps: number;
  pagesPerSec: number;
  runsGBps: number[];
}

/** faultline-copy-floor --json's output. */
export interface CopyFloor {
  pagesFile: string;
  pages: number;
  slice: number;
  reps: number;
  /** every rep's region was compared byte for byte with the pages file */
  verified: boolean;
  /** the unreported first rep: fresh guest memory the host may not have backed yet */
  warmup: { threads: number; gbps: number; pagesPerSec: number };
  results: FloorResult[];
}

/** The scenario's pages file to copy from: the largest pages-*.img (a tree has one per process). */
export function pagesFileOf(imagesDir: string): string {
  const files = fs
    .readdirSync(imagesDir)
    .filter((f) => /^pages-\d+\.img$/.test(f))
    .map((f) => ({ file: path.join(imagesDir, f), size: fs.statSync(path.join(imagesDir, f)).size }))
    .sort((a, b) => b.size - a.size);
  if (!files.length) throw new Error(`copy floor: no pages-*.img in ${imagesDir}`);
  return files[0].file;
}

/** "1 thread 3.11 GB/s, 2 threads 5.12 GB/s" */
export function formatFloor(results: readonly { threads: number; gbps: number }[]): string {
  return results.map((f) => `${f.threads} thread${f.threads === 1 ? '' : 's'} ${f.gbps.toFixed(2)} GB/s`).join(', ');
}

/** One thread, and every CPU the process may use (the daemons may use them all too). */
export function floorThreads(): number[] {
  const n = os.availableParallelism();
  return n > 1 ? [1, n] : [1];
}

export interface FloorOptions {
  threads?: number[];
  reps?: number;
  slice?: number;
}

export function runCopyFloor(imagesDir: string, o: FloorOptions = {}): CopyFloor {
  const pagesFile = pagesFileOf(imagesDir);
  const args = [
    '--pages-file', pagesFile,
    '--threads', (o.threads ?? floorThreads()).join(','),
    '--slice', String(o.slice ?? FLOOR_SLICE),
    '--reps', String(o.reps ?? FLOOR_REPS),
    '--json',
  ];
  const r = spawnSync(COPY_FLOOR, args, { encoding: 'utf8', timeout: 300_000 });
  if (r.error) throw new Error(`copy floor: cannot run ${COPY_FLOOR} (${r.error.message}); build it with \`make -C native\``);
  if (r.status !== 0) throw new Error(`copy floor failed (exit ${r.status ?? r.signal}): ${r.stderr.trim().split('\n').pop()}`);
  const floor = JSON.parse(r.stdout) as CopyFloor;
  if (!floor.verified || !floor.results.length) throw new Error(`copy floor: unexpected output from ${COPY_FLOOR}: ${r.stdout.trim()}`);
  return floor;
}
