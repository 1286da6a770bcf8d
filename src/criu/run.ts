// Runs the real CRIU around a lazy restore: `criu dump`, `criu restore --lazy-pages`, and a
// lazy-pages daemon (faultline's or criu's own) that serves it. Used by the real-CRIU tests and the
// bench. Every command can run under a prefix (`wrap`, e.g. ['ip', 'netns', 'exec', 'fl-dst']), so
// remote set-ups reuse these functions unchanged.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RestoreSummary } from '../engine/summary';
import { findCriu } from './find';

export const ROOT = path.resolve(__dirname, '../../..');
export const CLI = path.join(ROOT, 'dist/src/cli/main.js');

import { ENGINE_CLIENT, collect, wrapped, type Exit } from '../target/run';

export { collect, wrapped, type Exit };

/** The criu binary (>= 4), or an Error saying why there is none. */
export function criuBin(): string {
  const { found, why } = findCriu();
  if (!found) throw new Error(why);
  return found.bin;
}

// Every criu run on a machine without CAP_SYS_RESOURCE logs this one, and it is harmless.
const HARMLESS_ERRORS = [/rlimit: Can't setup RLIMIT_NOFILE/];

/** The first "Error (file:line): …" line of a criu log that matters, or undefined. */
export function firstCriuError(log: string): string | undefined {
  for (const line of log.split('\n')) {
    if (!/Error \(/.test(line)) continue;
    if (HARMLESS_ERRORS.some((re) => re.test(line))) continue;
    return line.replace(/^\(\s*[\d.]+\)\s*/, '').trim();
  }
  return undefined;
}

function readLog(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** The line of a program's stderr that says why it failed: an error line, else the last that is not a stack frame. */
export function stderrReason(stderr: string): string | undefined {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('at '));
  return lines.find((l) => /\berror\b/i.test(l)) ?? lines.pop();
}

/** Why a criu command failed, in one line: its log's first real error, else its stderr's. */
function criuFailure(what: string, e: Exit, logFile: string): Error {
  const why = firstCriuError(readLog(logFile)) ?? stderrReason(e.stderr);
  return new Error(`${what} failed (exit ${e.code ?? e.signal}; ${logFile}): ${why || 'no error line in the log'}`);
}

function run(wrap: string[] | undefined, cmd: string, args: string[], timeoutMs: number, what: string): Promise<Exit> {
  // A process group of its own: on a timeout criu's helpers go with it instead of living on under
  // PID 1 (the restored tree keeps its own dumped session and group, so it is not hit).
  const child = spawn(...wrapped(wrap, cmd, args), { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const exit = collect(child);
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }, timeoutMs);
  return exit.then((e) => {
    clearTimeout(timer);
    if (e.signal === 'SIGKILL' && e.code === null) e.stderr += `\n${what} timed out after ${timeoutMs} ms`;
    return e;
  });
}

export interface CriuDumpOptions {
  wrap?: string[];
  /** Keep the tree running after the dump (criu's --leave-running); default: criu kills it. */
  leaveRunning?: boolean;
  extraArgs?: string[];
  timeoutMs?: number;
}

/** `criu dump -t rootPid -D imagesDir`, log in imagesDir/dump.log. Creates imagesDir. */
export async function criuDump(rootPid: number, imagesDir: string, opts: CriuDumpOptions = {}): Promise<{ dumpMs: number }> {
  fs.mkdirSync(imagesDir, { recursive: true });
  const args = ['dump', '-t', String(rootPid), '-D', imagesDir, '-o', 'dump.log', '-v4'];
  if (opts.leaveRunning) args.push('--leave-running');
  args.push(...(opts.extraArgs ?? []));
  const t0 = performance.now();
  const e = await run(opts.wrap, criuBin(), args, opts.timeoutMs ?? 60_000, 'criu dump');
  const dumpMs = performance.now() - t0;
  if (e.code !== 0) throw criuFailure(`criu dump -t ${rootPid}`, e, path.join(imagesDir, 'dump.log'));
  return { dumpMs };
}

export interface CriuRestoreOptions {
  /** Where lazy-pages.socket is (criu's -W); must match the daemon's. Default: imagesDir. */
  workDir?: string;
  wrap?: string[];
  /** Default: <workDir>/restore.pid */
  pidfile?: string;
  extraArgs?: string[];
  timeoutMs?: number;
}

export interface CriuRestored {
  /** The restored root's pid as this (host) namespace sees it. */
  rootHostPid: number;
  /** Its start time (field 22 of /proc/<pid>/stat), for killTree. */
  rootStartTime?: string;
  /** Start of `criu restore` to its exit (the tree runs from then on, pages still lazy). */
  restoreMs: number;
  /** Wall clock when `criu restore` was started and when it exited (ms since the epoch). */
  startedAt: number;
  endedAt: number;
}

/** `criu restore --lazy-pages -d`: the lazy-pages daemon must already be listening in workDir. */
export async function criuRestoreLazy(imagesDir: string, opts: CriuRestoreOptions = {}): Promise<CriuRestored> {
  const workDir = opts.workDir ?? imagesDir;
  const pidfile = opts.pidfile ?? path.join(workDir, 'restore.pid');
  fs.rmSync(pidfile, { force: true });
  const args = ['restore', '--lazy-pages', '-D', imagesDir, '-d', '--pidfile', pidfile, '-o', 'restore.log', '-v4'];
  if (opts.workDir) args.push('-W', opts.workDir);
  args.push(...(opts.extraArgs ?? []));
  const startedAt = Date.now();
  const t0 = performance.now();
  const e = await run(opts.wrap, criuBin(), args, opts.timeoutMs ?? 60_000, 'criu restore');
  const restoreMs = performance.now() - t0;
  const endedAt = Date.now();
  // criu resolves a relative -o against the work directory.
  if (e.code !== 0) throw criuFailure('criu restore --lazy-pages', e, path.join(workDir, 'restore.log'));
  const rootHostPid = Number(readLog(pidfile).trim());
  if (!Number.isInteger(rootHostPid) || rootHostPid <= 0) throw new Error(`criu restore --lazy-pages: no pid in ${pidfile}`);
  const stat = readLog(`/proc/${rootHostPid}/stat`);
  const rootStartTime = stat ? stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] : undefined;
  return { rootHostPid, rootStartTime, restoreMs, startedAt, endedAt };
}

export type LazyDaemonKind = 'faultline' | 'criu';

export interface TlsFiles {
  cacert: string;
  cert: string;
  key: string;
}

export interface LazyDaemonOptions {
  imagesDir: string;
  /** Where lazy-pages.socket is created (-W); default: imagesDir. Logs go there too. */
  workDir?: string;
  /** Fetch pages from a page server instead of the local images. */
  pageServer?: { address: string; port: number; tls?: TlsFiles };
  wrap?: string[];
  env?: NodeJS.ProcessEnv;
  extraArgs?: string[];
  /** faultline only: run native/bin/faultline-engine-client (give `--engine SOCKET` in extraArgs) instead of `faultline lazy-pages`. */
  engineClient?: boolean;
}

export interface DaemonExit extends Exit {
  /** faultline only: its --json summary, or the error it stopped with. */
  summary?: RestoreSummary;
  error?: string;
  /** When the process exited (ms since the epoch). */
  endedAt: number;
}

export interface LazyDaemon {
  kind: LazyDaemonKind;
  child: ChildProcess;
  pid: number;
  /** Resolves when the daemon listens (one NUL byte on its --status-fd); rejects if it exits first. */
  ready: Promise<void>;
  exit: Promise<DaemonExit>;
  /** criu: <workDir>/lazy-pages.log (-v4); faultline: <workDir>/faultline-lazy-pages.log (-v3; its summary is in exit). */
  logFile?: string;
  /** SIGKILL if still running, then the exit. */
  kill(): Promise<DaemonExit>;
}

function tlsArgs(tls: TlsFiles | undefined): string[] {
  return tls ? ['--tls', '--tls-cacert', tls.cacert, '--tls-cert', tls.cert, '--tls-key', tls.key] : [];
}

/**
 * Starts a lazy-pages daemon for `criu restore --lazy-pages`: faultline's (`--json`, summary in
 * exit.summary) or criu's own (`criu lazy-pages`, log in <workDir>/lazy-pages.log). Await `ready`
 * before restoring. criu's daemon with a page server needs fs.pipe-max-size >= 4 MiB
 * (withPipeMaxSize).
 */
export function startLazyDaemon(kind: LazyDaemonKind, opts: LazyDaemonOptions): LazyDaemon {
  const workDir = opts.workDir ?? opts.imagesDir;
  const ps = opts.pageServer;
  const remote = ps ? ['--page-server', '--address', ps.address, '--port', String(ps.port), ...tlsArgs(ps.tls)] : [];
  const common = ['-D', opts.imagesDir, ...(opts.workDir ? ['-W', opts.workDir] : []), '--status-fd', '3', ...remote];
  let cmd: string;
  let args: string[];
  let logFile: string | undefined;
  if (kind === 'faultline') {
    // -v3: hand-overs, RESTORE_FINISHED and each process's end in its log, for a run that goes wrong.
    logFile = path.join(workDir, 'faultline-lazy-pages.log');
    const own = [...common, '--json', '-o', 'faultline-lazy-pages.log', '-v3', ...(opts.extraArgs ?? [])];
    [cmd, args] = opts.engineClient ? [ENGINE_CLIENT, own] : [process.execPath, [CLI, 'lazy-pages', ...own]];
  } else {
    logFile = path.join(workDir, 'lazy-pages.log');
    [cmd, args] = [criuBin(), ['lazy-pages', ...common, '-o', 'lazy-pages.log', '-v4', ...(opts.extraArgs ?? [])]];
  }
  return startWithStatusFd(kind, kind === 'criu' ? 'criu lazy-pages' : opts.engineClient ? 'faultline-engine-client' : 'faultline lazy-pages', cmd, args, opts, logFile, kind === 'faultline');
}

/** Spawns a program that writes one NUL byte to fd 3 (--status-fd 3) when it is ready. */
function startWithStatusFd(
  kind: LazyDaemonKind,
  name: string,
  cmd: string,
  args: string[],
  opts: { wrap?: string[]; env?: NodeJS.ProcessEnv },
  logFile: string | undefined,
  jsonSummary: boolean,
): LazyDaemon {
  const child = spawn(...wrapped(opts.wrap, cmd, args), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  const exit: Promise<DaemonExit> = collect(child).then((e) => ({ ...e, ...(jsonSummary ? parseFaultlineJson(e.stdout) : {}), endedAt: Date.now() }));
  const ready = new Promise<void>((resolve, reject) => {
    const status = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
    let said = false;
    status.once('data', () => {
      said = true;
      status.destroy();
      resolve();
    });
    status.once('close', () => {
      if (said) return;
      void exit.then((e) => {
        const why = (logFile && firstCriuError(readLog(logFile))) || stderrReason(e.stderr) || 'no output';
        reject(new Error(`${name} exited (${e.code ?? e.signal}) before it was ready: ${why}`));
      });
    });
  });
  ready.catch(() => undefined); // callers that never await ready still see the failure in exit
  return {
    kind,
    child,
    pid: child.pid ?? -1,
    ready,
    exit,
    logFile,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exit;
    },
  };
}

export interface PageServerOptions {
  /** The dump's images (the source side). */
  imagesDir: string;
  /** Where relative logs go (criu's -W); default: imagesDir. criu logs to <workDir>/page-server.log. */
  workDir?: string;
  address: string;
  port: number;
  tls?: TlsFiles;
  wrap?: string[];
  env?: NodeJS.ProcessEnv;
  extraArgs?: string[];
}

/**
 * Starts the source side of a remote lazy restore: `criu page-server --lazy-pages` or
 * `faultline page-server --lazy-pages`, with criu's flags. Both serve one restore and exit; await
 * `ready` before starting the lazy-pages client. criu's needs fs.pipe-max-size >= 4 MiB
 * (withPipeMaxSize).
 */
export function startPageServer(kind: LazyDaemonKind, opts: PageServerOptions): LazyDaemon {
  const workDir = opts.workDir ?? opts.imagesDir;
  const args = [
    'page-server', '--lazy-pages', '-D', opts.imagesDir, ...(opts.workDir ? ['-W', opts.workDir] : []),
    '--address', opts.address, '--port', String(opts.port), ...tlsArgs(opts.tls), '--status-fd', '3',
  ];
  if (kind === 'faultline') {
    return startWithStatusFd(kind, 'faultline page-server', process.execPath, [CLI, ...args, ...(opts.extraArgs ?? [])], opts, undefined, false);
  }
  const logFile = path.join(workDir, 'page-server.log');
  return startWithStatusFd(kind, 'criu page-server', criuBin(), [...args, '-o', 'page-server.log', '-v4', ...(opts.extraArgs ?? [])], opts, logFile, false);
}

function parseFaultlineJson(stdout: string): { summary?: RestoreSummary; error?: string } {
  const line = stdout.trim().split('\n').reverse().find((l) => l.startsWith('{'));
  if (!line) return {};
  try {
    const o = JSON.parse(line);
    return o.ok === false ? { error: o.error } : { summary: o as RestoreSummary };
  } catch {
    return {};
  }
}

const PIPE_MAX_SIZE = '/proc/sys/fs/pipe-max-size';

/**
 * Raises fs.pipe-max-size to at least `bytes` (CRIU's page server and lazy-pages transfer through
 * pipes of 4 MiB) and returns a function that puts the old value back.
 */
export function withPipeMaxSize(bytes = 4 << 20): () => void {
  const old = fs.readFileSync(PIPE_MAX_SIZE, 'utf8').trim();
  if (Number(old) >= bytes) return () => undefined;
  fs.writeFileSync(PIPE_MAX_SIZE, String(bytes));
  return () => fs.writeFileSync(PIPE_MAX_SIZE, old);
}

/** Runs `fn` with fs.pipe-max-size raised, put back afterwards, on SIGINT/SIGTERM too (the benches). */
export async function whilePipeMaxSizeRaised<T>(fn: () => Promise<T>, bytes = 4 << 20): Promise<T> {
  const restore = withPipeMaxSize(bytes);
  const onSignal = () => {
    restore();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await fn();
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    restore();
  }
}
