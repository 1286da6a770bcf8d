// Runs one lazy restore end to end, as a user would: `faultline lazy-pages` in one process, the C
// restore target (native/bin/faultline-target, standing in for `criu restore --lazy-pages`) in
// another. Used by the demo, the tests and the benchmarks.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RestoreSummary } from '../engine/summary';
import { writeTargetPlan } from './plan';

export const ROOT = path.resolve(__dirname, '../../..');
export const CLI = path.join(ROOT, 'dist/src/cli/main.js');
export const TARGET = path.join(ROOT, 'native/bin/faultline-target');
export const BASELINE = path.join(ROOT, 'native/bin/faultline-baseline');
/** The C client of `faultline serve` (native/client/engine-client.c): `lazy-pages --engine` without Node. */
export const ENGINE_CLIENT = path.join(ROOT, 'native/bin/faultline-engine-client');

/** Which lazy-pages daemon serves the restore: faultline, or the C baseline (CRIU's policy) for comparison. */
export type DaemonKind = 'faultline' | 'baseline';
/** What runRestore may start: a DaemonKind, or faultline-engine-client (give it `--engine SOCKET` in daemonArgs). */
export type DaemonProgram = DaemonKind | 'engine-client';

export interface TargetOptions {
  threads?: number;
  pattern?: 'seq' | 'random' | 'stride';
  stride?: number;
  fraction?: number;
  seed?: number;
  handover?: 'split' | 'merged' | 'bytewise';
  zombies?: number[];
  holdMs?: number;
  /** Verify every page after the daemon has exited (default true). */
  verifyAll?: boolean;
  /** Each process writes its first-touch latencies (u64 ns) to <prefix>.<hostpid>.lat. */
  latencyFile?: string;
  extraArgs?: string[];
}

export interface TargetProcessReport {
  pid: number;
  hostPid: number;
  pages: number;
  touched: number;
  verified: number;
  mismatches: number;
  holes: number;
  latencyNs: { p50: number; p90: number; p99: number; max: number; count: number };
}

export interface TargetSummary {
  processes: number;
  verified: number;
  mismatches: number;
  killed: { pid: number; signal: number }[];
  failed: { pid: number; status: number }[];
  releaseToExitMs: number;
  /** the tree's own CPU: the target and every process it reaped (ms) */
  cpuMs?: number;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface TimelineSample {
  /** ms since the target started */
  t: number;
  /** resident pages per host pid of the target's processes */
  rss: Record<number, number>;
}

export interface RestoreResult {
  daemon: Exit & { summary?: RestoreSummary; error?: string };
  target: Exit & { processes: TargetProcessReport[]; summary?: TargetSummary };
  timeline: TimelineSample[];
  /** With `resume`: the daemon that was killed (`daemon` is then the one that resumed). */
  killed?: Exit;
}

export interface RestoreRunOptions {
  imagesDir: string;
  daemon?: DaemonProgram;
  /** Runs the daemon through this command, e.g. ['ip', 'netns', 'exec', 'fl-dst'] (remote tests). */
  daemonWrap?: string[];
  /** Command words put before the restore target (e.g. taskset -c 1). */
  targetWrap?: string[];
  /** Environment for the daemon process (e.g. FAULTLINE_FAULT_DELAY_US for the gate's self-test). */
  daemonEnv?: NodeJS.ProcessEnv;
  /** Sample each restored process's resident pages every this many ms (restore timeline). */
  sampleEveryMs?: number;
  /** Holds the socket, the plan and logs; created if missing. */
  workDir: string;
  daemonArgs?: string[];
  target?: TargetOptions;
  timeoutMs?: number;
  /** Rewrites the target plan before the target reads it (tests of bad hand-overs). */
  editPlan?: (plan: string) => string;
  /**
   * Images the target's plan is made from (default: imagesDir). Tests of damaged images give the
   * daemon the damaged set and the target a pristine copy: the restorer has its own good copy of
   * what it restores eagerly, and verification needs the true contents.
   */
  planImagesDir?: string;
  /** Sees the daemon's stderr as it comes (tests that act at a point of the restore). */
  onDaemonStderr?: (chunk: string) => void;
  /** Called once the daemon is ready and the target started (tests that kill one of them). */
  onStarted?: (daemon: ChildProcess, target: ChildProcess) => void;
  /** Re-run when the target could not map a VMA at its dump-time address (ASLR collision). */
  retries?: number;
  /**
   * When the daemon dies of a signal, wait `afterMs`, then start `lazy-pages --resume` (with `args`)
   * on the same images and work dir and treat it as the daemon from then on.
   */
  resume?: { afterMs?: number; args?: string[]; /** instead of daemonEnv */ env?: NodeJS.ProcessEnv };
}

export function targetArgs(planPath: string, o: TargetOptions): string[] {
  const a = ['--plan', planPath];
  if (o.threads) a.push('--threads', String(o.threads));
  if (o.pattern) a.push('--pattern', o.pattern);
  if (o.stride) a.push('--stride', String(o.stride));
  if (o.fraction !== undefined) a.push('--fraction', String(o.fraction));
  if (o.seed !== undefined) a.push('--seed', String(o.seed));
  if (o.handover) a.push('--handover', o.handover);
  for (const z of o.zombies ?? []) a.push('--zombie', String(z));
  if (o.holdMs) a.push('--hold-ms', String(o.holdMs));
  if (o.latencyFile) a.push('--latency-file', o.latencyFile);
  if (o.verifyAll !== false) a.push('--verify-all', '--wait-signal');
  a.push(...(o.extraArgs ?? []));
  return a;
}

/** A child's exit status and everything it printed; a spawn failure (ENOENT…) counts as an exit. */
export function collect(child: ChildProcess): Promise<Exit> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => {
    child.once('error', (e) => resolve({ code: null, signal: null, stdout, stderr: stderr + String(e) }));
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** `cmd args` run under a wrapper command (ip netns exec …, taskset …) when one is given. */
export function wrapped(wrap: string[] | undefined, cmd: string, args: string[]): [string, string[]] {
  return wrap?.length ? [wrap[0], [...wrap.slice(1), cmd, ...args]] : [cmd, args];
}

/** Starts `faultline lazy-pages` (or the baseline) and resolves once it listens (its --status-fd NUL byte). */
export async function startDaemon(
  imagesDir: string,
  workDir: string,
  extra: string[] = [],
  kind: DaemonProgram = 'faultline',
  env?: NodeJS.ProcessEnv,
  wrap: string[] = [],
): Promise<{ child: ChildProcess; exit: Promise<Exit> }> {
  const [bare, bareArgs] =
    kind === 'faultline'
      ? [process.execPath, [CLI, 'lazy-pages', '-D', imagesDir, '-W', workDir, '--json', '--status-fd', '3', ...extra]]
      : kind === 'engine-client'
        ? [ENGINE_CLIENT, ['-D', imagesDir, '-W', workDir, '--json', '--status-fd', '3', ...extra]]
        : [BASELINE, ['--plan', path.join(workDir, 'target.plan'), '--json', '--status-fd', '3', ...extra]];
  const [cmd, args] = wrapped(wrap, bare, bareArgs);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const exit = collect(child);
  const ready = await new Promise<boolean>((resolve) => {
    const status = child.stdio[3] as NodeJS.ReadableStream;
    status.once('data', () => resolve(true));
    status.once('end', () => resolve(false));
  });
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
  if (!ready) {
    const e = await exit;
    throw new Error(`${kind === 'faultline' ? 'faultline lazy-pages' : `faultline-${kind}`} did not start (exit ${e.code}): ${e.stderr.trim()}`);
  }
  return { child, exit };
}

export interface PageServerProcess {
  child: ChildProcess;
  port: number;
  exit: Promise<Exit>;
  stop(): Promise<Exit>;
}

/** Starts `faultline page-server` (optionally inside a network namespace) and waits for its port. */
export async function startPageServer(imagesDir: string, opts: { address?: string; port?: number; wrap?: string[]; extra?: string[] } = {}): Promise<PageServerProcess> {
  // --keep-serving: tests and bench run several restores (and retries) against one server.
  const args = [CLI, 'page-server', '--lazy-pages', '--keep-serving', '-D', imagesDir, '--address', opts.address ?? '127.0.0.1', '--port', String(opts.port ?? 0), ...(opts.extra ?? [])];
  const child = spawn(...wrapped(opts.wrap ?? [], process.execPath, args), { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = collect(child);
  const port = await new Promise<number>((resolve, reject) => {
    let seen = '';
    child.stderr!.on('data', (d: Buffer | string) => {
      seen += String(d);
      const m = /listening on .*:(\d+)/.exec(seen);
      if (m) resolve(Number(m[1]));
    });
    void exit.then((e) => reject(new Error(`faultline page-server exited (${e.code}) before listening: ${e.stderr.trim()}`)));
  });
  return {
    child,
    port,
    exit,
    stop: () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exit;
    },
  };
}

export function parseTargetOutput(stdout: string): { processes: TargetProcessReport[]; summary?: TargetSummary } {
  const processes: TargetProcessReport[] = [];
  let summary: TargetSummary | undefined;
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const o = JSON.parse(line);
    if (o.summary) summary = o as TargetSummary;
    else processes.push(o as TargetProcessReport);
  }
  return { processes, summary };
}

function parseDaemonOutput(stdout: string): { summary?: RestoreSummary; error?: string } {
  const line = stdout.trim().split('\n').pop() ?? '';
  if (!line.startsWith('{')) return {};
  const o = JSON.parse(line);
  return o.ok === false ? { error: o.error } : { summary: o as RestoreSummary };
}

export async function runRestore(opts: RestoreRunOptions): Promise<RestoreResult> {
  for (let attempt = 0; ; attempt++) {
    const r = await runOnce(opts);
    if (r.target.code === 3 && attempt < (opts.retries ?? 2)) continue;
    return r;
  }
}

async function runOnce(opts: RestoreRunOptions): Promise<RestoreResult> {
  fs.mkdirSync(opts.workDir, { recursive: true });
  const planPath = path.join(opts.workDir, 'target.plan');
  writeTargetPlan(opts.planImagesDir ?? opts.imagesDir, planPath, path.join(opts.workDir, 'lazy-pages.socket'));
  if (opts.editPlan) fs.writeFileSync(planPath, opts.editPlan(fs.readFileSync(planPath, 'utf8')));
  const { child: firstDaemon, exit: firstExit } = await startDaemon(opts.imagesDir, opts.workDir, opts.daemonArgs, opts.daemon, opts.daemonEnv, opts.daemonWrap);
  let daemon = firstDaemon;
  if (opts.onDaemonStderr) firstDaemon.stderr?.on('data', (d: Buffer | string) => opts.onDaemonStderr!(String(d)));
  const target = spawn(...wrapped(opts.targetWrap ?? [], TARGET, targetArgs(planPath, opts.target ?? {})), { stdio: ['ignore', 'pipe', 'pipe'] });
  const targetExit = collect(target);
  opts.onStarted?.(daemon, target);
  const timeline: TimelineSample[] = [];
  const sampler = opts.sampleEveryMs ? startSampler(target.pid!, opts.sampleEveryMs, timeline) : undefined;
  const timer = setTimeout(() => {
    daemon.kill('SIGKILL');
    target.kill('SIGKILL');
  }, opts.timeoutMs ?? 120_000);
  // A restorer that dies before handing everything over leaves the daemon waiting, as criu lazy-pages
  // would; the harness then stops it the way an operator would.
  void targetExit.then(() => {
    setTimeout(() => daemon.exitCode === null && daemon.kill('SIGTERM'), 2000).unref();
  });
  // Resuming starts at the daemon's exit, not when its stderr closes: the guardian holds that open.
  const resumed = new Promise<Exit | undefined>((resolve) => {
    const resume = opts.resume;
    if (!resume) return resolve(undefined);
    firstDaemon.once('exit', (_code, signal) => {
      if (!signal) return resolve(undefined);
      setTimeout(() => {
        daemon = spawn(...wrapped(opts.daemonWrap ?? [], process.execPath, [CLI, 'lazy-pages', '--resume', '-D', opts.imagesDir, '-W', opts.workDir, '--json', ...(resume.args ?? [])]), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(resume.env ?? opts.daemonEnv) } });
        resolve(collect(daemon));
      }, resume.afterMs ?? 0);
    });
  });
  try {
    let d = await firstExit;
    let killed: Exit | undefined;
    const second = await resumed;
    if (second) {
      killed = d;
      d = second;
    }
    // The daemon is gone: now the target checks every page, background-filled ones included.
    if (target.exitCode === null) target.kill('SIGUSR1');
    const t = await targetExit;
    return {
      daemon: { ...d, ...parseDaemonOutput(d.stdout) },
      target: { ...t, ...parseTargetOutput(t.stdout) },
      timeline,
      ...(killed ? { killed } : {}),
    };
  } finally {
    clearTimeout(timer);
    if (sampler) clearInterval(sampler);
  }
}

/** Resident pages of each child of the target, from /proc (works the same for either daemon). */
function startSampler(targetPid: number, everyMs: number, out: TimelineSample[]): NodeJS.Timeout {
  const t0 = Date.now();
  return setInterval(() => {
    let children: number[] = [];
    try {
      children = fs.readFileSync(`/proc/${targetPid}/task/${targetPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return;
    }
    const rss: Record<number, number> = {};
    for (const pid of children) {
      try {
        rss[pid] = Number(fs.readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]);
      } catch {
        // exited
      }
    }
    out.push({ t: Date.now() - t0, rss });
  }, everyMs);
}
