#!/usr/bin/env node
// Runs the tap suite on the compiled tests and ends with the one line CI reads:
// "N passed, N failed, N skipped" (tap itself prints no such line). Counts the named tests
// (first-level subtests of each test file); a file that dies before any of its tests counts as one
// failure. Extra arguments select test files (default: all of dist/test).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
process.chdir(root);

const setup = spawnSync('bash', ['scripts/setup-test-deps.sh'], { stdio: 'inherit' });
if (setup.status !== 0) console.log('# setup-test-deps.sh failed: tests that need those tools will say they are skipped');

const preflight = spawnSync(process.execPath, ['scripts/preflight.mjs'], { stdio: 'inherit' });
if (preflight.status !== 0) process.exit(preflight.status ?? 1);

// Where ../shared/criu exists (CI), the real-CRIU tests must run: a skip there is a failure.
const criuRequired = fs.existsSync(path.join(root, '..', 'shared', 'criu', 'build.sh'));
const criuSkips = [];

// CRIU's own lazy page server fills pipes of up to 4 MiB, and root here lacks CAP_SYS_RESOURCE to go
// past fs.pipe-max-size: raise it for the run, put it back afterwards.
const PIPE_MAX = '/proc/sys/fs/pipe-max-size';
let pipeMaxBefore;
try {
  pipeMaxBefore = fs.readFileSync(PIPE_MAX, 'utf8').trim();
  if (Number(pipeMaxBefore) < 4 << 20) fs.writeFileSync(PIPE_MAX, String(4 << 20));
  else pipeMaxBefore = undefined;
} catch (e) {
  console.log(`# cannot raise fs.pipe-max-size to 4 MiB (${e.code ?? e.message}): tests with CRIU's own page server may fail`);
  pipeMaxBefore = undefined;
}
const restorePipeMax = () => {
  if (pipeMaxBefore === undefined) return;
  try {
    fs.writeFileSync(PIPE_MAX, pipeMaxBefore);
  } catch {
    // nothing more to do: said above what the run needs
  }
  pipeMaxBefore = undefined;
};
process.on('exit', restorePipeMax);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

const args = process.argv.slice(2);
const files = args.length ? args : listTests('dist/test');
// tap rebuilds its runner when the plugin list in package.json changes (ours drops the TypeScript
// loader: the tests run compiled, and it cost ≈ 1.7 s per file), but only for the run after the one
// that notices: build first, so that a fresh clone's one run has it.
spawnSync(process.execPath, ['node_modules/tap/dist/esm/run.mjs', 'build'], { stdio: ['ignore', 'ignore', 'inherit'] });
const tap = spawn(process.execPath, ['node_modules/tap/dist/esm/run.mjs', '--reporter=tap', ...files], { stdio: ['ignore', 'pipe', 'inherit'] });

let passed = 0;
let failed = 0;
let skipped = 0;
let fileHadTests = false;
const failures = [];
const rl = readline.createInterface({ input: tap.stdout });
rl.on('line', (line) => {
  process.stdout.write(line + '\n');
  const criuSkip = /^(\s*)ok \d+ - (.*?) # SKIP (needs real CRIU.*?)(?: # time=.*)?$/.exec(line);
  if (criuSkip) criuSkips.push({ name: `${criuSkip[2]} (${criuSkip[3]})`, firstLevel: criuSkip[1] === '    ' });
  if (/^# Subtest: /.test(line)) fileHadTests = false;
  const sub = /^    (not )?ok \d+ - (.*?)(?: # (SKIP|TODO)\b(.*))?(?: # time=.*)?$/.exec(line);
  if (sub) {
    fileHadTests = true;
    if (sub[3] === 'SKIP') skipped++;
    else if (sub[1]) {
      failed++;
      failures.push(sub[2]);
    } else passed++;
    return;
  }
  const top = /^(not )?ok \d+ - (\S+)/.exec(line);
  if (top && top[1] && !fileHadTests) {
    failed++;
    failures.push(top[2]);
  }
});
tap.on('close', (code) => {
  // The whole suite also runs the performance gate (issue 3), counted as one more test.
  if (!args.length && process.env.FAULTLINE_SKIP_GATE !== '1') {
    console.log('# performance gate: npm run bench:gate (faultline/baseline ratios vs bench/gate.json)');
    const gate = spawnSync(process.execPath, ['dist/bench/gate.js'], { stdio: 'inherit' });
    if (gate.status === 0) passed++;
    else {
      failed++;
      failures.push('performance gate');
    }
    if (code === 0 && gate.status !== 0) code = 1;
  } else if (!args.length) {
    console.log('# performance gate skipped: FAULTLINE_SKIP_GATE=1');
    skipped++;
  }
  if (criuRequired && criuSkips.length) {
    console.log(`# ../shared/criu is here, so the real-CRIU tests must run, but ${criuSkips.length} were skipped: ${criuSkips.map((s) => s.name).join('; ')}`);
    // counted as failures, not also as skips
    skipped -= criuSkips.filter((s) => s.firstLevel).length;
    failed += criuSkips.length;
    failures.push(...criuSkips.map((s) => `skipped real-CRIU test: ${s.name}`));
    if (code === 0) code = 1;
  }
  if (failures.length) console.log(`# failed: ${failures.join('; ')}`);
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(code ?? 1);
});

function listTests(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...listTests(p));
    else if (e.name.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}
