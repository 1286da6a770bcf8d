// `faultline lazy-pages`: a drop-in for `criu lazy-pages` (local images): same flags, same socket,
// same exit behaviour, plus a summary (or --json) when the tree is fully restored.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
// The engine's modules load only for a stand-alone daemon: `--engine` is a thin client (its start-up
// CPU and memory count once per restore; docs/DESIGN.md, "The engine").
import type { LazyPagesDaemon as Daemon } from '../engine/daemon';
import type { Guardian } from '../engine/guardian';
import { FailStop } from '../engine/errors';
import { formatSummary } from '../engine/summary';
import { native } from '../native';
import { MAX_COPY_PAGES, tuningFromFlags } from '../protocol/tuning';
import { clientTlsOptions, criuTls, type CriuTlsFlags } from './criu-tls';
import { daemonize, isDaemonChild, readinessFd, signalReady } from './daemonize';
import { makeLogger, parseLogFormat, resolveLogFile } from './log';
import { UsageError } from './usage-error';
import { startProgressBar } from './progress-bar';
import { parseMetricsAddress, serveMetrics } from './metrics';
import type { RemoteOptions } from '../source/remote-client';

export { UsageError };

export interface CommonFlags extends CriuTlsFlags {
  imagesDir: string;
  workDir?: string;
  daemon?: boolean;
  pidfile?: string;
  statusFd?: string;
  logFile?: string;
  logFormat?: string;
  verbosity: number;
  displayStats?: boolean;
  port?: string;
}

export interface LazyPagesFlags extends CommonFlags {
  json?: boolean;
  workers?: string;
  nice?: string;
  fillNice?: string;
  faultAround?: string;
  fillChunk?: string;
  recordFaults?: string;
  prefetch?: string;
  pageServer?: boolean;
  lanes?: string;
  connectTimeoutMs?: string;
  replyTimeoutMs?: string;
  recoverTimeoutMs?: string;
  recoverTimeout?: string;
  resume?: boolean;
  metrics?: string;
  /** --engine SOCKET (or FAULTLINE_ENGINE): served by a running `faultline serve` */
  engine?: string;
  requestOrder?: string;
  /** commander's --no-guardian */
  guardian?: boolean;
  socketGroup?: string;
}

/**
 * criu's rule: -D and -W relative to the current directory, -W defaulting to -D. The work directory
 * given with -W must exist and be writable (the socket, the lock and relative -o/--pidfile go there): checked before
 * anything starts, so a bad -W is one line and an exit, never a daemon that cannot listen.
 */
export function workDirOf(flags: CommonFlags): string {
  const dir = path.resolve(flags.workDir ?? flags.imagesDir);
  // Without -W, a missing images directory is better told as such, by the image reader.
  if (flags.workDir === undefined) return dir;
  const flag = `-W ${flags.workDir}`;
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new UsageError(`${flag}: ${dir} does not exist (${(e as NodeJS.ErrnoException).code})`);
  }
  if (!st.isDirectory()) throw new UsageError(`${flag}: ${dir} is not a directory`);
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    throw new UsageError(`${flag}: ${dir} is not writable`);
  }
  return dir;
}

/** --pidfile, like -o, is relative to the work dir (criu opens it after chdir(work_dir)). */
export function pidfilePath(file: string | undefined, workDir: string): string | undefined {
  if (file === undefined) return undefined;
  const p = path.resolve(workDir, file);
  // Checked at start: a pidfile that cannot be written is found before the restore begins.
  try {
    fs.accessSync(path.dirname(p), fs.constants.W_OK);
    if (fs.existsSync(p)) fs.accessSync(p, fs.constants.W_OK);
  } catch (e) {
    throw new UsageError(`--pidfile ${file}: cannot write ${p} (${(e as NodeJS.ErrnoException).code})`);
  }
  return p;
}

export function writePidfile(file: string | undefined): void {
  if (file !== undefined) fs.writeFileSync(file, `${process.pid}\n`);
}

function ownsOtherEnd(fd: number, target: string): boolean {
  return fs.readdirSync('/proc/self/fd').some((n) => {
    if (Number(n) === fd) return false;
    try {
      return fs.readlinkSync(`/proc/self/fd/${n}`) === target;
    } catch {
      return false;
    }
  });
}

/** --socket-group: a group name from /etc/group, or a number. */
function resolveGroup(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  let text = '';
  try {
    text = fs.readFileSync('/etc/group', 'utf8');
  } catch {
    /* no group database: only numbers */
  }
  const line = text.split('\n').find((l) => l.split(':')[0] === group);
  if (!line) throw new UsageError(`--socket-group ${group}: no such group in /etc/group`);
  return Number(line.split(':')[2]);
}

/** criu's --status-fd: checked to be an open, writable descriptor before anything starts. */
export function parseStatusFd(v: string | undefined): number {
  if (v === undefined) return -1;
  if (!/^\d+$/.test(v)) throw new UsageError(`--status-fd must be a file descriptor number, got '${v}'`);
  const fd = Number(v);
  // A -d child reports to its parent on fd 3; the parent, which checked it, writes --status-fd.
  if (isDaemonChild()) return fd;
  let flags = -1;
  try {
    flags = native.fdAccessMode(fd);
  } catch {
    throw new UsageError(`--status-fd ${v}: not an open file descriptor`);
  }
  if (flags === fs.constants.O_RDONLY) throw new UsageError(`--status-fd ${v}: open for reading only`);
  // A number the caller did not pass open may already name one of Node's own descriptors (its epoll,
  // eventfds): never a status fd, and not ours to write to.
  let target = '';
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    /* no /proc: the write at ready is the check */
  }
  if (target.startsWith('anon_inode:')) throw new UsageError(`--status-fd ${v}: not an open file descriptor of the caller (${fd} is this process's own ${target})`);
  // Node's internal pipes have both ends here; a caller's status pipe has its reading end outside.
  if (target.startsWith('pipe:') && ownsOtherEnd(fd, target)) throw new UsageError(`--status-fd ${v}: not an open file descriptor of the caller (${fd} is one end of this process's own pipe)`);
  return fd;
}

/**
 * The daemon's threads run at a higher priority than the restored tree: every fault of the tree
 * waits on them, and on a host with fewer CPUs than runnable threads a worker that a restored
 * thread preempts makes every other fault wait too (measurements: docs/DESIGN.md, "The fault
 * tail"). Set on the main thread before the workers exist, so that they inherit it (Linux: nice is
 * per thread). Root only; without the privilege the daemon goes on at its own priority and says so
 * at debug level.
 */
export const DEFAULT_NICE = -10;
export function parseNice(v: string | undefined, flag = '--nice'): number {
  const nice = v === undefined ? DEFAULT_NICE : Number(v);
  if (!/^-?\d+$/.test(v ?? '0') || nice < -20 || nice > 19) throw new UsageError(`${flag} must be an integer from -20 to 19, got '${v}'`);
  return nice;
}
export function raisePriority(nice: number, log: { debug(msg: string): void }): void {
  try {
    os.setPriority(nice);
  } catch (e) {
    log.debug(`--nice ${nice}: ${(e as Error).message}; the daemon runs at its inherited priority`);
  }
}

function unguarded(log: { warn(msg: string): void }): (why: string) => void {
  return (why) => log.warn(`${why}; the restore goes on, but a daemon that dies now leaves the tree unguarded`);
}

function startGuardian(log: { warn(msg: string): void; debug(obj: object, msg: string): void }, logFile?: string, resume?: { workDir: string; recoverMs: number }): Guardian {
  try {
    const { Guardian: G } = require('../engine/guardian') as typeof import('../engine/guardian');
    const g = G.start(unguarded(log), logFile, resume);
    log.debug({ pid: g.pid }, 'guardian started');
    return g;
  } catch (e) {
    // A coded error: main prints it as one line and exits 1.
    throw Object.assign(new Error(`${(e as Error).message}; refusing to restore without it (--no-guardian to do so anyway)`), { code: 'EGUARDIAN' });
  }
}

/** Signals that end a process by default and that Node lets a listener catch (not SIGPROF: profilers). */
const FAIL_STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGALRM', 'SIGVTALRM', 'SIGXCPU', 'SIGXFSZ', 'SIGPWR', 'SIGSTKFLT'];

export async function lazyPages(flags: LazyPagesFlags): Promise<number> {
  const workDir = workDirOf(flags);
  const statusFd = parseStatusFd(flags.statusFd);
  const format = parseLogFormat(flags.logFormat);
  const workers = boundedInt(flags.workers, '--workers', maxWorkers(), `4 × this machine's ${os.availableParallelism()} CPUs, at least 8`) ?? Math.max(1, Math.min(os.availableParallelism(), 16));
  const faultAround = boundedInt(flags.faultAround, '--fault-around', MAX_COPY_PAGES);
  const fillChunk = boundedInt(flags.fillChunk, '--fill-chunk', MAX_COPY_PAGES);
  const pidfile = pidfilePath(flags.pidfile, workDir);
  const socketGid = flags.socketGroup === undefined ? undefined : resolveGroup(flags.socketGroup);
  const nice = parseNice(flags.nice);
  const fillNice = flags.fillNice === undefined ? undefined : parseNice(flags.fillNice, '--fill-nice');
  const metricsAt = flags.metrics === undefined ? undefined : parseMetricsAddress(flags.metrics);
  const recoverS = flags.recoverTimeout === undefined ? 0 : seconds(flags.recoverTimeout, '--recover-timeout');
  if ((flags.resume || recoverS) && flags.guardian === false) throw new UsageError(`${flags.resume ? '--resume' : '--recover-timeout'} needs the guardian: it cannot go with --no-guardian`);
  const engineSocket = flags.engine ?? process.env.FAULTLINE_ENGINE;
  if (engineSocket) {
    // The engine has its own workers, guardian and metrics; a remote or resumed restore is not served by it yet.
    const own: [unknown, string][] = [[flags.tls, '--tls'], [flags.resume, '--resume'], [flags.recoverTimeout, '--recover-timeout'], [flags.guardian === false ? true : undefined, '--no-guardian'], [flags.workers, '--workers'], [flags.nice, '--nice'], [flags.fillNice, '--fill-nice'], [flags.metrics, '--metrics']];
    for (const [v, flag] of own) if (v !== undefined && v !== false) throw new UsageError(`${flag} cannot go with --engine: ${flag === '--tls' || flag === '--resume' || flag === '--recover-timeout' ? 'the engine does not serve such a restore yet (run this one stand-alone)' : 'it is the engine\'s (faultline serve)'}`);
  }
  const remote = flags.pageServer ? remoteOptions(flags, workDir, recoverS) : undefined;
  if (!flags.pageServer) criuTls(flags, workDir); // still refuses --tls-* without --tls, and bad files
  const logPath = resolveLogFile(flags.logFile, workDir);
  if (flags.daemon && !isDaemonChild()) return daemonize('the lazy-pages daemon', logPath, statusFd);
  const log = makeLogger({ verbosity: flags.verbosity, logFile: flags.logFile, workDir, format, truncate: !isDaemonChild() });
  if (engineSocket) {
    const { runViaEngine } = require('./engine-client') as typeof import('./engine-client');
    return runViaEngine({
      socket: engineSocket,
      request: {
        imagesDir: path.resolve(flags.imagesDir),
        workDir,
        socketGid,
        faultAround,
        fillChunk,
        recordFaults: flags.recordFaults && path.resolve(flags.recordFaults),
        prefetch: flags.prefetch && path.resolve(flags.prefetch),
        ...(remote ? { pageServer: withoutTls(remote) } : {}),
      },
      json: flags.json,
      statusFd,
      onListening: () => writePidfile(pidfile),
      log,
      stopSignals: FAIL_STOP_SIGNALS,
    });
  }
  raisePriority(nice, log);
  // Before the socket listens: no uffd ever reaches this daemon without the guardian holding a copy.
  // --resume: the guardian of a daemon that died hands its tree over and guards this one instead.
  const { Guardian: G } = require('../engine/guardian') as typeof import('../engine/guardian');
  const { LazyPagesDaemon } = require('../engine/daemon') as typeof import('../engine/daemon');
  const taken = flags.resume ? G.resume(workDir, unguarded(log)) : undefined;
  const guardian = taken?.guardian ?? (flags.guardian === false ? undefined : startGuardian(log, logPath === '-' ? undefined : logPath, recoverS ? { workDir, recoverMs: Math.round(recoverS * 1000) } : undefined));

  const daemon: Daemon = new LazyPagesDaemon({
    imagesDir: flags.imagesDir,
    workDir,
    workers,
    log,
    recordFaults: flags.recordFaults,
    prefetch: flags.prefetch,
    remote,
    fillNice,
    guardian,
    resume: taken?.held,
    socketGid,
    tuning: tuningFromFlags(faultAround, fillChunk),
  });
  if (metricsAt) {
    try {
      const labels = { images_dir: path.resolve(flags.imagesDir), work_dir: workDir };
      const m = await serveMetrics(metricsAt, () => ({ restores: [{ labels, progress: daemon.progress() }] }));
      process.stderr.write(`faultline lazy-pages: metrics on ${m.url}\n`);
      void daemon.done.finally(() => m.close()).catch(() => undefined);
    } catch (e) {
      daemon.failStop((e as Error).message);
    }
  }
  const crash = (e: unknown) => {
    const killed = daemon.emergencyStop();
    log.error(`internal error: ${(e as Error)?.message}; ${killed} restored processes were killed`);
    process.stderr.write(`faultline: internal error: ${(e as Error)?.stack ?? e}\nfaultline: error: internal error (${(e as Error)?.message}); ${killed} restored processes were killed\n`);
    process.exit(70);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  const stop = (sig: string) => daemon.failStop(`received ${sig} before the restore completed`);
  // Every signal whose default action ends the process ends it through fail-stop instead (a Node
  // process would otherwise die with the tree still reading from our uffds). A listener on SIGUSR1
  // also keeps Node from opening its inspector on it: no signal may open a debugger in the daemon.
  for (const sig of FAIL_STOP_SIGNALS) process.on(sig, () => stop(sig));
  // Ready means the socket listens, every worker runs and (remote) the page server answered:
  // criu's status-fd promise. A daemon that fails before that never says it is ready.
  const ready = await Promise.race([daemon.ready.then(() => true, () => false), daemon.done.then(() => false, () => false)]);
  if (ready) {
    // Whoever waits on these starts the restore: one we cannot write ends the daemon, as in criu.
    try {
      writePidfile(pidfile);
      signalReady(readinessFd(statusFd), (e) => {
        throw new Error(`--status-fd ${statusFd}: ${(e as NodeJS.ErrnoException).code ?? e.message}`);
      });
    } catch (e) {
      daemon.failStop(`cannot say we are ready: ${(e as Error).message}`);
    }
  }
  const stopBar = ready && !isDaemonChild() ? startProgressBar(daemon) : () => undefined;
  try {
    const summary = await daemon.done;
    stopBar();
    process.stdout.write(flags.json ? JSON.stringify(summary) + '\n' : formatSummary(summary) + '\n');
    return 0;
  } catch (e) {
    stopBar();
    if (e instanceof FailStop) {
      process.stderr.write(`faultline: error: ${e.message}; the restored processes were stopped\n`);
      if (flags.json) process.stdout.write(JSON.stringify({ ok: false, error: e.message }) + '\n');
      return 1;
    }
    throw e;
  }
}

function withoutTls(r: RemoteOptions): Omit<RemoteOptions, 'tls'> {
  const { tls: _tls, ...rest } = r;
  return rest;
}

function remoteOptions(flags: LazyPagesFlags, workDir: string, recoverS: number): RemoteOptions {
  const port = positiveInt(flags.port, '--port');
  if (!port) throw new UsageError('--page-server needs --port (and usually --address)');
  if (port > 65535) throw new UsageError(`--port must be a port number (1-65535), got '${flags.port}'`);
  const lanes = positiveInt(flags.lanes ?? '1', '--lanes');
  if (lanes !== 1 && lanes !== 2) throw new UsageError(`--lanes must be 1 (a CRIU page server) or 2 (faultline's), got '${flags.lanes}'`);
  const t = criuTls(flags, workDir);
  return {
    // criu's client resolves a missing --address as getaddrinfo(NULL): the loopback address.
    address: flags.address ?? '127.0.0.1',
    port,
    lanes,
    connectTimeoutMs: positiveInt(flags.connectTimeoutMs ?? '10000', '--connect-timeout-ms')!,
    replyTimeoutMs: millis(flags.replyTimeoutMs ?? '30000', '--reply-timeout-ms'),
    recoverTimeoutMs: millis(flags.recoverTimeoutMs ?? String(Math.round(recoverS * 1000)), '--recover-timeout-ms'),
    requestOrder: requestOrder(flags.requestOrder),
    tls: t ? clientTlsOptions(t) : undefined,
  };
}

/** A duration in whole or fractional seconds, 0 allowed (off); at most a day. */
export function seconds(v: string, flag: string): number {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || n > 86_400) throw new UsageError(`${flag} must be a number of seconds (0-86400), got '${v}'`);
  return n;
}

/** A duration in ms, 0 allowed (off); at most a day, so that a typo is not a hang. */
function millis(v: string, flag: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 86_400_000) throw new UsageError(`${flag} must be a number of milliseconds (0-86400000), got '${v}'`);
  return n;
}

function requestOrder(v: string | undefined): 'priority' | 'fifo' {
  if (v === undefined || v === 'priority' || v === 'fifo') return v ?? 'priority';
  throw new UsageError(`--request-order must be 'priority' or 'fifo', got '${v}'`);
}

/**
 * More workers than a few per CPU only cost memory (≈ 50 MiB each) and start-up time: the fill is
 * bounded by the kernel's copy and the faults by the CPUs.
 */
export function maxWorkers(): number {
  return Math.max(8, 4 * os.availableParallelism());
}

function boundedInt(v: string | undefined, flag: string, max: number, why?: string): number | undefined {
  const n = positiveInt(v, flag);
  if (n !== undefined && n > max) throw new UsageError(`${flag} must be at most ${max}${why ? ` (${why})` : ''}, got '${v}'`);
  return n;
}

export function positiveInt(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a positive integer, got '${v}'`);
  return n;
}
