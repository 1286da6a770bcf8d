// Logs. pino does the levels and the structure; the default output is text in criu's shape, because
// the tools around criu read its logs as text: zdtm greps every log for "Error" and "Warn", people
// read them with less. One line per record:
//
//   (00.004211) 4242: Error (faultline): fail-stop: page server 10.0.0.1:27000 closed ... killed=[5,6]
//   (00.000812) 4242: Warn  (faultline): page server 10.0.0.1:27000 is not up yet (ECONNREFUSED): ...
//   (00.001107) 4242: waiting for the restorer socket=/imgs/lazy-pages.socket tasks=3 workers=2
//
// i.e. seconds.microseconds since start, our pid, then criu's level words ("Error (file:line): ",
// "Warn  (file:line): ", nothing for info and debug) with "faultline" in place of the source line,
// the message, and the record's fields as key=value. `--log-format json` gives pino's JSON lines.
//
// CRIU's verbosity levels map onto pino's: 0 fatal, 1 error, 2 warn (default, as CRIU), 3 info, 4+ debug.
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino, { type Logger } from 'pino';
import { UsageError } from './usage-error';

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug'];

export type LogFormat = 'text' | 'json';

export interface LogOptions {
  verbosity: number;
  /** As given to -o: '-' is stdout (criu dups STDOUT for it); relative paths are taken in workDir. */
  logFile?: string;
  workDir: string;
  format?: LogFormat;
  /**
   * Start a new file (criu opens its log with O_TRUNC). A daemon's child appends instead: its
   * parent already created the file and points the child's stdout and stderr at it.
   */
  truncate?: boolean;
}

export function parseLogFormat(v: string | undefined): LogFormat {
  if (v === undefined || v === 'text' || v === 'json') return v ?? 'text';
  throw new UsageError(`--log-format must be 'text' or 'json', got '${v}'`);
}

/** Where -o points: criu chdir()s to the work dir before it opens the log, so relative is relative to that. */
export function resolveLogFile(logFile: string | undefined, workDir: string): string | undefined {
  if (logFile === undefined || logFile === '-') return logFile;
  return path.resolve(workDir, logFile);
}

function openLogFd(o: LogOptions): number {
  const file = resolveLogFile(o.logFile, o.workDir);
  if (file === undefined) return 2;
  if (file === '-') return 1;
  try {
    return fs.openSync(file, o.truncate === false ? 'a' : 'w', 0o600);
  } catch (e) {
    throw new UsageError(`-o ${o.logFile}: cannot open the log file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export function makeLogger(o: LogOptions): Logger {
  const level = LEVELS[Math.max(0, Math.min(o.verbosity, LEVELS.length - 1))];
  const fd = openLogFd(o);
  const format = o.format ?? 'text';
  const dest = format === 'json' ? pino.destination({ fd, sync: true }) : textDestination(fd);
  return pino(
    {
      level,
      base: { pid: process.pid },
      name: 'faultline',
      // pino's base already has `pid` (ours); a record's own pid (a restored process's, from an
      // older call site) must not make a second key of that name.
      formatters: { log: (o) => ('pid' in o ? renamePid(o) : o) },
    },
    dest,
  );
}

function renamePid(o: Record<string, unknown>): Record<string, unknown> {
  const { pid, ...rest } = o;
  return { vpid: pid, ...rest };
}

const START = process.hrtime.bigint();
const SKIP = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'v']);

/** criu's print_ts(): "(SS.UUUUUU) " since start. */
function timestamp(): string {
  const us = (process.hrtime.bigint() - START) / 1000n;
  const s = us / 1_000_000n;
  return `(${String(s).padStart(2, '0')}.${String(us % 1_000_000n).padStart(6, '0')})`;
}

function levelWord(level: number): string {
  if (level >= 50) return 'Error (faultline): ';
  if (level >= 40) return 'Warn  (faultline): ';
  return '';
}

function fieldValue(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v;
  if (v !== null && typeof v === 'object' && 'message' in v && 'type' in v) return JSON.stringify((v as { message: unknown }).message);
  return JSON.stringify(v) ?? String(v);
}

/** One text line for one pino JSON record; exported for the tests. */
export function formatTextLine(json: string, ts = timestamp()): string {
  const r = JSON.parse(json) as Record<string, unknown>;
  const msg = String(r.msg ?? '').replace(/\s*\n\s*/g, '; ');
  const fields = Object.entries(r)
    .filter(([k]) => !SKIP.has(k))
    .map(([k, v]) => `${k}=${fieldValue(v)}`)
    .join(' ');
  return `${ts} ${r.pid}: ${levelWord(Number(r.level))}${msg}${fields ? (msg ? ' ' : '') + fields : ''}\n`;
}

function textDestination(fd: number): { write(s: string): void } {
  return {
    write(s: string) {
      // pino hands over exactly one record per call.
      writeAll(fd, formatTextLine(s));
    },
  };
}

function writeAll(fd: number, s: string): void {
  const b = Buffer.from(s);
  for (let off = 0; off < b.length; ) {
    try {
      off += fs.writeSync(fd, b, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      return; // a log that cannot be written must not take the restore down with it
    }
  }
}

export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // not ours to worry about
  }
}
