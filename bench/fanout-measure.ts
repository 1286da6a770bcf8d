// What bench/fanout.ts measures of the processes it starts: each per-restore process (a stand-alone
// `faultline lazy-pages`, an engine client — faultline-engine-client or `lazy-pages --engine` —, a
// `criu lazy-pages`) runs under a bash
// wrapper that, when it exits, records the wall clock ($EPOCHREALTIME), the CPU of everything it
// waited for (`times`: getrusage(RUSAGE_CHILDREN), every thread, nothing lost after a last poll) and,
// through GNU time's wait4, the process's peak RSS (ru_maxrss = its VmHWM). The engine (`faultline
// serve`) lives on between restores, so it is read from /proc: utime+stime before and after, VmHWM
// after resetting it (clear_refs 5) before the restores start. A sampler adds, every 10-100 ms, the
// anonymous RSS of all daemons at the same instant (file-backed pages of the mmapped page images are
// in every daemon's RSS but are one page cache).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, collect, type Exit } from '../src/target/run';
import { descendants } from '../src/criu/workload';

const GNU_TIME = '/usr/bin/time';

/** The engine's per-restore client: native/bin/faultline-engine-client, or `faultline lazy-pages --engine`. */
export type EngineClient = 'c' | 'node';
export const CLIENT_NAME: Record<EngineClient, string> = { c: '`faultline-engine-client`', node: '`lazy-pages --engine`' };
/** GNU time (not a shell keyword or busybox): -f %M is the child's ru_maxrss in KiB. */
export const HAS_GNU_TIME = (() => {
  const r = spawnSync(GNU_TIME, ['-f', 'maxrss %M', 'true'], { encoding: 'utf8' });
  return r.status === 0 && /maxrss \d+/.test(r.stderr);
})();
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

// fd 3 (--status-fd) passes through bash and GNU time unchanged.
const WITH_TIME = 'f=$1; shift; /usr/bin/time -f "maxrss %M" -o "$f.rss" "$@"; rc=$?; end=$EPOCHREALTIME; { echo "end $end"; times; } > "$f"; exit $rc';
const WITHOUT_TIME = 'f=$1; shift; "$@"; rc=$?; end=$EPOCHREALTIME; { echo "end $end"; times; } > "$f"; exit $rc';

export function timedWrap(file: string): string[] {
  return ['bash', '-c', HAS_GNU_TIME ? WITH_TIME : WITHOUT_TIME, 'fl-fanout-timed', file];
}

export interface Timed {
  /** wall clock at exit, ms since the epoch */
  endMs: number;
  cpuMs: number;
  /** GNU time's %M; absent without it */
  maxRssKiB?: number;
}

export function readTimed(file: string): Timed | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  const end = /^end (\d+)[.,](\d+)/m.exec(text);
  // `times`: line 1 the shell's own user/sys, line 2 its children's, as "0m1.234s 0m0.056s"
  const lines = text.split('\n').filter((l) => /^\d+m[\d.,]+s \d+m[\d.,]+s/.test(l));
  if (!end || lines.length < 2) return undefined;
  const secs = (s: string) => {
    const m = /^(\d+)m([\d.,]+)s$/.exec(s)!;
    return Number(m[1]) * 60 + Number(m[2].replace(',', '.'));
  };
  const [u, s] = lines[1].split(' ');
  let maxRssKiB: number | undefined;
  try {
    const m = /maxrss (\d+)/.exec(fs.readFileSync(`${file}.rss`, 'utf8'));
    if (m) maxRssKiB = Number(m[1]);
  } catch {
    /* no GNU time */
  }
  return { endMs: Number(end[1]) * 1000 + Number(`0.${end[2]}`) * 1000, cpuMs: (secs(u) + secs(s)) * 1000, ...(maxRssKiB !== undefined ? { maxRssKiB } : {}) };
}

/** Wall clock in ms (sub-ms), on the clock of $EPOCHREALTIME and the workload's CLOCK_REALTIME stamps. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

function statusField(text: string, key: string): number | undefined {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

export function procMemory(pid: number): { hwmKiB: number; anonKiB: number } | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return { hwmKiB: statusField(s, 'VmHWM') ?? 0, anonKiB: statusField(s, 'RssAnon') ?? 0 };
  } catch {
    return undefined;
  }
}

/** utime + stime (+ cutime + cstime with children) of one process, ms. */
export function procCpuMs(pid: number, children = false): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields 14-17 of stat(5), counted from the state (field 3) at index 0
    const ticks = Number(f[11]) + Number(f[12]) + (children ? Number(f[13]) + Number(f[14]) : 0);
    return (ticks * 1000) / CLK_TCK;
  } catch {
    return 0;
  }
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Samples the daemons' anonymous RSS (sum at one instant) and their VmHWM (fallback without GNU time). */
export class ProcSampler {
  private readonly tracked = new Map<number, { wrapper: number; pid?: number; hwmKiB: number }>();
  private timer: NodeJS.Timeout;
  peakAnonSumKiB = 0;
  enginePeakAnonKiB = 0;

  /**
   * Samples every 10 ms at first, the interval growing by half each time up to `everyMs`: a restore
   * of a quick fan-out can end within 100 ms (a fresh KVM machine ended N=2 before the first sample
   * of a fixed 100 ms, and measured no RSS), while 32 daemons sampled every 10 ms all along would
   * take a CPU share from what is measured.
   */
  constructor(private readonly enginePid?: number, everyMs = 100) {
    let interval = 10;
    const tick = () => {
      this.sample();
      interval = Math.min(everyMs, interval * 1.5);
      this.timer = setTimeout(tick, interval);
    };
    this.timer = setTimeout(tick, interval);
  }

  /** The restore's wrapper (bash); the daemon is the node, criu or faultline-engine-client process below it. */
  track(key: number, wrapperPid: number | undefined): void {
    if (wrapperPid) this.tracked.set(key, { wrapper: wrapperPid, hwmKiB: 0 });
  }

  hwmKiB(key: number): number {
    return this.tracked.get(key)?.hwmKiB ?? 0;
  }

  /**
   * One sample now. Also called as each daemon says it is ready: under load this process (nice 0)
   * can lose the CPUs to the daemons (nice -10) for a whole short restore, and a timer alone then saw
   * none of them (a quick N = 2 fan-out in a loaded test run reported no anonymous RSS).
   */
  sample(): void {
    let sum = 0;
    for (const t of this.tracked.values()) {
      // comm is cut at 15 characters: faultline-engine-client is "faultline-engin"
      t.pid ??= descendants(t.wrapper).find((p) => /^(node|criu|faultline-engin)$/.test(comm(p)));
      if (!t.pid) continue;
      const m = procMemory(t.pid);
      if (!m) continue;
      t.hwmKiB = Math.max(t.hwmKiB, m.hwmKiB);
      sum += m.anonKiB;
    }
    this.peakAnonSumKiB = Math.max(this.peakAnonSumKiB, sum);
    if (this.enginePid) this.enginePeakAnonKiB = Math.max(this.enginePeakAnonKiB, procMemory(this.enginePid)?.anonKiB ?? 0);
  }

  stop(): void {
    this.sample();
    clearTimeout(this.timer);
  }
}

export interface EngineProcess {
  child: ChildProcess;
  pid: number;
  socket: string;
  exit: Promise<Exit>;
  /** the serve process (all threads, reaped children) and its live descendants (the guardian) */
  cpuMs(): number;
  hwmKiB(): number;
  /** VmHWM := current RSS (clear_refs 5); false where the kernel refuses */
  resetPeak(): boolean;
  stop(): Promise<Exit>;
}

/** `faultline serve --socket DIR/engine.sock`, resolved once it listens. */
export async function startEngine(dir: string, maxRestores: number, extra: string[] = []): Promise<EngineProcess> {
  fs.mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'engine.sock');
  const child = spawn(process.execPath, [...(process.env.FAULTLINE_BENCH_ENGINE_NODE_ARGS ?? '').split(' ').filter(Boolean), CLI, 'serve', '--socket', socket, '--max-restores', String(maxRestores), ...extra, ...(process.env.FAULTLINE_BENCH_ENGINE_ARGS ?? '').split(' ').filter(Boolean)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = collect(child);
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`faultline serve: not listening after 30 s: ${seen.trim()}`)), 30_000);
    child.stderr!.on('data', (d: Buffer | string) => {
      seen += String(d);
      if (/listening on/.test(seen)) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exit.then((e) => {
      clearTimeout(timer);
      reject(new Error(`faultline serve exited (${e.code ?? e.signal}) before listening: ${e.stderr.trim()}`));
    });
  });
  const pid = child.pid!;
  return {
    child,
    pid,
    socket,
    exit,
    cpuMs: () => procCpuMs(pid, true) + descendants(pid).reduce((a, p) => a + procCpuMs(p), 0),
    hwmKiB: () => procMemory(pid)?.hwmKiB ?? 0,
    resetPeak: () => {
      try {
        fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
        return true;
      } catch {
        return false;
      }
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
      const e = await exit;
      clearTimeout(t);
      return e;
    },
  };
}

/** SIGKILLs what is left below the wrappers this bench started that still run (a run that failed or timed out). */
export function killLeftovers(wrappers: (ChildProcess | undefined)[]): void {
  for (const w of wrappers) {
    if (!w?.pid || w.exitCode !== null || w.signalCode !== null) continue;
    for (const p of [...descendants(w.pid).reverse(), w.pid]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

/** One restore of a fan-out run. Times are ms from the run's first start. */
export interface RestoreRow {
  i: number;
  ok: boolean;
  error?: string;
  /** first start → this restore's daemon (or client) exited */
  endMs: number;
  /** faultline's summary: first hand-over → last process complete */
  timeToRestoredMs?: number;
  /** the per-restore process: daemon, or client of the engine */
  cpuMs: number;
  /** the restored tree's own CPU (restore target: it and every process it forked), when measured */
  treeCpuMs?: number;
  maxRssKiB: number;
  verifiedPages: number;
  mismatches: number;
}

export interface FirstTouch {
  what: string;
  count: number;
  p50: number;
  p99: number;
  max: number;
}

export interface FanoutRun {
  /** 'target': faultline's restore target on a generated checkpoint; 'criu': real `criu restore --lazy-pages` of a CRIU dump */
  group: 'target' | 'criu';
  setup: 'engine' | 'standalone' | 'criu';
  n: number;
  ok: boolean;
  errors: string[];
  /** first start → the last daemon (or engine client) exited: every restore complete */
  allRestoredMs: number;
  /** real CRIU: first start → the last process verified all of its memory */
  allVerifiedMs?: number;
  /** faultline summaries, per restore: first hand-over → restored */
  timeToRestoredMs?: { p50: number; max: number };
  firstTouchUs: FirstTouch;
  /** the engine: the serve process; otherwise the sum over the N daemons */
  daemonCpuMs: number;
  daemonPeakRssMiB: number;
  /** the largest sum of the daemons' RssAnon seen at one instant (sampled every 100 ms) */
  daemonPeakAnonMiB: number;
  /** the engine's N clients (sums), not part of the daemon figures */
  clients?: { cpuMs: number; peakRssMiB: number };
  /** engine set-ups: restores served before the measured ones (0 with --cold-engine) */
  warmup?: number;
  /** the restored trees' own CPU, summed (restore target runs); what no daemon can take away */
  treesCpuMs?: number;
  verifiedPages: number;
  mismatches: number;
  restores: RestoreRow[];
}

export function round(v: number, digits = 1): number {
  const k = 10 ** digits;
  return Math.round(v * k) / k;
}

export function pct(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** The figures of a run from its rows; daemon CPU and RSS are the caller's (they differ for the engine). */
export function reduceRows(rows: RestoreRow[]): Pick<FanoutRun, 'ok' | 'errors' | 'allRestoredMs' | 'timeToRestoredMs' | 'treesCpuMs' | 'verifiedPages' | 'mismatches'> {
  const ttr = rows.map((r) => r.timeToRestoredMs).filter((x): x is number => typeof x === 'number');
  return {
    ok: rows.every((r) => r.ok),
    errors: rows.filter((r) => !r.ok).map((r) => `restore ${r.i}: ${r.error}`),
    allRestoredMs: round(Math.max(...rows.map((r) => r.endMs))),
    ...(ttr.length ? { timeToRestoredMs: { p50: round(pct(ttr, 50)), max: round(Math.max(...ttr)) } } : {}),
    ...(rows.every((r) => r.treeCpuMs !== undefined) ? { treesCpuMs: round(rows.reduce((a, r) => a + r.treeCpuMs!, 0)) } : {}),
    verifiedPages: rows.reduce((a, r) => a + r.verifiedPages, 0),
    mismatches: rows.reduce((a, r) => a + r.mismatches, 0),
  };
}

/**
 * The engine set-up of a fan-out run: a fresh `faultline serve`, warmed by one unmeasured restore
 * (`warm`) unless cold, its peak RSS reset, and its CPU so far (what the N restores add is theirs).
 */
async function prepareEngine(root: string, n: number, cold: boolean, warm: (e: EngineProcess) => Promise<{ ok: boolean; error?: string }>, log: (l: string) => void): Promise<{ engine: EngineProcess; warmup: number; cpu0: number }> {
  const engine = await startEngine(path.join(root, 'engine'), Math.max(32, n));
  let warmup = 0;
  if (!cold) {
    const w = await warm(engine);
    if (!w.ok) throw new Error(`the engine's warm-up restore failed: ${w.error}`);
    warmup = 1;
  }
  if (!engine.resetPeak()) log("  (cannot reset the engine's VmHWM through clear_refs: its peak RSS includes its warm-up)");
  return { engine, warmup, cpu0: engine.cpuMs() };
}

export interface RoundOptions<R extends RestoreRow> {
  root: string;
  n: number;
  /** served by one `faultline serve` (else each restore starts its own daemon) */
  engine: boolean;
  coldEngine: boolean;
  log: (line: string) => void;
  /** the engine's unmeasured warm-up restore */
  warm: (engine: EngineProcess) => Promise<{ ok: boolean; error?: string }>;
  /** restore i of the round, all started at t0; a daemon it starts goes into wrappers */
  restore: (i: number, t0: number, engine: EngineProcess | undefined, sampler: ProcSampler, wrappers: ChildProcess[]) => Promise<R>;
}

/**
 * One round of a fan-out run, the same for the restore target and real CRIU: the engine (if any)
 * set up, N restores at once, the daemons' totals taken before the engine stops, and whatever a
 * failed restore left running killed.
 */
export async function fanoutRound<R extends RestoreRow>(o: RoundOptions<R>): Promise<{ rows: R[]; totals: ReturnType<typeof daemonTotals>; warmup?: number }> {
  let engine: EngineProcess | undefined;
  const wrappers: ChildProcess[] = [];
  try {
    let cpu0 = 0;
    let warmup: number | undefined;
    if (o.engine) ({ engine, warmup, cpu0 } = await prepareEngine(o.root, o.n, o.coldEngine, o.warm, o.log));
    const sampler = new ProcSampler(engine?.pid);
    const t0 = nowMs();
    const rows = await Promise.all(Array.from({ length: o.n }, (_, i) => o.restore(i, t0, engine, sampler, wrappers)));
    sampler.stop();
    return { rows, totals: daemonTotals(engine, cpu0, rows, sampler), ...(warmup !== undefined ? { warmup } : {}) };
  } finally {
    killLeftovers(wrappers);
    const e = await engine?.stop();
    if (e && e.code !== 0) o.log(`  faultline serve exited ${e.code ?? e.signal}: ${e.stderr.trim().split('\n').pop()}`);
  }
}

/** The daemons' side of a fan-out run: the engine's process, or the sum over stand-alone daemons; the engine's clients apart. */
function daemonTotals(engine: EngineProcess | undefined, cpu0: number, rows: RestoreRow[], sampler: ProcSampler): { daemonCpuMs: number; daemonPeakRssMiB: number; daemonPeakAnonMiB: number; clients?: { cpuMs: number; peakRssMiB: number } } {
  const sum = (f: (r: RestoreRow) => number) => rows.reduce((a, r) => a + f(r), 0);
  return {
    daemonCpuMs: round(engine ? engine.cpuMs() - cpu0 : sum((r) => r.cpuMs)),
    daemonPeakRssMiB: round((engine ? engine.hwmKiB() : sum((r) => r.maxRssKiB)) / 1024),
    daemonPeakAnonMiB: round((engine ? sampler.enginePeakAnonKiB : sampler.peakAnonSumKiB) / 1024),
    ...(engine ? { clients: { cpuMs: round(sum((r) => r.cpuMs)), peakRssMiB: round(sum((r) => r.maxRssKiB) / 1024) } } : {}),
  };
}
