// A `faultline serve` for the engine tests, and the small waits they share.
import type { Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, collect, type Exit } from '../../src/target/run';

export interface EngineProcess {
  child: ChildProcess;
  socket: string;
  exit: Promise<Exit>;
}

/** Starts `faultline serve` with its socket in dir; resolves once it listens, killed at the test's end. */
export async function startEngine(t: Test, dir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<EngineProcess> {
  fs.mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'engine.sock');
  const child = spawn(process.execPath, [CLI, 'serve', '--socket', socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const exit = collect(child);
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    child.stderr!.on('data', (d: Buffer) => {
      seen += String(d);
      if (/listening on/.test(seen)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`faultline serve exited ${code}: ${seen}`)));
  });
  return { child, socket, exit };
}

/** Polls ok every `every` ms until it holds; throws naming `what` after ms. */
export async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 15_000, every = 20): Promise<void> {
  for (const end = Date.now() + ms; !(await ok()); ) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}
