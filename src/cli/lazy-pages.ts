// `faultline lazy-pages`: a drop-in for `criu lazy-pages` (local images): same flags, same socket,
// same exit behaviour, plus a summary (or --json) when the tree is fully restored.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { LazyPagesDaemon, FailStop } from '../engine/daemon';
import { formatSummary } from '../engine/summary';
import { closeQuietly, makeLogger } from './log';
import type { RemoteOptions } from '../source/remote-client';

export interface LazyPagesFlags {
  imagesDir: string;
  workDir?: string;
  daemon?: boolean;
  pidfile?: string;
  statusFd?: string;
  logFile?: string;
  verbosity: number;
  json?: boolean;
  workers?: string;
  faultAround?: string;
  fillChunk?: string;
  recordFaults?: string;
  prefetch?: string;
  pageServer?: boolean;
  address?: string;
  port?: string;
  tls?: boolean;
  tlsCacert?: string;
  tlsCert?: string;
  tlsKey?: string;
  lanes?: string;
  connectTimeoutMs?: string;
  requestOrder?: string;
}

const DAEMON_ENV = 'FAULTLINE_DAEMON_CHILD';

export async function lazyPages(flags: LazyPagesFlags, argv: string[]): Promise<number> {
  if (flags.daemon && !process.env[DAEMON_ENV]) return daemonize(flags, argv);
  const log = makeLogger(flags.verbosity, flags.logFile);

  const workers = positiveInt(flags.workers, '--workers') ?? Math.max(1, Math.min(os.availableParallelism(), 16));
  const faultAround = positiveInt(flags.faultAround, '--fault-around');
  const fillChunk = positiveInt(flags.fillChunk, '--fill-chunk');
  const daemon = new LazyPagesDaemon({
    imagesDir: flags.imagesDir,
    workDir: flags.workDir ?? flags.imagesDir,
    workers,
    log,
    recordFaults: flags.recordFaults,
    prefetch: flags.prefetch,
    remote: flags.pageServer ? remoteOptions(flags) : undefined,
    tuning: {
      ...(faultAround ? { faultAroundMin: Math.min(16, faultAround), faultAroundMax: faultAround } : {}),
      ...(fillChunk ? { fillChunkMax: fillChunk } : {}),
    },
  });
  const crash = (e: unknown) => {
    const killed = daemon.emergencyStop();
    process.stderr.write(`faultline: internal error: ${(e as Error)?.stack ?? e}\nfaultline: error: internal error (${(e as Error)?.message}); ${killed} restored processes were killed\n`);
    process.exit(70);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  const stop = (sig: string) => daemon.failStop(`received ${sig} before the restore completed`);
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // Ready means the socket listens, every worker runs and (remote) the page server answered:
  // criu's status-fd promise. A daemon that fails before that never says it is ready.
  const ready = await Promise.race([daemon.ready.then(() => true, () => false), daemon.done.then(() => false, () => false)]);
  if (ready && flags.pidfile) fs.writeFileSync(flags.pidfile, `${process.pid}\n`);
  const statusFd = process.env[DAEMON_ENV] ? 3 : flags.statusFd !== undefined ? Number(flags.statusFd) : -1;
  if (ready && statusFd >= 0) {
    // Ready: the socket is listening (criu writes one NUL byte to --status-fd at this point).
    fs.writeSync(statusFd, Buffer.from([0]));
    closeQuietly(statusFd);
  }
  try {
    const summary = await daemon.done;
    process.stdout.write(flags.json ? JSON.stringify(summary) + '\n' : formatSummary(summary) + '\n');
    return 0;
  } catch (e) {
    if (e instanceof FailStop) {
      process.stderr.write(`faultline: error: ${e.message}; the restored processes were stopped\n`);
      if (flags.json) process.stdout.write(JSON.stringify({ ok: false, error: e.message }) + '\n');
      return 1;
    }
    throw e;
  }
}

function remoteOptions(flags: LazyPagesFlags): RemoteOptions {
  const port = positiveInt(flags.port, '--port');
  if (!port) throw new UsageError('--page-server needs --port (and usually --address)');
  const lanes = positiveInt(flags.lanes ?? '1', '--lanes');
  if (lanes !== 1 && lanes !== 2) throw new UsageError(`--lanes must be 1 (a CRIU page server) or 2 (faultline's), got '${flags.lanes}'`);
  return {
    address: flags.address ?? '127.0.0.1',
    port,
    lanes,
    connectTimeoutMs: positiveInt(flags.connectTimeoutMs ?? '10000', '--connect-timeout-ms')!,
    requestOrder: requestOrder(flags.requestOrder),
    tls: flags.tls
      ? {
          ca: flags.tlsCacert ?? '/etc/pki/CA/cacert.pem',
          cert: flags.tlsCert ?? '/etc/pki/criu/cert.pem',
          key: flags.tlsKey ?? '/etc/pki/criu/private/key.pem',
        }
      : undefined,
  };
}

function requestOrder(v: string | undefined): 'priority' | 'fifo' {
  if (v === undefined || v === 'priority' || v === 'fifo') return v ?? 'priority';
  throw new UsageError(`--request-order must be 'priority' or 'fifo', got '${v}'`);
}

function positiveInt(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a positive integer, got '${v}'`);
  return n;
}

export class UsageError extends Error {}

/** -d: run in the background once the socket is ready, as criu does; the parent exits 0 then. */
async function daemonize(flags: LazyPagesFlags, argv: string[]): Promise<number> {
  const args = argv.filter((a) => a !== '-d' && a !== '--daemon');
  const out = flags.logFile ? fs.openSync(flags.logFile, 'a') : 'ignore';
  const child = spawn(process.execPath, [...process.execArgv, ...args], {
    detached: true,
    stdio: ['ignore', out, out, 'pipe'],
    env: { ...process.env, [DAEMON_ENV]: '1' },
  });
  const ready = await new Promise<boolean>((resolve) => {
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.once('data', () => resolve(true));
    pipe.once('end', () => resolve(false));
    child.once('exit', () => resolve(false));
  });
  if (!ready) {
    process.stderr.write(`faultline: error: the daemon exited before it was ready${flags.logFile ? ` (see ${flags.logFile})` : ''}\n`);
    return 1;
  }
  child.unref();
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
  return 0;
}
