// `faultline page-server --lazy-pages`: the source side of a remote lazy restore, flag-compatible
// with `criu page-server --lazy-pages`. Like criu's, it serves one restore and exits 0 when that
// restore's connections have closed after CLOSE, so scripts that wait for it (zdtm does) end;
// --keep-serving serves any number of restores until SIGTERM/SIGINT, which criu's cannot.
import { criuTls } from './criu-tls';
import { daemonize, isDaemonChild, readinessFd, signalReady } from './daemonize';
import { parseStatusFd, pidfilePath, workDirOf, writePidfile, type CommonFlags } from './lazy-pages';
import { makeLogger, parseLogFormat, resolveLogFile } from './log';
import { UsageError } from './usage-error';
import { formatPeer } from '../protocol/page-server-wire';
import { PageServer } from '../server/page-server';

export interface PageServerFlags extends CommonFlags {
  address?: string;
  lazyPages?: boolean;
  keepServing?: boolean;
  maxConnections?: string;
  maxOutstandingRequests?: string;
  maxUnsentBytes?: string;
  idleTimeoutMs?: string;
}

/** A bound's value: a whole number >= min; bytes may end in k, m or g (KiB, MiB, GiB). */
export function parseBound(flag: string, v: string | undefined, min: number, bytes = false): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([kmg]?)$/i.exec(String(v).trim());
  const n = m && (!m[2] || bytes) ? Number(m[1]) * 1024 ** ' kmg'.indexOf((m[2] || ' ').toLowerCase()) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`${flag} ${v}: must be a whole number${bytes ? ' of bytes (k, m, g: KiB, MiB, GiB)' : ''} >= ${min}`);
  }
  return n;
}

/**
 * criu's default: no --port is port 0, an ephemeral port the kernel picks (criu/util.c
 * setup_tcp_server() then logs "Using %u port"); we print it on the ready line.
 */
export const CRIU_DEFAULT_PORT = 0;
/** criu's default without --address: INADDR_ANY (criu/util.c get_sockaddr_in()). */
export const CRIU_DEFAULT_ADDRESS = '0.0.0.0';

export async function pageServer(flags: PageServerFlags): Promise<number> {
  if (!flags.lazyPages) {
    throw new UsageError(
      "page-server needs --lazy-pages: faultline's page server only serves lazy restores (the pages of a checkpoint to `lazy-pages --page-server`); to receive a dump (`criu dump --page-server`), run criu page-server",
    );
  }
  const port = flags.port === undefined ? CRIU_DEFAULT_PORT : Number(flags.port);
  if (!/^\d+$/.test(flags.port ?? '0') || port > 65535) throw new UsageError(`--port ${flags.port}: not a port number (0-65535)`);
  const bounds = {
    maxConnections: parseBound('--max-connections', flags.maxConnections, 1),
    maxOutstandingRequests: parseBound('--max-outstanding-requests', flags.maxOutstandingRequests, 1),
    maxUnsentBytes: parseBound('--max-unsent-bytes', flags.maxUnsentBytes, 1, true),
    idleTimeoutMs: parseBound('--idle-timeout-ms', flags.idleTimeoutMs, 0),
  };
  const statusFd = parseStatusFd(flags.statusFd);
  const format = parseLogFormat(flags.logFormat);
  const workDir = workDirOf(flags);
  const pidfile = pidfilePath(flags.pidfile, workDir);
  const t = criuTls(flags, workDir);
  if (flags.daemon && !isDaemonChild()) return daemonize('the page server', resolveLogFile(flags.logFile, workDir), statusFd);
  const log = makeLogger({ verbosity: flags.verbosity, logFile: flags.logFile, workDir, format, truncate: !isDaemonChild() });

  let sessionOver: () => void = () => undefined;
  const over = new Promise<'session'>((resolve) => (sessionOver = () => resolve('session')));
  let server: PageServer;
  let bound: { address: string; port: number };
  try {
    server = new PageServer({
      imagesDir: flags.imagesDir,
      address: flags.address ?? CRIU_DEFAULT_ADDRESS,
      port,
      ...(t ? { tls: { key: t.key, cert: t.cert, ca: t.ca, crl: t.crl, peerName: t.peerName, requestCert: true, rejectUnauthorized: true } } : {}),
      log: (level, msg) => log[level](msg),
      traceRequests: log.isLevelEnabled('debug'),
      ...bounds,
      onAllClosed: () => {
        if (!flags.keepServing) sessionOver();
      },
    });
    bound = await server.listen();
  } catch (e) {
    // With -o the reason belongs in the log too (tools read the log); on stderr one line is enough.
    if (flags.logFile !== undefined) log.error((e as Error).message);
    throw Object.assign(new Error((e as Error).message), { code: (e as { code?: string }).code ?? 'EPAGESERVER' });
  }

  process.stderr.write(`faultline page-server: listening on ${formatPeer(bound.address, bound.port)}\n`);
  try {
    writePidfile(pidfile);
  } catch (e) {
    await server.close();
    throw Object.assign(new Error(`--pidfile ${flags.pidfile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`), { code: 'EPIDFILE' });
  }
  signalReady(readinessFd(statusFd), (e) => log.warn(`--status-fd ${statusFd}: ${e.message}`));

  const end = await Promise.race([
    over,
    new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    }),
  ]);
  await server.close();
  const s = server.stats;
  const bounded = [s.overLimit && `${s.overLimit} over --max-connections`, s.throttled && `${s.throttled} throttled`, s.dropped && `${s.dropped} dropped`].filter(Boolean);
  const what = `${s.connections} connection(s), ${s.gets} GETs, ${s.pages} pages, ${s.refused} refused${bounded.length ? `, ${bounded.join(', ')}` : ''}`;
  if (flags.displayStats) process.stdout.write(`page server: ${what}\n`);
  if (end !== 'session') {
    log.info(`page server: ${end}: stopped after ${what}`);
    return 0;
  }
  // As criu's page server: the session's result is the exit status.
  if (server.problems.length > 0) {
    log.error(`page server: the restore session ended badly: ${server.problems[0]}`);
    process.stderr.write(`faultline: error: ${server.problems[0]}${server.problems.length > 1 ? ` (and ${server.problems.length - 1} more, see the log)` : ''}\n`);
    return 1;
  }
  log.info(`page server: session over after ${what}`);
  return 0;
}
