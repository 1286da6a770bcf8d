// Drives native/bin/faultline-workload, the process tree the real-CRIU tests and the bench dump and
// restore: start it in its own pid namespace, signal it after restore, collect what each process
// found when it checked its memory, and kill it. See native/workload/workload.c for the program.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, wrapped } from './run';

export const WORKLOAD = path.join(ROOT, 'native/bin/faultline-workload');

/** What every process does on SIGUSR1 after restore: 'verify', 'events', or `touch:${percent}`. */
export type WorkloadAction = 'verify' | 'events' | `touch:${number}`;

export interface WorkloadOptions {
  /** Results directory (created if missing); must not be inside the images directory. */
  dir: string;
  /** Processes in the tree (default 4): process i > 0 is a child of (i-1)/2. */
  procs?: number;
  /** Private memory per process, MiB (default 32). */
  mib?: number;
  /** Worker threads per process (default 2). */
  threads?: number;
  action?: WorkloadAction;
  seed?: number;
  /** Prefix for the launcher, e.g. ['ip', 'netns', 'exec', 'fl-src']. */
  wrap?: string[];
  /** How long filling the memory may take (default 60 s). */
  readyTimeoutMs?: number;
}

export interface Workload {
  /** Host pid of the tree's root, the init of its pid namespace: what `criu dump -t` takes. */
  rootPid: number;
  /** Its start time (processStartTime), so that killTree never hits a reused pid. */
  rootStartTime?: string;
  dir: string;
  procs: number;
  mib: number;
  action: WorkloadAction;
}

/** One process's report (DIR/result-<index>.json). Forked children of 'events' have index "<i>.f". */
export interface WorkloadResult {
  index: string;
  /** As the process sees it (inside its pid namespace). */
  pid: number;
  action: string;
  words: number;
  pages: number;
  mismatches: number;
  /** "region+0xbyteoffset" of the earliest mismatch, e.g. "dense+0x1008". */
  first_mismatch: string | null;
  events: string[];
  /** The first system call of the action that failed, with errno text. */
  error: string | null;
  t_signal_ns: number;
  t_first_verified_ns: number;
  t_done_ns: number;
  ok: boolean;
}

/** Pages per region of one process (the same integer arithmetic as the C program). */
export function workloadLayout(mib: number): { dense: number; sparse: number; zero: number; ro: number; inherit: number; total: number } {
  const total = mib * 256;
  const l = { dense: Math.floor(total / 2), sparse: Math.floor(total / 4), zero: Math.floor(total / 16), ro: Math.floor(total / 16), inherit: Math.floor(total / 8) };
  return { ...l, total: l.dense + l.sparse + l.zero + l.ro + l.inherit };
}

/**
 * Pages a process must report as verified: all of them for 'verify' and for the forked children of
 * 'events'; for an 'events' process what remains after its grow, shrink and munmap (the DONTNEED
 * range and the grown tail are verified as zeros); the rounded-up percentage for 'touch'.
 */
export function expectedPages(mib: number, action: WorkloadAction, index: string): number {
  const l = workloadLayout(mib);
  if (action === 'verify' || index.endsWith('.f')) return l.total;
  if (action === 'events') {
    const grow = Math.max(1, Math.floor(l.dense / 16));
    const unmapped = Math.max(1, Math.floor(l.sparse / 8));
    const inheritKept = l.inherit - Math.floor(l.inherit / 4);
    return l.dense + grow + (l.sparse - unmapped) + l.zero + l.ro + inheritKept;
  }
  const pct = Number(action.slice('touch:'.length));
  return Math.ceil((l.total * pct) / 100);
}

export const WORDS_PER_PAGE = 512;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function readIf(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const t of tasks) {
    const c = readIf(`/proc/${pid}/task/${t}/children`);
    if (c) out.push(...c.trim().split(/\s+/).filter(Boolean).map(Number));
  }
  return out;
}

/** Every live descendant of pid (breadth first). */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length) {
    const kids = childrenOf(queue.shift()!);
    out.push(...kids);
    queue.push(...kids);
  }
  return out;
}

/** The first descendant of pid that is the init (pid 1) of a nested pid namespace. */
function namespaceInitBelow(pid: number): number | undefined {
  for (const d of descendants(pid)) {
    const nspid = /^NSpid:\s*(.*)$/m.exec(readIf(`/proc/${d}/status`) ?? '')?.[1].trim().split(/\s+/);
    if (nspid && nspid.length >= 2 && nspid[nspid.length - 1] === '1') return d;
  }
  return undefined;
}

/**
 * Starts the tree in its own pid namespace (`unshare -p -f setsid faultline-workload …`, stdio on
 * /dev/null) and resolves once its root wrote DIR/ready, i.e. every process filled its memory.
 */
export async function startWorkload(opts: WorkloadOptions): Promise<Workload> {
  if (!fs.existsSync(WORKLOAD)) throw new Error(`${WORKLOAD} is missing: run make -C native`);
  const procs = opts.procs ?? 4;
  const mib = opts.mib ?? 32;
  const action = opts.action ?? 'verify';
  fs.mkdirSync(opts.dir, { recursive: true });
  for (const f of fs.readdirSync(opts.dir)) if (f === 'ready' || f === 'failed' || f.startsWith('result-')) fs.rmSync(path.join(opts.dir, f));
  const args = ['--out', opts.dir, '--procs', String(procs), '--mib', String(mib), '--threads', String(opts.threads ?? 2), '--action', action];
  if (opts.seed !== undefined) args.push('--seed', String(opts.seed));
  // setsid inside the namespace: criu refuses a session leader outside the dumped pid namespace.
  const launcher = spawn(...wrapped(opts.wrap, 'unshare', ['-p', '-f', 'setsid', WORKLOAD, ...args]), { stdio: 'ignore', detached: true });
  let launcherExit: string | undefined;
  launcher.once('exit', (code, signal) => (launcherExit = `exit ${code ?? signal}`));
  launcher.once('error', (e) => (launcherExit = String(e)));
  launcher.unref();
  const timeoutMs = opts.readyTimeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  const failedFile = path.join(opts.dir, 'failed');
  for (;;) {
    const failed = readIf(failedFile);
    if (failed) {
      stopLauncher(launcher.pid);
      throw new Error(`faultline-workload did not start: ${failed.trim()}`);
    }
    if (fs.existsSync(path.join(opts.dir, 'ready'))) break;
    if (launcherExit) throw new Error(`faultline-workload did not start: unshare ${launcherExit} before ${opts.dir}/ready appeared`);
    if (Date.now() > deadline) {
      stopLauncher(launcher.pid);
      throw new Error(`faultline-workload: no ${opts.dir}/ready after ${timeoutMs} ms (${procs} processes of ${mib} MiB)`);
    }
    await sleep(20);
  }
  const rootPid = launcher.pid ? namespaceInitBelow(launcher.pid) : undefined;
  if (!rootPid) throw new Error(`faultline-workload is ready but no pid-namespace init was found below launcher pid ${launcher.pid}`);
  return { rootPid, rootStartTime: processStartTime(rootPid), dir: opts.dir, procs, mib, action };
}

/** A tree that did not get ready: killing its namespace's init ends the whole namespace. */
function stopLauncher(pid: number | undefined): void {
  if (!pid) return;
  const init = namespaceInitBelow(pid);
  if (init) killGroupQuietly(init);
  killGroupQuietly(pid);
}

function killGroupQuietly(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/** Signals the restored tree's process group (the root called setsid; its descendants keep its pgid). */
export function signalTree(rootHostPid: number, signal: NodeJS.Signals = 'SIGUSR1'): void {
  process.kill(-rootHostPid, signal);
}

/** The result files in dir so far, sorted by index. */
export function readResults(dir: string): WorkloadResult[] {
  return fs
    .readdirSync(dir)
    .filter((f) => /^result-.*\.json$/.test(f))
    .map((f) => {
      const text = fs.readFileSync(path.join(dir, f), 'utf8');
      try {
        return JSON.parse(text) as WorkloadResult;
      } catch {
        throw new Error(`${path.join(dir, f)}: not JSON: ${text.slice(0, 200)}`);
      }
    })
    .sort((a, b) => a.index.localeCompare(b.index, 'en', { numeric: true }));
}

/**
 * Waits for `count` result files in dir and returns them sorted by index. `check` is called on every
 * poll; a string it returns (e.g. "the daemon exited 1: …") ends the wait with that error.
 */
export async function waitResults(dir: string, count: number, timeoutMs: number, check?: () => string | undefined): Promise<WorkloadResult[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const files = fs.readdirSync(dir).filter((f) => /^result-.*\.json$/.test(f));
    if (files.length >= count) return readResults(dir);
    const why = check?.();
    if (why) throw new Error(`waiting for workload results in ${dir} (${files.length} of ${count}): ${why}`);
    if (Date.now() > deadline) throw new Error(`workload results in ${dir}: ${files.length} of ${count} after ${timeoutMs} ms (have ${files.join(', ') || 'none'})`);
    await sleep(20);
  }
}

function alive(pid: number): boolean {
  const stat = readIf(`/proc/${pid}/stat`);
  if (!stat) return false;
  // a zombie holds no memory and runs no more; PID 1 reaps it in its own time
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

/** Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, names one process for good. */
export function processStartTime(pid: number): string | undefined {
  const stat = readIf(`/proc/${pid}/stat`);
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/**
 * SIGKILLs the tree (its process group and every descendant) and waits until none of it runs.
 * With startTime (from startWorkload or criuRestoreLazy), a pid that now names another process
 * (the tree is long gone, the pid reused) is left alone.
 */
export async function killTree(rootHostPid: number, startTime?: string, timeoutMs = 10_000): Promise<void> {
  if (startTime !== undefined && processStartTime(rootHostPid) !== startTime) return;
  const pids = [rootHostPid, ...descendants(rootHostPid)];
  killGroupQuietly(rootHostPid);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (pids.some(alive)) {
    if (Date.now() > deadline) throw new Error(`killTree ${rootHostPid}: still running after ${timeoutMs} ms: ${pids.filter(alive).join(' ')}`);
    await sleep(20);
  }
}
