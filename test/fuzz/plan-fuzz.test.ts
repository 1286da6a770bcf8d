// Coverage-guided fuzzing of the C reader of the restore plan (native/plan/plan.c, read by
// faultline-target and faultline-baseline): native/bin/faultline-plan-fuzz (native/fuzz/plan-fuzz.c,
// gcc trace-pc coverage, ASan+UBSan) for FAULTLINE_FUZZ_SECONDS (default 2), from the seed plans of
// test/fuzz/seeds/plan/, after replaying the inputs that once crashed it (test/fuzz/regressions/plan/).
// `npm run fuzz` runs it longer and keeps its corpus (test/fuzz/run-plan.ts).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { renderTargetPlan } from '../../src/target/plan';
import { PLAN_FUZZER, PLAN_SEEDS, ROOT, planFuzzArgs } from './run-plan';

const SECONDS = Number(process.env.FAULTLINE_FUZZ_SECONDS ?? 2);
const SEED = Number(process.env.FAULTLINE_FUZZ_SEED ?? Date.now() % 1_000_000);
const FIXTURE = path.join(ROOT, 'test/fixtures/criu-4.2-two-procs/img');
const SEED_PAGES_DIR = '/var/lib/faultline/images'; // the fixture's directory, as the seed names it

t.comment(`plan fuzz seed ${SEED} (replay with FAULTLINE_FUZZ_SEED=${SEED}), ${SECONDS} s`);

t.test('the seed plan is what plan.ts writes for the CRIU fixture, and the C reader takes it', async (t) => {
  if (!fs.existsSync(PLAN_FUZZER)) return t.fail(`${PLAN_FUZZER} is not built: run \`make -C native\``);
  const plan = renderTargetPlan(FIXTURE, '/run/faultline/fuzz.sock').split(FIXTURE).join(SEED_PAGES_DIR);
  t.equal(fs.readFileSync(path.join(PLAN_SEEDS, 'criu-4.2-two-procs.plan'), 'utf8'), plan, 'test/fuzz/seeds/plan/criu-4.2-two-procs.plan is up to date with src/target/plan.ts (regenerate it if the format changed)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'faultline-plan-seed-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'fixture.plan'), plan);
  const seeds = fs.readdirSync(PLAN_SEEDS).map((f) => path.join(PLAN_SEEDS, f));
  const r = spawnSync(PLAN_FUZZER, ['--run', path.join(dir, 'fixture.plan'), ...seeds], { encoding: 'utf8', timeout: 30_000 });
  t.equal(r.stderr, '');
  for (const line of r.stdout.trim().split('\n')) t.match(line, /: accepted$/, 'a seed plan is a valid plan');
  t.equal(r.status, 0);
});

t.test('fuzz plan (C, plan_read)', async (t) => {
  if (!fs.existsSync(PLAN_FUZZER)) return t.fail(`${PLAN_FUZZER} is not built: run \`make -C native\``);
  // crash inputs are kept here for a look (the summary carries only their first 256 bytes)
  const crashes = fs.mkdtempSync(path.join(os.tmpdir(), 'faultline-plan-crashes-'));
  const r = spawnSync(PLAN_FUZZER, planFuzzArgs({ seconds: SECONDS, seed: SEED, json: true, crashes }), { encoding: 'utf8', timeout: 60_000 + SECONDS * 1000 });
  t.equal(r.stderr, '', 'the fuzzer ran without complaint (no sanitizer report)');
  const s = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { execs: number; execsPerSecond: number; features: number; corpus: number; regressions: number; replayFailures: string[]; crashes: { id: string; bytes: number; hex: string; error: string }[] };
  t.comment(`plan: ${s.execs} execs (${s.execsPerSecond}/s), ${s.features} coverage features, corpus ${s.corpus}, ${s.regressions} regression inputs replayed`);
  t.ok(s.regressions > 0, `the regression inputs of test/fuzz/regressions/plan/ were replayed (${s.regressions})`);
  t.same(s.replayFailures, [], 'plan: every input that once crashed it is now rejected with the reader\'s own error, or read as a valid plan');
  if (s.crashes?.length) t.comment(`plan: the crash inputs are in ${crashes}/crash-<id>`);
  t.same(s.crashes.map((c) => `${c.id} (${c.bytes} bytes, hex ${c.hex.slice(0, 128)}): ${c.error}`), [], "plan: every input ends in the reader's own error or a valid plan");
  t.ok(s.execs > 100, `plan: it ran (${s.execs} inputs)`);
  t.ok(s.features > 10, `plan: coverage guided it (${s.features} features)`);
  t.equal(r.status, 0);
  if (!s.crashes?.length && !s.replayFailures?.length) fs.rmSync(crashes, { recursive: true, force: true });
});
