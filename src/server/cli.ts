// `faultline page-server`: the source side of a remote lazy restore, flag-compatible with
// `criu page-server --lazy-pages` where the flags exist.
import * as fs from 'node:fs';
import { makeLogger, closeQuietly } from '../cli/log';
import { formatPeer } from './protocol';
import { PageServer, type PageServerTlsOptions } from './page-server';

export interface PageServerFlags {
  imagesDir: string;
  address?: string;
  port?: string;
  tls?: boolean;
  tlsCacert?: string;
  tlsCert?: string;
  tlsKey?: string;
  statusFd?: string;
  logFile?: string;
  verbosity: number;
}

// CRIU's --tls defaults (criu/tls.c), so a machine set up for `criu --tls` needs no extra flags.
const CRIU_TLS_CACERT = '/etc/pki/CA/cacert.pem';
const CRIU_TLS_CERT = '/etc/pki/criu/cert.pem';
const CRIU_TLS_KEY = '/etc/pki/criu/private/key.pem';

function fail(msg: string): number {
  process.stderr.write(`faultline: error: ${msg.replace(/\s*\n\s*/g, '; ')}\n`);
  return 1;
}

function readPem(file: string, flag: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read ${flag} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export async function pageServer(flags: PageServerFlags): Promise<number> {
  const port = flags.port === undefined ? 0 : Number(flags.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) return fail(`--port ${flags.port}: not a port number (0-65535)`);
  const statusFd = flags.statusFd === undefined ? -1 : Number(flags.statusFd);
  if (!Number.isInteger(statusFd) || statusFd < -1) return fail(`--status-fd ${flags.statusFd}: not a file descriptor`);
  const log = makeLogger(flags.verbosity, flags.logFile);

  let server: PageServer;
  let bound: { address: string; port: number };
  try {
    let tlsOpts: PageServerTlsOptions | undefined;
    if (flags.tls) {
      const cacert = flags.tlsCacert ?? CRIU_TLS_CACERT;
      tlsOpts = {
        key: readPem(flags.tlsKey ?? CRIU_TLS_KEY, '--tls-key'),
        cert: readPem(flags.tlsCert ?? CRIU_TLS_CERT, '--tls-cert'),
        ca: readPem(cacert, '--tls-cacert'),
        requestCert: true,
        rejectUnauthorized: true,
      };
    }
    server = new PageServer({
      imagesDir: flags.imagesDir,
      address: flags.address ?? '127.0.0.1',
      port,
      ...(tlsOpts ? { tls: tlsOpts } : {}),
      log: (level, msg) => log[level](msg),
    });
    bound = await server.listen();
  } catch (e) {
    return fail((e as Error).message);
  }

  process.stderr.write(`faultline page-server: listening on ${formatPeer(bound.address, bound.port)}\n`);
  if (statusFd >= 0) {
    try {
      fs.writeSync(statusFd, Buffer.from([0]));
    } catch (e) {
      log.warn(`--status-fd ${statusFd}: ${(e as Error).message}`);
    }
    closeQuietly(statusFd);
  }

  const sig = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  await server.close();
  const s = server.stats;
  log.info(`page server: ${sig}: stopped after ${s.connections} connection(s), ${s.gets} GETs, ${s.pages} pages, ${s.refused} refused`);
  return 0;
}
