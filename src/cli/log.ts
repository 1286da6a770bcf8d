// Logs: pino, JSON lines (pipe through pino-pretty to read). CRIU's verbosity levels map onto pino's:
// 0 fatal, 1 error, 2 warn (default, as CRIU), 3 info, 4+ debug.
import * as fs from 'node:fs';
import pino, { type Logger } from 'pino';

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug'];

export function makeLogger(verbosity: number, logFile?: string): Logger {
  const level = LEVELS[Math.max(0, Math.min(verbosity, LEVELS.length - 1))];
  const dest = logFile ? pino.destination({ dest: logFile, sync: true, append: true, mkdir: true }) : pino.destination({ fd: 2, sync: true });
  return pino({ level, base: { pid: process.pid }, name: 'faultline' }, dest);
}

/** CRIU scripts pass -v, -vv…, or -v4: turn those into --verbosity=N before commander parses. */
export function normalizeVerbosity(argv: string[]): string[] {
  return argv.map((a) => {
    const repeat = /^-(v+)$/.exec(a);
    if (repeat) return `--verbosity=${2 + repeat[1].length}`;
    const level = /^-v(\d+)$/.exec(a);
    if (level) return `--verbosity=${level[1]}`;
    return a;
  });
}

export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // not ours to worry about
  }
}
