// The engine: one worker pool, one set of rings and epoll sets, one fill board, shared by every
// restore it serves. A stand-alone `faultline lazy-pages` is an engine with one restore; `faultline
// serve` keeps one running for every restore on the host. Each restore is a session (a slot number,
// reused once it ended): the workers know its images by that number, count its work apart, and stop
// it alone when it fails (worker/loop.ts).
import * as path from 'node:path';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { Poller } from './poller';
import { DEFAULT_RING_CAPACITY } from '../protocol/ring-layout';
import { pushSession, pushStop, pushStopSession } from '../protocol/ring-records';
import { ArenaProducer, createArena } from '../source/arena';
import { createBoards } from '../worker/fill-board';
import { createProgress, readProgress, type Progress } from '../protocol/progress';
import { DEFAULT_TUNING, type Tuning } from '../protocol/tuning';
import type { SessionSpec, WorkerMessage, WorkerResult, WorkerTask } from '../protocol/worker-messages';

/** Per-worker arena for page-server data: 32 MiB, far above the largest request (256 pages). */
const ARENA_PAGES = 8192;

/** What a restore needs the engine to tell it: its workers' messages. */
export interface SessionHandler {
  onWorkerMessage(m: WorkerMessage): void;
}

/** A restore as it joins: which images, which pids (pstree order: they decide the shards). */
export interface SessionRequest {
  imagesDir: string;
  pids: number[];
  recordFaults?: boolean;
  prefetchFile?: string;
  /** Its pages come from a page server (the engine must have arenas: EngineOptions.remote). */
  remote?: boolean;
}

export interface EngineOptions {
  workers: number;
  ringCapacity?: number;
  tuning?: Partial<Tuning>;
  /** The background fill's nice value (default: the daemon's own). */
  fillNice?: number;
  /** Page contents come from page servers: every worker gets an arena for their replies. */
  remote?: boolean;
  /** Restores served at once (session slots). */
  maxSessions: number;
  /** The first restore, whose images the workers open before they report ready (stand-alone). */
  first?: { handler: SessionHandler; request: SessionRequest };
  /** A worker failed outside any restore (its loop threw): every restore must be stopped. */
  onWorkerFailed: (why: string) => void;
  /**
   * A forked child nobody serves, its uffd (read from the FORK event, so the guardian holds a copy
   * too) to be closed: its parent was released complete (poisonedPages null: nothing lazy), or its
   * restore was fail-stopped (its missing pages are poisoned).
   */
  onOrphan: (uffd: number, parentUffd: number, poisonedPages: number | null) => void;
}

interface SessionEntry {
  handler: SessionHandler;
  opened: number;
  resolveOpen: () => void;
  results: WorkerResult[];
  resolveEnd: ((r: WorkerResult[]) => void) | null;
  ending: Promise<WorkerResult[]> | null;
}

export class Engine {
  readonly poller: Poller;
  readonly arenas: ArenaProducer[] = [];
  readonly workers: number;
  readonly maxSessions: number;
  /** Every worker runs its loop. */
  readonly ready: Promise<void>;
  private readonly pool: Piscina;
  private readonly tasks: Promise<WorkerResult>[] = [];
  private readonly ports: MessagePort[] = [];
  private readonly progressSab: SharedArrayBuffer;
  private readonly sessions = new Map<number, SessionEntry>();
  private readonly owner = new Map<number, SessionEntry>();
  private workersReady = 0;
  private resolveReady!: () => void;
  private closed: Promise<void> | null = null;

  constructor(private readonly opts: EngineOptions) {
    this.workers = opts.workers;
    this.maxSessions = opts.maxSessions;
    this.ready = new Promise<void>((resolve) => (this.resolveReady = resolve));
    this.poller = new Poller(opts.workers, opts.ringCapacity ?? DEFAULT_RING_CAPACITY);
    this.pool = new Piscina({
      filename: path.resolve(__dirname, '../worker/loop.js'),
      minThreads: opts.workers,
      maxThreads: opts.workers,
      idleTimeout: Infinity,
      concurrentTasksPerWorker: 1,
    });
    const tuning = { ...DEFAULT_TUNING, ...opts.tuning };
    const boards = createBoards(opts.workers);
    this.progressSab = createProgress(opts.workers, opts.maxSessions);
    const first = opts.first ? this.reserve(opts.first.handler) : undefined;
    for (let shard = 0; shard < opts.workers; shard++) {
      const arena = opts.remote ? createArena(ARENA_PAGES) : undefined;
      if (arena) this.arenas.push(new ArenaProducer(arena));
      const { port1, port2 } = new MessageChannel();
      port1.on('message', (m: WorkerMessage) => this.onWorkerMessage(m));
      port1.unref();
      this.ports.push(port1);
      const task: WorkerTask = {
        shard,
        ring: this.poller.rings[shard].sab,
        rings: this.poller.rings.map((r) => r.sab),
        boards,
        progress: this.progressSab,
        maxSessions: opts.maxSessions,
        epfd: this.poller.epfds[shard],
        watchedEpfd: this.poller.watchedEpfds[shard],
        arena,
        port: port2,
        tuning,
        fillNice: opts.fillNice,
        session: first === undefined ? undefined : this.spec(first, opts.first!.request, shard),
      };
      const t = this.pool.run(task, { transferList: [port2] }) as Promise<WorkerResult>;
      t.catch((e: Error) => opts.onWorkerFailed(`worker ${shard} failed: ${e.message}`));
      this.tasks.push(t);
    }
    if (first !== undefined) this.sessions.get(first)!.opened = opts.workers;
  }

  /** The shard that serves the process at pstree index `i` of restore `session`: restores spread. */
  shardOf(session: number, i: number): number {
    return ((i < 0 ? 0 : i) + session) % this.workers;
  }

  get active(): number {
    return this.sessions.size;
  }

  /** A free session slot, or -1. */
  private freeSlot(): number {
    for (let id = 0; id < this.maxSessions; id++) if (!this.sessions.has(id)) return id;
    return -1;
  }

  private reserve(handler: SessionHandler): number {
    const id = this.freeSlot();
    if (id < 0) throw new Error(`the engine serves ${this.maxSessions} restores at most`);
    // open() sets resolveOpen; the first session's workers opened its images before they were ready
    this.sessions.set(id, { handler, opened: 0, resolveOpen: () => undefined, results: [], resolveEnd: null, ending: null });
    return id;
  }

  private spec(id: number, r: SessionRequest, shard: number): SessionSpec {
    return {
      id,
      imagesDir: path.resolve(r.imagesDir),
      allPids: r.pids,
      preloadPids: r.pids.filter((_, i) => this.shardOf(id, i) === shard),
      warmUpPid: r.pids[0],
      recordFaults: !!r.recordFaults,
      prefetchFile: r.prefetchFile && path.resolve(r.prefetchFile),
      remote: !!r.remote,
    };
  }

  /** A restore joins; resolves with its session number once every worker opened its images. */
  async open(handler: SessionHandler, request: SessionRequest): Promise<number> {
    await this.ready;
    const id = this.reserve(handler);
    const entry = this.sessions.get(id)!;
    const opened = new Promise<void>((resolve) => (entry.resolveOpen = resolve));
    for (let shard = 0; shard < this.workers; shard++) {
      this.ports[shard].postMessage({ session: this.spec(id, request, shard) });
      const ring = this.poller.rings[shard];
      if (!pushSession(ring, id)) throw new Error(`ring of worker ${shard} is full`);
      ring.notify();
    }
    await opened;
    return id;
  }

  /** `uffd` (a handed-over or forked process) belongs to `session`: its workers' messages go there. */
  claim(uffd: number, session: number): void {
    const e = this.sessions.get(session);
    if (e) this.owner.set(uffd, e);
  }

  forget(uffd: number): void {
    this.owner.delete(uffd);
  }

  progress(session: number): Progress {
    return readProgress(this.progressSab, session, this.workers);
  }

  /**
   * Ends a restore in every worker (failStop: its missing pages poisoned first); resolves with each
   * worker's share of it, or null if they did not all answer within `timeoutMs`.
   */
  endSession(session: number, failStop: boolean, timeoutMs = Infinity): Promise<WorkerResult[] | null> {
    const e = this.sessions.get(session);
    if (!e) return Promise.resolve([]);
    if (!e.ending) {
      e.ending = new Promise<WorkerResult[]>((resolve) => (e.resolveEnd = resolve));
      try {
        this.poller.broadcast((ring) => pushStopSession(ring, session, failStop));
      } catch {
        // a full ring: the engine is failing; the caller's timeout answers
      }
    }
    const ending = e.ending.then((r) => {
      if (this.sessions.get(session) === e) this.sessions.delete(session);
      for (const [uffd, owner] of this.owner) if (owner === e) this.owner.delete(uffd);
      return r;
    });
    if (!Number.isFinite(timeoutMs)) return ending;
    return Promise.race([ending, new Promise<null>((r) => setTimeout(() => r(null), timeoutMs).unref())]);
  }

  /** Stops every worker and the pool. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      try {
        this.poller.broadcast((ring) => pushStop(ring, false));
      } catch {
        // a full ring: the pool is destroyed below
      }
      await Promise.race([Promise.allSettled(this.tasks), new Promise((r) => setTimeout(r, 5000).unref())]);
      this.poller.close();
      for (const port of this.ports) port.close();
      await this.pool.destroy();
    })();
    return this.closed;
  }

  private onWorkerMessage(m: WorkerMessage): void {
    switch (m.type) {
      case 'ready':
        if (++this.workersReady === this.workers) this.resolveReady();
        return;
      case 'session-ready': {
        const e = this.sessions.get(m.session);
        if (e && ++e.opened === this.workers) e.resolveOpen();
        return;
      }
      case 'session-result': {
        const e = this.sessions.get(m.session);
        if (!e) return;
        e.results.push(m.result);
        if (e.results.length === this.workers) e.resolveEnd?.(e.results);
        return;
      }
      case 'fatal':
        if (m.session !== undefined) this.sessions.get(m.session)?.handler.onWorkerMessage(m);
        else this.opts.onWorkerFailed(m.message);
        return;
      case 'forked':
        this.owner.get(m.parentUffd)?.handler.onWorkerMessage(m);
        return;
      case 'orphan':
        // Its parent's restore may have ended already: the engine, not a restore, lets it go.
        this.opts.onOrphan(m.uffd, m.parentUffd, m.poisonedPages);
        return;
      default:
        this.owner.get(m.uffd)?.handler.onWorkerMessage(m);
    }
  }
}
