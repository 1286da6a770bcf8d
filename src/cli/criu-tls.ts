// criu --tls as criu/tls.c sets it up, for both ends of a page-server connection:
// - files: --tls-cacert, --tls-cacrl, --tls-cert, --tls-key, defaulting to criu's /etc/pki paths;
//   relative paths are taken in the work dir (criu reads them after chdir(work_dir));
// - trust: the --tls-cacert file only; without it the system's CAs plus criu's default CA file
//   when it exists (criu: gnutls system trust, then the default file, which may be absent);
// - revocation: --tls-cacrl must be readable when given; criu's default CRL is used when present;
// - certificates are mutual: the server requires one from the client;
// - names: each side checks the peer certificate's name against its own --address (the server's
//   listen address, the client's server address) unless --tls-no-cn-verify, and only when an
//   address was given (criu passes a NULL hostname then). Names are matched as Node's
//   tls.checkServerIdentity does: subjectAltName entries, the CN only for a certificate with no DNS
//   names; an IP address must be an IP entry.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as tlsTypes from 'node:tls';
import { UsageError } from './usage-error';

/** node:tls, loaded only where TLS is used (~10 ms of start-up otherwise). */
const tls = (): typeof tlsTypes => require('node:tls') as typeof tlsTypes;

export const CRIU_TLS_CACERT = '/etc/pki/CA/cacert.pem';
export const CRIU_TLS_CACRL = '/etc/pki/CA/cacrl.pem';
export const CRIU_TLS_CERT = '/etc/pki/criu/cert.pem';
export const CRIU_TLS_KEY = '/etc/pki/criu/private/key.pem';

export interface CriuTlsFlags {
  tls?: boolean;
  tlsCacert?: string;
  tlsCacrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsNoCnVerify?: boolean;
  address?: string;
}

export interface CriuTls {
  key: Buffer;
  cert: Buffer;
  ca: Array<string | Buffer>;
  crl?: Buffer;
  /** The name the peer's certificate must carry, or undefined for no name check. */
  peerName?: string;
}

function read(file: string, flag: string, workDir: string): Buffer {
  const full = path.resolve(workDir, file);
  try {
    return fs.readFileSync(full);
  } catch (e) {
    throw new UsageError(`${flag} ${file}: cannot read ${full}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function readable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** The TLS material for --tls, or undefined without it. Throws UsageError naming the flag and file. */
export function criuTls(flags: CriuTlsFlags, workDir: string): CriuTls | undefined {
  if (!flags.tls) {
    const stray = (['tlsCacert', 'tlsCacrl', 'tlsCert', 'tlsKey', 'tlsNoCnVerify'] as const).find((k) => flags[k] !== undefined);
    // criu takes these without --tls and then talks in clear: say so rather than do it silently.
    if (stray) throw new UsageError(`--${stray.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} given without --tls: the connection would not be encrypted`);
    return undefined;
  }
  let ca: Array<string | Buffer>;
  if (flags.tlsCacert !== undefined) {
    const pem = read(flags.tlsCacert, '--tls-cacert', workDir);
    if (!/-----BEGIN CERTIFICATE-----/.test(pem.toString('latin1'))) throw new UsageError(`--tls-cacert ${flags.tlsCacert}: no PEM certificate in it`);
    ca = [pem];
  } else {
    ca = [...tls().rootCertificates, ...(readable(CRIU_TLS_CACERT) ? [fs.readFileSync(CRIU_TLS_CACERT)] : [])];
  }
  let crl: Buffer | undefined;
  if (flags.tlsCacrl !== undefined) crl = read(flags.tlsCacrl, '--tls-cacrl', workDir);
  else if (readable(CRIU_TLS_CACRL)) crl = fs.readFileSync(CRIU_TLS_CACRL);
  const out: CriuTls = {
    key: read(flags.tlsKey ?? CRIU_TLS_KEY, '--tls-key', workDir),
    cert: read(flags.tlsCert ?? CRIU_TLS_CERT, '--tls-cert', workDir),
    ca,
    ...(crl ? { crl } : {}),
    ...(!flags.tlsNoCnVerify && flags.address ? { peerName: flags.address } : {}),
  };
  try {
    // Fails here, naming the flags, rather than at the first connection.
    tls().createSecureContext({ key: out.key, cert: out.cert, ca: out.ca, ...(out.crl ? { crl: out.crl } : {}) });
  } catch (e) {
    throw new UsageError(`--tls: the certificate/key/CA/CRL files do not load: ${(e as Error).message}`);
  }
  return out;
}

/** Why `cert` does not carry `name`, or undefined when it does. */
export function peerNameMismatch(name: string, cert: tlsTypes.PeerCertificate): string | undefined {
  const err = tls().checkServerIdentity(name, cert);
  return err ? err.message.replace(/\s*\n\s*/g, '; ') : undefined;
}

/** Options for the client side (faultline lazy-pages --page-server --tls). */
export function clientTlsOptions(t: CriuTls): tlsTypes.ConnectionOptions {
  return {
    key: t.key,
    cert: t.cert,
    ca: t.ca,
    ...(t.crl ? { crl: t.crl } : {}),
    checkServerIdentity: (_host, cert) => {
      if (t.peerName === undefined) return undefined;
      const why = peerNameMismatch(t.peerName, cert);
      return why ? new Error(`the server's certificate does not name --address ${t.peerName}: ${why}`) : undefined;
    },
  };
}
