// Coverage-guided fuzzing of every parser that reads outside input (test/fuzz/targets.ts), each
// target for a bounded time in `npm test` (FAULTLINE_FUZZ_SECONDS, default 1), in a process of its
// own (test/fuzz/run.ts); `npm run fuzz` runs longer and keeps its corpus. Inputs that once crashed a
// parser live in test/fuzz/regressions/<target>/ and are replayed first.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { TARGETS } from './targets';

const SECONDS = Number(process.env.FAULTLINE_FUZZ_SECONDS ?? 1);
const SEED = Number(process.env.FAULTLINE_FUZZ_SEED ?? Date.now() % 1_000_000);
const RUN = path.join(__dirname, 'run.js');

t.comment(`fuzz seed ${SEED} (replay with FAULTLINE_FUZZ_SEED=${SEED}), ${SECONDS} s per target`);
for (const target of TARGETS) {
  t.test(`fuzz ${target.name}`, async (t) => {
    const r = spawnSync(process.execPath, [RUN, '--target', target.name, '--seconds', String(SECONDS), '--seed', String(SEED), '--json'], { encoding: 'utf8', timeout: 60_000 + SECONDS * 1000 });
    t.equal(r.stderr, '', 'the fuzzer ran without complaint');
    const s = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { execs: number; execsPerSecond: number; features: number; corpus: number; regressions: number; replayFailures: string[]; crashes: { id: string; bytes: number; hex: string; error: string }[] };
    t.comment(`${target.name}: ${s.execs} execs (${s.execsPerSecond}/s), ${s.features} coverage features, corpus ${s.corpus}, ${s.regressions} regression inputs replayed`);
    t.same(s.replayFailures, [], `${target.name}: every input that once crashed it now ends in the parser's own error`);
    t.same(s.crashes.map((c) => `${c.id} (${c.bytes} bytes, hex ${c.hex.slice(0, 128)}): ${c.error}`), [], `${target.name}: no input makes the parser throw anything but its own error`);
    t.ok(s.execs > 100, `${target.name}: it ran (${s.execs} inputs)`);
    t.ok(s.features > 10, `${target.name}: coverage guided it (${s.features} features)`);
    t.equal(r.status, 0);
  });
}
