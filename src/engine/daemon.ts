// The lazy-pages daemon: the main thread's owner of sockets, the epoll set, the process tree and
// completion. Data flows one way: socket → epoll → ring → worker → ioctl; workers report back on a
// MessagePort only what changes the tree (loaded, complete, gone, forked, fatal).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { PAGE_SIZE } from '../address';
import { readInventory, readPstree, type PstreeEntry } from '../images';
import { native } from '../native';
import type { Tuning } from '../protocol/tuning';
import type { WorkerMessage, WorkerResult } from '../protocol/worker-messages';
import { FailStop, HandoverProtocolError } from './errors';
import type { HandoverEvent } from './handover';
import { Listener, lockWorkDir, uffdInitialized } from './listener';
import { pushPages, pushRestoreFinished } from '../protocol/ring-records';
import { ownCpuMs, summarize, type RestoreSummary } from './summary';
import { closeOrphanUffd, type Guardian, type HeldProcess } from './guardian';
import { ProcessTree } from './tree';
import type { PageServerClient, PageRequest, RemoteOptions } from '../source/remote-client';
import type { Progress } from '../protocol/progress';
import { Engine } from './engine';

export interface DaemonOptions {
  imagesDir: string;
  workDir: string;
  /** --socket-group: lazy-pages.socket 0660 with this gid, whose members may hand over. */
  socketGid?: number;
  workers: number;
  tuning?: Partial<Tuning>;
  ringCapacity?: number;
  log: Logger;
  /** Write the first-fault order of every process here when the restore completes. */
  recordFaults?: string;
  /** Fill the pages listed in this trace first, in its order. */
  prefetch?: string;
  /** Page contents come from a page server (remote lazy restore). */
  remote?: RemoteOptions;
  /** The background fill's nice value (default: the daemon's own). */
  fillNice?: number;
  /** Holds copies of the uffds and fail-stops the tree if this process dies (engine/guardian.ts). */
  guardian?: Guardian;
  /**
   * `--resume`: the processes a dead daemon's guardian kept (Guardian.resume), served from the
   * images again from the start (pages already in place answer EEXIST); no restorer is waited for.
   */
  resume?: HeldProcess[];
  /**
   * `faultline serve`: this restore joins a running engine (its workers, rings and fill), instead of
   * starting one of its own.
   */
  engine?: Engine;
}

/** CLOCK_MONOTONIC at this process's start (performance.now() counts from it). */
const PROCESS_START_NS = native.monotonicNs() - performance.now() * 1e6;

/**
 * Tests only: how long a completed process's uffd stays open (and its events read) before the main
 * thread closes it, so that a test can fork in that window (engine.test.ts, "a child forked after
 * its parent was restored").
 */
const TEST_CLOSE_DELAY_MS = Number(process.env.FAULTLINE_TEST_CLOSE_DELAY_MS ?? 0);
/**
 * Test hook: the background fill starts this long after the restore finished (faults are served
 * meanwhile), so that a kill test lands while pages are missing however fast the machine fills
 * (criu-guardian.test.ts; a loaded 2-vCPU machine filled 288 MiB before the test's kill ran).
 */
const TEST_FILL_DELAY_MS = Number(process.env.FAULTLINE_TEST_FILL_DELAY_MS ?? 0);

export class LazyPagesDaemon {
  private readonly pstree: PstreeEntry[];
  private readonly tree: ProcessTree;
  private readonly engine: Engine;
  /** This restore's number in the engine (0 for a stand-alone daemon's own engine). */
  private session = 0;
  /** Whether the engine is this daemon's alone (stand-alone): it ends with this restore. */
  private readonly ownEngine: boolean;
  /** Absent when resuming: the restorer is long gone. */
  private listener: Listener | undefined;
  private readonly workDirLock: number;
  private readonly log: Logger;
  private restoreFinished = false;
  private firstHandoverNs = 0;
  /** This process's CPU when the first process arrived: what comes after is the restore's own. */
  private cpuAtHandoverMs = 0;
  private finishedNs = 0;
  private lastCompleteNs = 0;
  private lazyPages = 0;
  private stopping = false;
  private resolveDone!: (s: RestoreSummary) => void;
  private rejectDone!: (e: Error) => void;
  /** Settles when every process is restored (or gone), or with the reason for a fail-stop. */
  readonly done: Promise<RestoreSummary>;
  /** Resolves once every worker runs its loop (and, remote, the page server answered): ready to serve. */
  readonly ready: Promise<void>;
  private atReady = { fds: 0, rssKiB: 0 };
  private readonly closeDelayed = new Set<number>();
  private readonly atStart: { fds: number; rssKiB: number };
  private readonly remote: PageServerClient | null = null;

  /** Reads inventory and pstree and listens: the caller may announce readiness once this returns. */
  constructor(private readonly opts: DaemonOptions) {
    this.log = opts.log;
    this.atStart = resourceSnapshot();
    readInventory(opts.imagesDir);
    this.pstree = readPstree(opts.imagesDir);
    const lock = lockWorkDir(opts.workDir);
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined); // observed by the caller; avoid an unhandled rejection warning
    this.tree = new ProcessTree();
    this.workDirLock = lock;
    const request = { imagesDir: opts.imagesDir, pids: this.pstree.map((t) => t.pid), recordFaults: !!opts.recordFaults, prefetchFile: opts.prefetch, remote: !!opts.remote };
    this.ownEngine = !opts.engine;
    let engineReady: Promise<void>;
    if (opts.engine) {
      this.engine = opts.engine;
      engineReady = opts.engine.open(this, request).then((id) => {
        this.session = id;
      });
    } else {
      this.engine = new Engine({
        workers: opts.workers,
        ringCapacity: opts.ringCapacity,
        tuning: opts.tuning,
        fillNice: opts.fillNice,
        remote: !!opts.remote,
        maxSessions: 1,
        first: { handler: this, request },
        onWorkerFailed: (why) => this.failStop(why),
        onOrphan: (uffd, parentUffd, poisonedPages) => closeOrphanUffd(uffd, parentUffd, poisonedPages, this.opts.guardian, this.log),
      });
      engineReady = this.engine.ready;
    }
    this.ready = engineReady.then(() => {
      this.atReady = resourceSnapshot();
    });
    if (opts.remote) {
      // Loaded only for a remote restore: it brings node:tls, a cost at every start (docs/startup.md).
      const { PageServerClient: Client } = require('../source/remote-client') as typeof import('../source/remote-client');
      this.remote = new Client(opts.remote, (req, reply) => this.deliverPages(req, reply.vaddr, reply.nrPages, reply.data), (why) => this.failStop(why), this.log);
    }
    if (this.remote) {
      // Remote: ready also means connected to the page server (retried for a bounded time).
      this.ready = Promise.all([this.ready, this.remote.connect()]).then(() => undefined);
      this.ready.catch((e: Error) => this.failStop(e.message));
    }
    if (opts.resume) {
      const held = opts.resume;
      this.ready.then(() => this.adopt(held), () => undefined);
      this.log.info({ processes: held.length, workers: opts.workers }, 'resuming the restore a daemon left unfinished');
      return;
    }
    const listen = () => {
      if (this.stopping) return;
      this.listener = new Listener(opts.workDir, this.pstree.length, {
        onEvent: (e, peer) => this.onHandover(e, peer),
        onError: (e) => this.failStop(e.message),
        onRefused: (pid, why) => this.log.warn({ peerPid: pid }, `refused a connection on lazy-pages.socket: ${why}`),
      }, this.opts.guardian, lock, opts.socketGid);
      this.log.info({ socket: this.listener.socketPath, tasks: this.pstree.length, workers: this.engine.workers }, 'waiting for the restorer');
    };
    // In a shared engine, a restore listens once the workers opened its images: the hand-over then
    // costs no parsing while the restorer waits.
    if (this.ownEngine) listen();
    else this.ready = this.ready.then(listen);
  }

  /**
   * Serves the processes a dead daemon left, as if just handed over and the restore finished: each
   * from its images, every lazy page missing to our eyes (the ones already in place answer EEXIST).
   * The guardian only offers trees whose maps no event changed (native drain: TAINT), so the images
   * still say where every missing page belongs.
   */
  private adopt(held: HeldProcess[]): void {
    if (this.stopping) return;
    this.firstHandoverNs = native.monotonicNs();
    this.cpuAtHandoverMs = ownCpuMs();
    const uffdOf = new Map<number, number>();
    const adopted = [];
    for (const h of held) {
      const parentUffd = h.parent ? uffdOf.get(h.parent) : undefined;
      uffdOf.set(h.id, h.uffd);
      this.opts.guardian?.adopt(h, parentUffd);
      adopted.push(this.tree.add(h.uffd, h.vpid, h.hostPid, this.shardOf(h.vpid)));
    }
    this.opts.guardian?.resumed();
    const stranger = held.find((h) => !this.pstree.some((t) => t.pid === h.vpid));
    if (stranger) return this.failStop(`--resume: the guardian holds pid ${stranger.vpid}, which is not in pstree.img: not the images this restore was started with`);
    for (const p of adopted) {
      this.engine.claim(p.uffd, this.session);
      this.engine.poller.addProcess(p.uffd, p.shard, p.pid, p.hostPid, this.session);
      wakeFaulted(p.uffd);
    }
    this.log.warn({ processes: held.length }, `resumed the restore: ${held.length} processes taken from the guardian`);
    this.onHandover({ type: 'finished' }, 'the guardian');
  }

  /** The shard that parsed this pid's images at start (see WorkerTask.preloadPids). */
  private shardOf(pid: number): number {
    return this.engine.shardOf(this.session, this.pstree.findIndex((t) => t.pid === pid));
  }

  /** Its number in the engine (a session slot). */
  get sessionId(): number {
    return this.session;
  }

  /** The restored processes' pids (host pid namespace), served or finished. */
  pids(): number[] {
    return this.tree.hostPids();
  }

  /** Where the restore stands now (workers publish every few ms); exact only in the summary. */
  progress(): Progress & { processes: number; restoreFinished: boolean } {
    return { ...this.engine.progress(this.session), processes: this.tree.active, restoreFinished: this.restoreFinished };
  }

  get socketPath(): string | undefined {
    return this.listener?.socketPath;
  }

  private onHandover(e: HandoverEvent, peer: string): void {
    if (!this.firstHandoverNs) {
      this.firstHandoverNs = native.monotonicNs();
      this.cpuAtHandoverMs = ownCpuMs();
    }
    switch (e.type) {
      case 'process': {
        const why = !this.pstree.some((t) => t.pid === e.pid)
          ? 'not in pstree.img'
          : this.tree.hasPid(e.pid)
            ? 'handed over twice'
            : !uffdInitialized(e.uffd)
              ? 'handed over with a uffd on which UFFDIO_API was never done (no range of it can be registered)'
              : '';
        // Tracked even when refused, so that the fail-stop below stops this process too. (The
        // guardian already holds its uffd: unixRecv handed it over before it left the socket.)
        const p = this.tree.add(e.uffd, e.pid, e.senderPid, this.shardOf(e.pid));
        if (this.stopping) return this.tree.kill(p);
        if (why) return this.failStop(`${peer}: pid ${e.pid} is ${why}`);
        this.opts.guardian?.vpid(e.uffd, e.pid);
        this.log.debug({ vpid: e.pid, hostPid: e.senderPid, uffd: e.uffd, shard: p.shard }, 'process handed over');
        this.engine.claim(e.uffd, this.session);
        this.engine.poller.addProcess(e.uffd, p.shard, e.pid, e.senderPid, this.session);
        return;
      }
      case 'zombie':
        if (!this.pstree.some((t) => t.pid === e.pid)) return this.failStop(`${peer}: zombie ${e.pid} is not in pstree.img`);
        this.tree.zombies++;
        return;
      case 'finished':
        if (this.stopping) return;
        this.restoreFinished = true;
        this.finishedNs = native.monotonicNs();
        this.opts.guardian?.finished();
        this.log.info('restore finished: filling in the background');
        if (TEST_FILL_DELAY_MS > 0) {
          setTimeout(() => {
            if (!this.stopping) this.engine.poller.broadcast((ring) => pushRestoreFinished(ring, this.session));
          }, TEST_FILL_DELAY_MS).unref();
        } else this.engine.poller.broadcast((ring) => pushRestoreFinished(ring, this.session));
        this.checkDone();
        return;
    }
  }

  onWorkerMessage(m: WorkerMessage): void {
    if (this.stopping && m.type !== 'fatal') return;
    switch (m.type) {
      case 'loaded': {
        const p = this.tree.get(m.uffd);
        if (p) {
          p.lazyPages = m.lazyPages;
          p.state = 'restoring';
        }
        this.lazyPages += m.lazyPages;
        return;
      }
      case 'complete':
      case 'gone': {
        if (m.type === 'complete' && TEST_CLOSE_DELAY_MS > 0 && !this.closeDelayed.has(m.uffd)) {
          this.closeDelayed.add(m.uffd);
          setTimeout(() => this.onWorkerMessage(m), TEST_CLOSE_DELAY_MS);
          return;
        }
        this.closeDelayed.delete(m.uffd);
        const p = this.tree.release(m.uffd, m.type);
        if (p) this.engine.poller.unwatch(m.uffd, p.shard);
        this.engine.forget(m.uffd);
        if (p) this.remote?.forget(p);
        this.opts.guardian?.release(m.uffd);
        native.closeFd(m.uffd);
        this.lastCompleteNs = native.monotonicNs();
        if (m.type === 'gone') this.log.info({ vpid: m.pid, reason: m.reason }, 'process gone before completion');
        else this.log.debug({ vpid: m.pid, hostPid: p?.hostPid, ...m.counters }, 'process restored');
        this.checkDone();
        return;
      }
      case 'forked': {
        const parent = this.tree.get(m.parentUffd);
        const shard = parent?.shard ?? 0;
        this.tree.add(m.uffd, m.pid, 0, shard).state = 'restoring';
        this.engine.claim(m.uffd, this.session);
        this.engine.poller.watch(m.uffd, shard);
        return;
      }
      case 'fatal':
        this.failStop(m.message);
        return;
      default:
        return;
      case 'get': {
        const p = this.tree.get(m.uffd);
        if (p) this.remote?.request({ shard: p.shard, uffd: m.uffd, owner: p, tag: m.tag, pid: m.pid, vaddr: m.vaddr, pages: m.pages, urgent: m.urgent });
        return;
      }
    }
  }

  /** A page-server reply into the owning worker's arena and ring; false if the arena is full. */
  private deliverPages(req: PageRequest, vaddr: number, pages: number, data: Buffer): boolean {
    const { shard, uffd, tag } = req;
    // Its process was released (exited, or complete after a fork took the pages): drop the data, as
    // CRIU does; the uffd number may already name a forked child that never asked for it.
    if (this.tree.get(uffd) !== req.owner) return true;
    const first = this.engine.arenas[shard].put(data, pages);
    if (first < 0) return false;
    const ring = this.engine.poller.rings[shard];
    if (!pushPages(ring, uffd, tag, pages, first, vaddr)) {
      throw new Error(`ring of worker ${shard} is full`);
    }
    ring.notify();
    return true;
  }

  private checkDone(): void {
    if (this.stopping || !this.restoreFinished || this.tree.active > 0) return;
    this.stopping = true;
    void this.finish();
  }

  private async finish(): Promise<void> {
    // Every process is complete: nothing is missing that a dying daemon could leave to zeros.
    this.letGuardianGo('done');
    const results = (await this.engine.endSession(this.session, false)) ?? [];
    await this.remote?.close();
    await this.teardown();
    const atEnd = resourceSnapshot();
    if (this.opts.recordFaults) writeTrace(this.opts.recordFaults, results);
    const end = this.lastCompleteNs || native.monotonicNs();
    const finished = this.tree.finished;
    const firstFault = Math.min(...results.map((r) => r.firstFaultNs || Infinity));
    const summary = summarize(results, {
      ...(Number.isFinite(firstFault)
        ? {
            handoverToFirstFaultMs: this.firstHandoverNs ? (firstFault - this.firstHandoverNs) / 1e6 : undefined,
            startToFirstFaultMs: (firstFault - PROCESS_START_NS) / 1e6,
          }
        : {}),
      ok: true,
      processes: finished.length,
      zombies: this.tree.zombies,
      exitedEarly: finished.filter((p) => p.state === 'gone').length,
      lazyPages: this.lazyPages,
      timeToRestoredMs: this.firstHandoverNs ? (end - this.firstHandoverNs) / 1e6 : 0,
      fillAfterFinishedMs: (end - this.finishedNs) / 1e6,
    });
    // Start-up (Node, the workers, the images) is paid once per daemon, and once per engine with
    // `faultline serve`: the restore's own CPU is what came after the first hand-over.
    if (this.firstHandoverNs && this.ownEngine) summary.cpuAfterHandoverMs = Math.round((summary.cpuMs - this.cpuAtHandoverMs) * 10) / 10;
    summary.resources = {
      fdsAtStart: this.atStart.fds,
      fdsAtReady: this.atReady.fds,
      fdsAtEnd: atEnd.fds,
      rssAtReadyKiB: this.atReady.rssKiB,
      rssAtEndKiB: atEnd.rssKiB,
    };
    this.resolveDone(summary);
  }

  /**
   * Last resort for an internal error (an exception nobody caught): SIGKILL every process we were
   * handed, synchronously, before this process exits and its uffds close. A queued SIGKILL keeps a
   * task from running user code again, so none of them can read the zeros the closing uffds leave.
   */
  emergencyStop(): number {
    return this.tree.killAll();
  }

  /**
   * Never let a restored process read zeros where the image has data: kill every process we can
   * name, have the workers poison what is still missing (covers processes without a pid), and only
   * then let go of the uffds.
   */
  failStop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    const killed = this.tree.killAll();
    this.remote?.destroy();
    // An error line, so that tools reading the log (zdtm greps for "Error") see why the restore stopped.
    this.log.error({ killed }, `fail-stop: ${reason}`);
    void (async () => {
      const [, results] = await Promise.all([this.listener?.stop(), this.engine.endSession(this.session, true, 5000)]);
      const settled = results !== null;
      // The workers poisoned what was missing: the guardian may let go. Workers that did not answer
      // leave it to the guardian, which fail-stops the tree again when this process is gone.
      if (settled) this.letGuardianGo('stopped');
      await this.teardown();
      this.rejectDone(new FailStop(reason));
    })();
  }

  /**
   * This restore needs the guardian no more. Its own guardian exits; an engine's, which guards the
   * other restores too, forgets this one's processes.
   */
  private letGuardianGo(how: 'done' | 'stopped'): void {
    const g = this.opts.guardian;
    if (!g) return;
    if (!this.ownEngine) for (const pid of this.tree.hostPids()) g.drop(pid);
    else if (how === 'done') g.done();
    else g.stopped();
  }

  private async teardown(): Promise<void> {
    if (this.listener) this.listener.close();
    else native.closeFd(this.workDirLock);
    for (const uffd of this.tree.uffds()) {
      this.engine.poller.unwatch(uffd, this.tree.get(uffd)!.shard);
      this.engine.forget(uffd);
      this.tree.release(uffd, 'gone');
      native.closeFd(uffd);
    }
    this.tree.closePidfds();
    if (this.ownEngine) await this.engine.close();
  }
}

/**
 * A thread whose fault the dead daemon read but never served waits for a wake that would come only
 * with that page's copy: woken now, it faults again, and this daemon hears it. (UFFDIO_WAKE checks
 * only that the range lies in user space, not that it is mapped.)
 */
function wakeFaulted(uffd: number): void {
  let low = 65536;
  try {
    low = Number(fs.readFileSync('/proc/sys/vm/mmap_min_addr', 'utf8'));
  } catch {
    // the usual default
  }
  low = Math.ceil(Math.max(low, PAGE_SIZE) / PAGE_SIZE) * PAGE_SIZE;
  const TASK_SIZE = 0x7fff_ffff_f000; // x86-64 with 4-level page tables: the top of user space
  try {
    native.uffdWake(uffd, low, TASK_SIZE - low);
  } catch {
    // a kernel that disagrees about the range: the fill reaches that page and wakes it anyway
  }
}

function resourceSnapshot(): { fds: number; rssKiB: number } {
  return { fds: fs.readdirSync('/proc/self/fd').length, rssKiB: Math.round(process.memoryUsage.rss() / 1024) };
}

/** One line per pid; forked children's faults join their pid's list (same images). */
function writeTrace(file: string, results: WorkerResult[]): void {
  const byPid = new Map<number, number[]>();
  for (const t of results.flatMap((r) => r.traces)) byPid.set(t.pid, [...(byPid.get(t.pid) ?? []), ...t.pages]);
  const lines = [...byPid].map(([pid, pages]) => JSON.stringify({ pid, pages: [...new Set(pages)] }));
  fs.writeFileSync(file, lines.join('\n') + '\n');
}

export { FailStop, HandoverProtocolError };
