// `criu restore --lazy-pages` served through `faultline serve` (issue 11): the lazy-pages daemon
// criu talks to is `faultline lazy-pages --engine SOCKET`, which hands the restore to a running
// engine. Two restores of real CRIU dumps, one after the other through the same engine (the second
// with fork, mremap, swap, DONTNEED and munmap while pages are lazy); every word verified by the tree.
// Then the same through native/bin/faultline-engine-client, the C client: two restores at once.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { criuSkip } from '../helpers/criu';
import { assertExits, assertVerified, dumpWorkload, lazyRestore, within } from '../helpers/criu-restore';
import { CLI, collect } from '../../src/criu/run';
import { ENGINE_CLIENT } from '../../src/target/run';
import * as fs from 'node:fs';

t.test('criu restore --lazy-pages through faultline serve: every word verified, twice', { skip: criuSkip() }, async (t) => {
  const verify = await dumpWorkload(t, 'criu-engine-verify', { procs: 3, mib: 32, action: 'verify' });
  const events = await dumpWorkload(t, 'criu-engine-events', { procs: 2, mib: 32, action: 'events' });
  const socket = path.join(verify.dir, 'engine.sock');
  const engine = spawn(process.execPath, [CLI, 'serve', '--socket', socket, '--workers', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = collect(engine);
  t.teardown(() => void (engine.exitCode === null && engine.kill('SIGKILL')));
  await within(new Promise<void>((resolve) => engine.stderr!.on('data', (d: Buffer) => /listening on/.test(String(d)) && resolve())), 20_000, 'faultline serve ready');
  for (const d of [verify, events]) {
    const o = { name: `engine-${d.action}`, daemon: 'faultline' as const, daemonArgs: ['--engine', socket] };
    const run = await lazyRestore(t, d, o);
    assertVerified(t, d, run.results);
    assertExits(t, run, o);
    t.ok((run.daemon.summary?.processes ?? 0) >= d.procs, `the engine's summary, printed by lazy-pages --engine: ${run.daemon.summary?.processes} processes, ${run.daemon.summary?.pagesByFault} pages by fault`);
  }
  engine.kill('SIGTERM');
  const e = await exit;
  t.equal(e.code, 0, `the engine exits 0 on SIGTERM ${e.stderr.trim().split('\n').pop()}`);
});

t.test('criu restore --lazy-pages through faultline-engine-client (the C client): two at once, every word verified', { skip: criuSkip() || (fs.existsSync(ENGINE_CLIENT) ? false : `no ${ENGINE_CLIENT}: make -C native`) }, async (t) => {
  const a = await dumpWorkload(t, 'criu-engine-c-a', { procs: 2, mib: 32, action: 'verify' });
  const b = await dumpWorkload(t, 'criu-engine-c-b', { procs: 2, mib: 32, action: 'events' });
  const socket = path.join(a.dir, 'engine.sock');
  const engine = spawn(process.execPath, [CLI, 'serve', '--socket', socket, '--workers', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = collect(engine);
  t.teardown(() => void (engine.exitCode === null && engine.kill('SIGKILL')));
  await within(new Promise<void>((resolve) => engine.stderr!.on('data', (d: Buffer) => /listening on/.test(String(d)) && resolve())), 20_000, 'faultline serve ready');
  const runs = await Promise.all(
    [a, b].map(async (d) => {
      const o = { name: `engine-c-${d.action}`, daemon: 'faultline' as const, daemonArgs: ['--engine', socket], engineClient: true };
      return { d, o, run: await lazyRestore(t, d, o) };
    }),
  );
  for (const { d, o, run } of runs) {
    assertVerified(t, d, run.results);
    assertExits(t, run, o);
    t.ok((run.daemon.summary?.processes ?? 0) >= d.procs, `the engine's summary, printed by faultline-engine-client --json: ${run.daemon.summary?.processes} processes, ${run.daemon.summary?.pagesByFault} pages by fault`);
    t.match(fs.readFileSync(path.join(run.workDir, 'faultline-lazy-pages.log'), 'utf8'), /the engine waits for the restorer socket=\S+lazy-pages\.socket session=\d+/, 'its -o log at -v3');
  }
  engine.kill('SIGTERM');
  const e = await exit;
  t.equal(e.code, 0, `the engine exits 0 on SIGTERM ${e.stderr.trim().split('\n').pop()}`);
});
