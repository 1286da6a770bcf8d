// `npm run fuzz`: the TypeScript targets (run.js), then the C reader of the restore plan
// (native/plan/plan.c) under its own coverage-guided fuzzer, native/bin/faultline-plan-fuzz
// (native/fuzz/plan-fuzz.c), both with the same arguments:
//   node dist/test/fuzz/run-plan.js [--target NAME] [--seconds N] [--seed N] [--json] [--save]
// --target plan runs only the C fuzzer, any other name only run.js. --save keeps the C fuzzer's
// corpus in .fuzz-corpus/plan/ and writes its crashes to test/fuzz/regressions/plan/, as run.js does
// for its targets.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '../../..');
export const PLAN_FUZZER = path.join(ROOT, 'native/bin/faultline-plan-fuzz');
export const PLAN_SEEDS = path.join(ROOT, 'test/fuzz/seeds/plan');
export const PLAN_REGRESSIONS = path.join(ROOT, 'test/fuzz/regressions/plan');

/** The C fuzzer's arguments: seeds and regressions always, corpus and crashes where given. */
export function planFuzzArgs(o: { seconds: number; seed?: number; json?: boolean; corpus?: string; crashes?: string }): string[] {
  const args = ['--seconds', String(o.seconds), '--seeds', PLAN_SEEDS, '--regressions', PLAN_REGRESSIONS];
  if (o.seed !== undefined) args.push('--seed', String(o.seed));
  if (o.corpus) args.push('--corpus', o.corpus);
  if (o.crashes) args.push('--crashes', o.crashes);
  if (o.json) args.push('--json');
  return args;
}

function main(): void {
  const argv = process.argv.slice(2);
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const target = arg('target');
  const save = argv.includes('--save');
  let status = 0;
  if (target !== 'plan') {
    const r = spawnSync(process.execPath, [path.join(__dirname, 'run.js'), ...argv], { stdio: 'inherit' });
    status = r.status ?? 1;
  }
  if (target === undefined || target === 'plan') {
    if (!fs.existsSync(PLAN_FUZZER)) {
      process.stderr.write(`fuzz: ${path.relative(ROOT, PLAN_FUZZER)} is not built: run \`make -C native\`\n`);
      process.exit(2);
    }
    const seed = arg('seed');
    const args = planFuzzArgs({
      seconds: Number(arg('seconds') ?? 60),
      seed: seed === undefined ? undefined : Number(seed),
      json: argv.includes('--json'),
      corpus: save ? path.join(ROOT, '.fuzz-corpus/plan') : undefined,
      crashes: save ? PLAN_REGRESSIONS : undefined,
    });
    const r = spawnSync(PLAN_FUZZER, args, { stdio: 'inherit' });
    status = Math.max(status, r.status ?? 1);
  }
  process.exitCode = status;
}

if (require.main === module) main();
