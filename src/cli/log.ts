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
//
// The text format is written directly (TextLogger: the same lines pino's records gave, without
// loading pino, a measurable part of every start (docs/DESIGN.md, "Start-up"), and without a JSON
// round trip per line);
// pino is loaded for --log-format json only.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
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
  const levelIndex = Math.max(0, Math.min(o.verbosity, LEVELS.length - 1));
  const fd = openLogFd(o);
  if ((o.format ?? 'text') === 'text') return new TextLogger(LEVEL_VALUES[levelIndex]!, fd) as unknown as Logger;
  const { pino, destination } = require('pino') as typeof import('pino');
  return pino(
    {
      level: LEVELS[levelIndex],
      base: { pid: process.pid },
      name: 'faultline',
      // pino's base already has `pid` (ours); a record's own pid (a restored process's, from an
      // older call site) must not make a second key of that name.
      formatters: { log: (o) => ('pid' in o ? renamePid(o) : o) },
    },
    destination({ fd, sync: true }),
  );
}

/** pino's numeric levels, in LEVELS' order. */
const LEVEL_VALUES = [60, 50, 40, 30, 20];
const LEVEL_OF: Record<string, number> = { fatal: 60, error: 50, warn: 40, info: 30, debug: 20, trace: 10 };

type LogArgs = [msg: string] | [obj: Record<string, unknown> | Error, msg?: string];

/**
 * The subset of pino's Logger that faultline calls (fatal..trace with (msg) or (fields, msg),
 * isLevelEnabled, level), writing criu-like text lines synchronously.
 */
export class TextLogger {
  constructor(
    private readonly threshold: number,
    private readonly fd: number,
  ) {}

  get level(): string {
    return Object.keys(LEVEL_OF).find((k) => LEVEL_OF[k] === this.threshold) ?? 'info';
  }

  isLevelEnabled(level: string): boolean {
    return (LEVEL_OF[level] ?? Infinity) >= this.threshold;
  }

  fatal(...a: LogArgs): void {
    this.write(60, a);
  }
  error(...a: LogArgs): void {
    this.write(50, a);
  }
  warn(...a: LogArgs): void {
    this.write(40, a);
  }
  info(...a: LogArgs): void {
    this.write(30, a);
  }
  debug(...a: LogArgs): void {
    this.write(20, a);
  }
  trace(...a: LogArgs): void {
    this.write(10, a);
  }

  private write(level: number, [first, second]: LogArgs): void {
    if (level < this.threshold) return;
    let fields: Record<string, unknown> = {};
    let msg = '';
    if (typeof first === 'string') msg = first;
    else if (first instanceof Error) {
      // as pino: the error under `err`, its message as the message
      fields = { err: first };
      msg = second ?? first.message;
    } else {
      fields = first ?? {};
      msg = second ?? '';
    }
    writeAll(this.fd, textLine(level, msg, 'pid' in fields ? renamePid(fields) : fields));
  }
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

/** One text line for one pino JSON record (--log-format json's records, read back as text). */
export function formatTextLine(json: string, ts = timestamp()): string {
  const r = JSON.parse(json) as Record<string, unknown>;
  const fields = Object.entries(r)
    .filter(([k]) => !SKIP.has(k))
    .map(([k, v]) => `${k}=${fieldValue(v)}`)
    .join(' ');
  return joinLine(ts, r.pid, Number(r.level), String(r.msg ?? ''), fields);
}

/** The line pino's record of (fields, msg) makes through formatTextLine, built without JSON. */
function textLine(level: number, msg: string, fields: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const k of Object.keys(fields)) {
    if (SKIP.has(k)) continue;
    const v = jsonValue(fields[k]);
    if (v !== undefined) parts.push(`${k}=${fieldValue(v)}`);
  }
  return joinLine(timestamp(), process.pid, level, msg, parts.join(' '));
}

/** A field's value as it comes back from JSON (what pino's record held), or undefined: no key. */
function jsonValue(v: unknown): unknown {
  if (v === undefined || typeof v === 'function' || typeof v === 'symbol') return undefined;
  if (typeof v === 'number') return Number.isFinite(v) ? v : null;
  if (v instanceof Error) return { type: v.constructor.name, message: v.message };
  if (v !== null && typeof v === 'object') return JSON.parse(JSON.stringify(v)) as unknown;
  return v;
}

function joinLine(ts: string, pid: unknown, level: number, rawMsg: string, fields: string): string {
  const msg = rawMsg.replace(/\s*\n\s*/g, '; ');
  return `${ts} ${pid}: ${levelWord(level)}${msg}${fields ? (msg ? ' ' : '') + fields : ''}\n`;
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
