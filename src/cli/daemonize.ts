// -d / --daemon for both commands: run in the background once ready, as criu does. The parent
// re-runs the same command line as a detached child, waits for the child's readiness byte on fd 3,
// then writes criu's own promises (--status-fd) and exits 0. Unlike criu, which forks before it is
// ready, the parent fails (exit 1) when the child dies before it is ready, so a script that starts a
// daemon learns of a bad image or a busy port from the exit status.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { closeQuietly } from './log';

const DAEMON_ENV = 'FAULTLINE_DAEMON_CHILD';

/** True in the detached child: it reports readiness on fd 3 and must not detach again. */
export function isDaemonChild(): boolean {
  return process.env[DAEMON_ENV] === '1';
}

/**
 * The readiness fd to write one NUL byte to: the parent's pipe in a daemon child, else --status-fd
 * (-1: none).
 */
export function readinessFd(statusFd: number): number {
  return isDaemonChild() ? 3 : statusFd;
}

export function signalReady(fd: number, onError: (e: Error) => void = () => undefined): void {
  if (fd < 0) return;
  try {
    fs.writeSync(fd, Buffer.from([0]));
  } catch (e) {
    onError(e as Error);
  }
  closeQuietly(fd);
}

/**
 * Starts the detached child and waits until it is ready. `logFile` (already resolved; '-' or
 * undefined: none) receives the child's stdout and stderr, since a daemon has no terminal.
 */
export async function daemonize(what: string, logFile: string | undefined, statusFd: number): Promise<number> {
  let out: number | 'ignore' | 'inherit' = 'ignore';
  if (logFile === '-') out = 'inherit';
  else if (logFile) {
    // Truncated once here (criu's O_TRUNC); every writer after that appends, so the child's own
    // log lines and whatever reaches its stdout/stderr never overwrite one another.
    fs.writeFileSync(logFile, '', { mode: 0o600 });
    out = fs.openSync(logFile, 'a');
  }
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    detached: true,
    stdio: ['ignore', out, out, 'pipe'],
    env: { ...process.env, [DAEMON_ENV]: '1' },
  });
  if (typeof out === 'number') closeQuietly(out);
  const ready = await new Promise<boolean>((resolve) => {
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.once('data', () => resolve(true));
    pipe.once('end', () => resolve(false));
    child.once('exit', () => resolve(false));
  });
  if (!ready) {
    process.stderr.write(`faultline: error: ${what} exited before it was ready${logFile && logFile !== '-' ? ` (see ${logFile})` : ''}\n`);
    return 1;
  }
  child.unref();
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
  signalReady(statusFd);
  return 0;
}
