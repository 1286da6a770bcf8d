// Where is a real CRIU (>= 4) on this machine? Tests, the bench and the zdtm script need the real
// program, never Debian's 3.17 (its `criu` does not start on these kernels; only its `crit` is used).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface CriuFound {
  bin: string;
  version: string;
}

/** Lowest major version faultline is tested against; 3.x cannot restore on these kernels. */
export const CRIU_MIN_MAJOR = 4;

/** ../shared/criu relative to the repository: present on CI, where the real-CRIU tests must run. */
export function sharedCriuDir(root: string): string | undefined {
  const dir = path.resolve(root, '..', 'shared', 'criu');
  return fs.existsSync(path.join(dir, 'build.sh')) ? dir : undefined;
}

function versionOf(bin: string): string | undefined {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) return undefined;
  return /^Version:\s*(\S+)/m.exec(r.stdout)?.[1];
}

function candidates(): string[] {
  const out: string[] = [];
  if (process.env.FAULTLINE_CRIU) out.push(process.env.FAULTLINE_CRIU);
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) out.push(path.join(dir, 'criu'));
  out.push('/usr/local/bin/criu', '/usr/local/sbin/criu', '/usr/sbin/criu');
  return [...new Set(out)].filter((p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  });
}

let cached: { found?: CriuFound; why: string } | undefined;

/** The first criu >= 4 ($FAULTLINE_CRIU, then PATH), or why there is none. */
export function findCriu(): { found?: CriuFound; why: string } {
  if (cached) return cached;
  const seen: string[] = [];
  for (const bin of candidates()) {
    const version = versionOf(bin);
    seen.push(`${bin} ${version ?? '(no version)'}`);
    if (version && Number(version.split('.')[0]) >= CRIU_MIN_MAJOR) {
      cached = { found: { bin, version }, why: '' };
      return cached;
    }
  }
  const why = seen.length
    ? `no criu >= ${CRIU_MIN_MAJOR} (found: ${seen.join(', ')}); run scripts/setup-test-deps.sh`
    : `criu >= ${CRIU_MIN_MAJOR} is not installed; run scripts/setup-test-deps.sh (builds it from ../shared/criu when present)`;
  cached = { why };
  return cached;
}
