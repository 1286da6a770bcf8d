#!/usr/bin/env node
// Start-up cost of `faultline lazy-pages`: time from spawn to its --status-fd byte (ready: socket
// listening, every worker loaded its images) and the CPU the whole process (all threads) had used
// then and 300 ms later. Nothing is restored: the daemon is stopped with SIGTERM once measured.
//
//   node scripts/startup-probe.mjs [--runs N] [--images DIR] [--node-arg ARG]... [--workers N] [--criu]
//                                  [--cli NAME=PATH/TO/main.js]...
//
// Without --images it generates the demo's 3-process, 288 MiB tree in a temporary directory.
// --criu also measures `criu lazy-pages` on the same images (its ready: the --status-fd byte).
// --cli (repeatable) compares builds of faultline, run in turns (A B A B ...) so that a machine
// busy with other work penalizes each alike. Prints one line per run and the medians.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const TICK_NS = 1e9 / 100; // USER_HZ

const argv = process.argv.slice(2);
let runs = 7;
let images;
let workers;
let criu = false;
const nodeArgs = [];
const clis = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--runs') runs = Number(argv[++i]);
  else if (a === '--images') images = path.resolve(argv[++i]);
  else if (a === '--node-arg') nodeArgs.push(argv[++i]);
  else if (a === '--workers') workers = argv[++i];
  else if (a === '--criu') criu = true;
  else if (a === '--cli') {
    const [name, file] = argv[++i].split('=');
    clis.push([name, path.resolve(file)]);
  }
  else {
    console.error(`startup-probe: unknown argument ${a}`);
    process.exit(2);
  }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'faultline-startup-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
if (!images) {
  images = path.join(tmp, 'images');
  const { generateImageSet } = require(path.join(root, 'dist/src/images'));
  const { DEMO_TREE } = require(path.join(root, 'dist/src/cli/demo'));
  generateImageSet(images, DEMO_TREE);
}

/** CPU of every thread of pid, ns: utime+stime of the process (includes exited threads), and the sum of live threads' schedstat. */
function cpuOf(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
  let sched = 0;
  let threads = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      sched += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      threads++;
    } catch {
      // exited meanwhile
    }
  }
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  return { statMs: (ticks * TICK_NS) / 1e6, schedMs: sched / 1e6, threads, rssKiB };
}

async function one(cmd, args) {
  const work = fs.mkdtempSync(path.join(tmp, 'work-'));
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd, args(work), { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.once('close', r));
  const ready = await new Promise((resolve) => {
    child.stdio[3].once('data', () => resolve(true));
    child.stdio[3].once('end', () => resolve(false));
  });
  const readyMs = Number(process.hrtime.bigint() - t0) / 1e6;
  if (!ready) {
    await exited;
    throw new Error(`${cmd} did not get ready: ${stderr.trim()}`);
  }
  const atReady = cpuOf(child.pid);
  await new Promise((r) => setTimeout(r, 300));
  const later = cpuOf(child.pid);
  child.kill('SIGTERM');
  await exited;
  return { readyMs, cpuReadyMs: atReady.schedMs, cpuLaterMs: later.schedMs, statLaterMs: later.statMs, threads: later.threads, rssMiB: later.rssKiB / 1024 };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function report(name, rows) {
  const m = (k) => median(rows.map((r) => r[k]));
  console.log(`${name} median of ${rows.length}: ready ${m('readyMs').toFixed(1)} ms, cpu at ready ${m('cpuReadyMs').toFixed(1)} ms, cpu +300ms ${m('cpuLaterMs').toFixed(1)} ms, rss ${m('rssMiB').toFixed(1)} MiB`);
}

/** Runs each [name, cmd, args] in turn, `runs` times. */
async function series(variants) {
  const rows = new Map(variants.map(([name]) => [name, []]));
  for (let i = 0; i < runs; i++) {
    for (const [name, cmd, args] of variants) {
      const r = await one(cmd, args);
      rows.get(name).push(r);
      console.log(`${name} run ${i + 1}: ready ${r.readyMs.toFixed(1)} ms, cpu at ready ${r.cpuReadyMs.toFixed(1)} ms, +300ms ${r.cpuLaterMs.toFixed(1)} ms (stat ${r.statLaterMs.toFixed(0)}), threads ${r.threads}, rss ${r.rssMiB.toFixed(1)} MiB`);
    }
  }
  for (const [name, r] of rows) report(name, r);
}

const extra = workers ? ['--workers', workers] : [];
if (!clis.length) clis.push(['faultline', path.join(root, 'dist/src/cli/main.js')]);
const variants = clis.map(([name, cli]) => [name, process.execPath, (work) => [...nodeArgs, cli, 'lazy-pages', '-D', images, '-W', work, '--status-fd', '3', ...extra]]);
if (criu) variants.push(['criu', '/usr/local/bin/criu', (work) => ['lazy-pages', '-D', images, '-W', work, '--status-fd', '3']]);
await series(variants);
