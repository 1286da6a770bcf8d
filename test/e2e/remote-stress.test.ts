// Remote lazy restore while the tree forks, exits, mremaps, DONTNEEDs and unmaps, so that processes
// go away with page-server requests queued or in flight and forked children reuse uffd numbers. A
// late reply is dropped with the process it was asked for (daemon.ts deliverPages), never routed to
// whoever holds the number now: zdtm's remote fork tests stopped on "page-server reply for a request
// never made" in 3 of 14 runs before that. Every page is verified; seeds are printed (replay with
// FAULTLINE_STRESS_SEED).
import t from 'tap';
import { runRestore, startPageServer } from '../../src/target/run';
import { chaosTree, makeImages, tempDir } from '../helpers/restore';

const PROCESSES = 24;
const ROUNDS = Number(process.env.FAULTLINE_STRESS_ROUNDS ?? 2);

const tree = chaosTree(PROCESSES, 70);

for (let round = 0; round < ROUNDS; round++) {
  const seed = Number(process.env.FAULTLINE_STRESS_SEED ?? Math.floor(Math.random() * 1e9)) + round;
  const lanes = round % 2 ? '2' : '1';
  t.test(`remote stress round ${round + 1}: ${PROCESSES} processes, ${lanes} lane(s), chaos seed ${seed}`, async (t) => {
    t.comment(`replay: FAULTLINE_STRESS_SEED=${seed} FAULTLINE_STRESS_ROUNDS=1`);
    const dir = tempDir(t, 'remote-stress');
    const images = makeImages(dir, tree);
    const server = await startPageServer(images);
    t.teardown(() => server.stop());
    const r = await runRestore({
      imagesDir: images,
      workDir: dir,
      timeoutMs: 120_000,
      daemonArgs: ['--page-server', '--port', String(server.port), '--lanes', lanes],
      target: { threads: 2, pattern: 'random', fraction: 0.3, seed, extraArgs: ['--chaos', `${seed}:12`, '--script-pid', '3:touch:0-20,fork,exit', '--script-pid', '5:fork,touch:0-5,exit'] },
    });
    t.equal(r.daemon.code, 0, `daemon exits 0 ${r.daemon.stderr.trim().slice(0, 500)}`);
    t.equal(r.target.code, 0, `target exits 0 ${r.target.stderr.trim().split('\n').filter((l) => !l.includes('chaos pid')).join(' ').slice(0, 500)}`);
    t.equal(r.target.summary?.mismatches, 0, '0 mismatched bytes');
    const events: Record<string, number> = {};
    for (const p of r.target.processes) {
      for (const [k, v] of Object.entries((p as { events?: Record<string, number> }).events ?? {})) events[k] = (events[k] ?? 0) + v;
    }
    t.comment(`events ${JSON.stringify(events)}, ${r.target.processes.length} processes reported`);
    t.ok((events.fork ?? 0) > 0, 'processes forked');
  });
}

