// `faultline demo` (npm start): generate a sample checkpoint, restore it lazily through the daemon
// and the C restore target, and show the summary next to the target's page-by-page verification.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateImageSet, type GenerateSpec } from '../images';
import { formatSummary } from '../engine/summary';
import { runRestore } from '../target/run';
import { checkUffdAvailable } from './preflight';

const MiB = 256; // pages
const BASE = 0x2000_0000_0000; // far from where the target's own libraries and heap live

/** 3 processes, 288 MiB: dense, sparse (every 4th page, the rest holes) and all-zero regions. */
export const DEMO_TREE: GenerateSpec = {
  processes: [
    {
      pid: 1,
      ppid: 0,
      regions: [
        { name: 'heap', start: BASE, pages: 128 * MiB, kind: 'dense', seed: 1 },
        { name: 'sparse', start: BASE + 0x1000_0000, pages: 16 * MiB, kind: 'sparse', step: 4, seed: 2 },
        { name: 'zeros', start: BASE + 0x2000_0000, pages: 16 * MiB, kind: 'zero', seed: 0 },
      ],
    },
    {
      pid: 2,
      ppid: 1,
      regions: [
        { name: 'heap', start: BASE, pages: 64 * MiB, kind: 'dense', seed: 3 },
        { name: 'sparse', start: BASE + 0x1000_0000, pages: 8 * MiB, kind: 'sparse', step: 4, seed: 4 },
      ],
    },
    {
      pid: 3,
      ppid: 1,
      regions: [
        { name: 'heap', start: BASE, pages: 48 * MiB, kind: 'dense', seed: 5 },
        { name: 'zeros', start: BASE + 0x2000_0000, pages: 8 * MiB, kind: 'zero', seed: 0 },
      ],
    },
  ],
};

export async function demo(flags: { dir?: string; json?: boolean }): Promise<number> {
  checkUffdAvailable();
  const dir = flags.dir ? path.resolve(flags.dir) : fs.mkdtempSync(path.join(os.tmpdir(), 'faultline-demo-'));
  const imagesDir = path.join(dir, 'images');
  try {
    fs.rmSync(imagesDir, { recursive: true, force: true });
    const t0 = Date.now();
    generateImageSet(imagesDir, DEMO_TREE);
    const say = (s: string) => !flags.json && process.stdout.write(s + '\n');
    say(`faultline demo: wrote a 3-process checkpoint (288 MiB) to ${imagesDir} in ${Date.now() - t0} ms`);
    say('faultline demo: restoring lazily: each process touches a random 25 % of its pages with 2 threads, then every page is verified');
    const r = await runRestore({
      imagesDir,
      workDir: path.join(dir, 'work'),
      target: { pattern: 'random', fraction: 0.25, threads: 2, seed: 42 },
    });
    const s = r.daemon.summary;
    const t = r.target.summary;
    const ok = r.daemon.code === 0 && r.target.code === 0 && !!t && t.mismatches === 0 && t.processes === 3;
    if (flags.json) {
      process.stdout.write(JSON.stringify({ ok, daemon: s ?? { error: r.daemon.error ?? r.daemon.stderr.trim() }, target: t }) + '\n');
    } else {
      if (s) say(formatSummary(s));
      else say(`faultline demo: the daemon failed (exit ${r.daemon.code}): ${r.daemon.stderr.trim()}`);
      if (t) {
        const touched = r.target.processes.reduce((a, p) => a + p.touched, 0);
        const p50 = Math.max(...r.target.processes.map((p) => p.latencyNs.p50)) / 1000;
        const p99 = Math.max(...r.target.processes.map((p) => p.latencyNs.p99)) / 1000;
        say(`restore target: ${t.processes} processes, ${touched} pages touched by the workload (first-touch p50 ${p50.toFixed(1)} µs, p99 ${p99.toFixed(1)} µs)`);
        say(`verification: ${t.verified} pages compared byte for byte with the images, ${t.mismatches} mismatches -> ${ok ? 'VERIFIED' : 'FAILED'}`);
      } else {
        say(`restore target failed (exit ${r.target.code}): ${r.target.stderr.trim()}`);
      }
    }
    return ok ? 0 : 1;
  } finally {
    if (!flags.dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}
