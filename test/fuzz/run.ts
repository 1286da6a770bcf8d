// One fuzz target in a process of its own (few scripts loaded: V8's coverage report per input stays
// small, so this runs several times faster than inside the test runner).
//   node dist/test/fuzz/run.js [--target NAME] [--seconds N] [--seed N] [--json] [--save]
// --save keeps new corpus entries in .fuzz-corpus/<target>/ (reused by later runs) and writes each
// crash to test/fuzz/regressions/<target>/, where the test suite replays it from then on.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { fuzz } from './engine';
import { TARGETS } from './targets';

const ROOT = path.resolve(__dirname, '../../..');
export const REGRESSIONS = path.join(ROOT, 'test/fuzz/regressions');
const CORPUS = path.join(ROOT, '.fuzz-corpus');

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function readDir(dir: string): Buffer[] {
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort().map((f) => fs.readFileSync(path.join(dir, f))) : [];
}

const only = arg('target');
const seconds = Number(arg('seconds') ?? 60);
const seed = Number(arg('seed') ?? Date.now() % 1_000_000);
const save = process.argv.includes('--save');
const json = process.argv.includes('--json');
const targets = TARGETS.filter((t) => !only || t.name === only);
if (!targets.length) {
  process.stderr.write(`fuzz: no target named '${only}' (targets: ${TARGETS.map((t) => t.name).join(', ')})\n`);
  process.exit(2);
}
let crashed = 0;
for (const target of targets) {
  const regressions = readDir(path.join(REGRESSIONS, target.name));
  // replayed first: an input that once crashed must now end in the parser's own error, or pass
  const replayFailures: string[] = [];
  for (const input of regressions) {
    try {
      target.run(input);
    } catch (e) {
      if (!target.expected(e)) replayFailures.push((e as Error).stack ?? String(e));
    }
  }
  const r = fuzz(target, { seconds, seed, extraCorpus: [...regressions, ...(save ? readDir(path.join(CORPUS, target.name)) : [])] });
  if (save) {
    const dir = path.join(CORPUS, target.name);
    fs.mkdirSync(dir, { recursive: true });
    for (const c of r.corpus) fs.writeFileSync(path.join(dir, createHash('sha1').update(c).digest('hex').slice(0, 16)), c);
    for (const c of r.crashes) {
      fs.mkdirSync(path.join(REGRESSIONS, target.name), { recursive: true });
      fs.writeFileSync(path.join(REGRESSIONS, target.name, `crash-${c.id}`), c.input);
    }
  }
  crashed += r.crashes.length + replayFailures.length;
  const summary = {
    target: target.name,
    seed,
    execs: r.execs,
    seconds: r.seconds,
    execsPerSecond: Math.round(r.execs / r.seconds),
    features: r.features,
    corpus: r.corpus.length,
    regressions: regressions.length,
    replayFailures,
    crashes: r.crashes.map((c) => ({ id: c.id, bytes: c.input.length, hex: c.input.subarray(0, 256).toString('hex'), error: c.error.split('\n').slice(0, 4).join('\n') })),
  };
  if (json) process.stdout.write(JSON.stringify(summary) + '\n');
  else {
    process.stdout.write(`${target.name}: ${r.execs} execs in ${r.seconds.toFixed(1)} s (${summary.execsPerSecond}/s), ${r.features} coverage features, corpus ${r.corpus.length}, ${r.crashes.length} crashes\n`);
    for (const c of summary.crashes) process.stdout.write(`  crash ${c.id} (${c.bytes} bytes): ${c.error.replace(/\n/g, ' | ')}\n`);
  }
}
process.exitCode = crashed ? 1 : 0;
