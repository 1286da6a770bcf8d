// `criu restore --lazy-pages` served through `faultline serve` (issue 11): the lazy-pages daemon
// criu talks to is `faultline lazy-pages --engine SOCKET`, which hands the restore to a running
// engine. Two restores of real CRIU dumps, one after the other through the same engine (the second
// with fork, mremap, swap, DONTNEED and munmap while pages are lazy); every word verified by the tree.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { criuSkip } from '../helpers/criu';
import { assertExits, assertVerified, dumpWorkload, lazyRestore, within } from '../helpers/criu-restore';
import { CLI, collect } from '../../src/criu/run';

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
