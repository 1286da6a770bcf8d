// `faultline serve`: one long-lived engine (engine/engine.ts: one worker pool, one set of rings, one
// fill shared by all) serves every lazy restore on the host. `faultline lazy-pages --engine SOCKET`
// (or FAULTLINE_ENGINE=SOCKET) asks it to serve one restore on that restore's own work dir socket,
// waits for it, and exits as a stand-alone daemon would, so scripts written for `criu lazy-pages`
// keep working.
//
// Control protocol: a unix stream socket (0600, peers must be root or the engine's uid), one JSON
// object per line each way. A client sends {"op":"restore",…} (RestoreRequest) and reads events:
// "queued", "listening" (the restore's socket is ready: the restorer may start), then "done" with the
// summary, or "failed"/"refused" with one line of error. {"op":"stop","reason":…} on that connection
// fail-stops its restore (the client got SIGTERM); {"op":"status"} answers with every restore.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { LazyPagesDaemon } from '../engine/daemon';
import { Engine } from '../engine/engine';
import { FailStop } from '../engine/errors';
import { Guardian, closeOrphanUffd } from '../engine/guardian';
import { formatSummary, type RestoreSummary } from '../engine/summary';
import { native } from '../native';
import { tuningFromFlags } from '../protocol/tuning';
import { makeLogger, parseLogFormat } from './log';
import { UsageError } from './usage-error';
import { parseMetricsAddress, serveMetrics } from './metrics';
import { maxWorkers, parseNice, positiveInt, raisePriority, seconds } from './lazy-pages';

/** Where `faultline serve` listens, and `lazy-pages --engine` looks, unless told otherwise. */
export const DEFAULT_ENGINE_SOCKET = '/run/faultline/engine.sock';

export interface ServeFlags {
  socket?: string;
  workers?: string;
  maxRestores?: string;
  /** commander's --no-queue */
  queue?: boolean;
  maxMemory?: string;
  shutdownTimeout?: string;
  metrics?: string;
  logFile?: string;
  logFormat?: string;
  verbosity: number;
  /** commander's --no-guardian */
  guardian?: boolean;
  nice?: string;
  fillNice?: string;
}

/** What `lazy-pages --engine` asks for: the stand-alone daemon's flags that mean something here. */
export interface RestoreRequest {
  op: 'restore';
  imagesDir: string;
  workDir: string;
  socketGid?: number;
  faultAround?: number;
  fillChunk?: number;
  recordFaults?: string;
  prefetch?: string;
  /** `--page-server`: the page server and the client's settings (TLS is not carried: refused by the client). */
  pageServer?: Omit<import('../source/remote-client').RemoteOptions, 'tls'>;
  /** `--json`: the 'done' event's stdout is the summary as JSON, else formatSummary's text. */
  json?: boolean;
}

export type EngineEvent =
  | { event: 'queued'; position: number }
  | { event: 'listening'; socket: string; session: number }
  /**
   * `stdout`: exactly what the client prints (the summary's text, or its JSON when the request said
   * `json`), so that a client needs no formatting of its own (native/client/engine-client.c).
   */
  | { event: 'done'; summary: RestoreSummary; stdout: string }
  | { event: 'failed'; error: string }
  | { event: 'refused'; error: string }
  | { event: 'status'; restores: RestoreStatus[]; queued: number; workers: number; maxRestores: number };

export interface RestoreStatus {
  session: number;
  imagesDir: string;
  workDir: string;
  pids: number[];
  state: 'starting' | 'waiting for the restorer' | 'restoring' | 'filling' | 'ending';
  pagesDone: number;
  pages: number;
  faults: number;
  faultsPerSecond: number;
}

interface Running {
  request: RestoreRequest;
  daemon: LazyPagesDaemon;
  session: number;
  state: RestoreStatus['state'];
  /** for faults/s: the last reading */
  last: { atMs: number; faults: number; rate: number };
}

export async function serve(flags: ServeFlags): Promise<number> {
  const socketPath = path.resolve(flags.socket ?? process.env.FAULTLINE_ENGINE ?? DEFAULT_ENGINE_SOCKET);
  // More workers than CPUs, unlike a stand-alone daemon: a worker inside a UFFDIO_COPY that waits on
  // a process's mm (its threads faulting, a holder preempted) holds up every restore queued behind
  // it (measured with bench:fanout: docs/DESIGN.md, "The engine").
  const workers = positiveInt(flags.workers, '--workers') ?? Math.min(maxWorkers(), Math.max(8, 2 * os.availableParallelism()));
  if (workers > maxWorkers()) throw new UsageError(`--workers must be at most ${maxWorkers()} (4 × this machine's CPUs, at least 8), got '${flags.workers}'`);
  const maxRestores = positiveInt(flags.maxRestores ?? '32', '--max-restores')!;
  if (maxRestores > 1024) throw new UsageError(`--max-restores must be at most 1024, got '${flags.maxRestores}'`);
  const maxMemoryMiB = positiveInt(flags.maxMemory, '--max-memory');
  const shutdownMs = seconds(flags.shutdownTimeout ?? '30', '--shutdown-timeout') * 1000;
  const metricsAt = flags.metrics === undefined ? undefined : parseMetricsAddress(flags.metrics);
  const nice = parseNice(flags.nice);
  const fillNice = flags.fillNice === undefined ? undefined : parseNice(flags.fillNice, '--fill-nice');
  const log = makeLogger({ verbosity: flags.verbosity, logFile: flags.logFile, workDir: path.dirname(socketPath), format: parseLogFormat(flags.logFormat), truncate: true });
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  const lock = lockSocket(socketPath);
  // As a stand-alone daemon's: the workers (started below, inheriting it) serve every restore's faults.
  raisePriority(nice, log);

  const running = new Map<number, Running>();
  let nextKey = 0;
  const queue: { request: RestoreRequest; client: Client }[] = [];
  let shuttingDown = false;
  // One guardian for every restore: if the engine dies, it stops every tree it served.
  const guardian =
    flags.guardian === false
      ? undefined
      : Guardian.start((why) => log.warn(`${why}; the engine goes on, but an engine that dies now leaves its trees unguarded`), flags.logFile && flags.logFile !== '-' ? path.resolve(flags.logFile) : undefined);
  const engine = new Engine({
    workers,
    fillNice,
    // Arenas for page-server data in every worker: any restore may be a remote one (untouched
    // SharedArrayBuffer pages cost no memory).
    remote: true,
    maxSessions: maxRestores,
    // A worker that failed outside any restore can no longer be trusted with any of them.
    onWorkerFailed: (why) => {
      for (const r of running.values()) r.daemon.failStop(why);
    },
    onOrphan: (uffd, parentUffd, poisonedPages) => closeOrphanUffd(uffd, parentUffd, poisonedPages, guardian, log),
  });
  await engine.ready;

  const start = (request: RestoreRequest, client: Client) => {
    let daemon: LazyPagesDaemon;
    try {
      daemon = new LazyPagesDaemon({
        imagesDir: request.imagesDir,
        workDir: request.workDir,
        workers,
        log,
        engine,
        guardian,
        socketGid: request.socketGid,
        recordFaults: request.recordFaults,
        prefetch: request.prefetch,
        remote: request.pageServer,
        tuning: tuningFromFlags(request.faultAround, request.fillChunk),
      });
    } catch (e) {
      client.send({ event: 'failed', error: (e as Error).message });
      client.end();
      return next();
    }
    const requestedAtMs = performance.now();
    const r: Running = { request, daemon, session: -1, state: 'starting', last: { atMs: requestedAtMs, faults: 0, rate: 0 } };
    const key = nextKey++;
    running.set(key, r);
    client.onStop = (reason) => daemon.failStop(reason);
    daemon.ready.then(
      () => {
        r.state = 'waiting for the restorer';
        r.session = daemon.sessionId;
        client.send({ event: 'listening', socket: daemon.socketPath ?? '', session: r.session });
        // how long the workers took to open it: the restorer could not connect before this
        const joinMs = Math.round(performance.now() - requestedAtMs);
        log.info({ images: request.imagesDir, work: request.workDir, session: r.session, joinMs }, 'a restore joined the engine');
      },
      () => undefined,
    );
    daemon.done.then(
      (summary) => client.send({ event: 'done', summary, stdout: request.json ? JSON.stringify(summary) + '\n' : formatSummary(summary) + '\n' }),
      (e: Error) => client.send({ event: 'failed', error: e instanceof FailStop ? `${e.message}; the restored processes were stopped` : e.message }),
    ).finally(() => {
      running.delete(key);
      client.end();
      next();
    });
  };
  const memoryFull = () => maxMemoryMiB !== undefined && process.memoryUsage.rss() > maxMemoryMiB * 1024 * 1024;
  /** Starts queued restores while there is room. */
  const next = () => {
    while (queue.length && !shuttingDown && running.size < maxRestores && !memoryFull()) {
      const q = queue.shift()!;
      if (q.client.closed) continue;
      start(q.request, q.client);
    }
    queue.forEach((q, i) => q.client.send({ event: 'queued', position: i + 1 }));
    if (shuttingDown && running.size === 0) finishShutdown();
  };

  const onRequest = (client: Client, m: { op?: string; reason?: string } & Partial<Omit<RestoreRequest, 'op'>>) => {
    if (m.op === 'status') {
      client.send({ event: 'status', restores: [...running.values()].map(status), queued: queue.length, workers, maxRestores });
      return client.end();
    }
    if (m.op === 'stop') {
      const reason = m.reason ?? 'stopped by its client';
      if (client.onStop) return client.onStop(reason);
      // Not started: a queued restore leaves the queue; a stop that came before its request (a
      // signal to the client while it connected) refuses that request. Either way it never starts.
      client.stopped = reason;
      const queued = queue.findIndex((q) => q.client === client);
      if (queued < 0) return;
      queue.splice(queued, 1);
      client.send({ event: 'failed', error: `${reason}; the restore had not started` });
      client.end();
      return next();
    }
    if (m.op !== 'restore' || typeof m.imagesDir !== 'string' || typeof m.workDir !== 'string') {
      client.send({ event: 'refused', error: `not a request of faultline lazy-pages --engine: ${JSON.stringify(m).slice(0, 200)}` });
      return client.end();
    }
    const request = m as RestoreRequest;
    if (client.stopped !== undefined) {
      client.send({ event: 'failed', error: `${client.stopped}; the restore had not started` });
      return client.end();
    }
    if (shuttingDown) {
      client.send({ event: 'refused', error: 'the engine is shutting down' });
      return client.end();
    }
    const full = running.size >= maxRestores ? `it serves ${maxRestores} restores at once (--max-restores)` : memoryFull() ? `it uses more than --max-memory ${maxMemoryMiB} MiB` : '';
    if (full && flags.queue === false) {
      client.send({ event: 'refused', error: `the engine at ${socketPath} is full: ${full}, and it does not queue (--no-queue)` });
      return client.end();
    }
    if (full || queue.length) {
      queue.push({ request, client });
      return next();
    }
    start(request, client);
  };

  const status = (r: Running): RestoreStatus => {
    const p = r.daemon.progress();
    const now = performance.now();
    if (now - r.last.atMs >= 500) {
      r.last = { atMs: now, faults: p.faults, rate: ((p.faults - r.last.faults) * 1000) / (now - r.last.atMs) };
    }
    const state = p.processes === 0 && p.total === 0 ? r.state : p.restoreFinished ? 'filling' : 'restoring';
    return { session: r.session, imagesDir: r.request.imagesDir, workDir: r.request.workDir, pids: r.daemon.pids(), state, pagesDone: p.done, pages: p.total, faults: p.faults, faultsPerSecond: Math.round(r.last.rate) };
  };

  // The control socket: 0600 whatever the umask (native.unixListen), and peers checked by credentials.
  const listenFd = native.unixListen(socketPath, 64);
  const accepter = new native.FdWatcher(listenFd, () => {
    for (;;) {
      const c = native.unixAccept(listenFd);
      if (!c) return;
      const ours = process.geteuid?.() ?? 0;
      if (c.uid !== 0 && c.uid !== ours) {
        native.closeFd(c.fd);
        log.warn({ peerPid: c.pid }, `refused a control connection: its user (uid ${c.uid}) is neither root nor the engine's (uid ${ours})`);
        continue;
      }
      new Client(c.fd, (client, m) => onRequest(client, m), (why) => log.warn({ peerPid: c.pid }, `control connection: ${why}`));
    }
  });

  let metrics: { close(): Promise<void> } | undefined;
  if (metricsAt) {
    const m = await serveMetrics(metricsAt, () => ({
      restores: [...running.values()].filter((r) => r.session >= 0).map((r) => ({ labels: { images_dir: path.resolve(r.request.imagesDir), work_dir: path.resolve(r.request.workDir) }, progress: r.daemon.progress() })),
      active: running.size,
      queued: queue.length,
    }));
    metrics = m;
    process.stderr.write(`faultline serve: metrics on ${m.url}\n`);
  }

  process.stderr.write(`faultline serve: listening on ${socketPath} (${workers} workers, at most ${maxRestores} restores${flags.queue === false ? ', no queue' : ''})\n`);
  log.info({ socket: socketPath, workers, maxRestores }, 'engine ready');

  let resolveEnd!: (code: number) => void;
  const ended = new Promise<number>((r) => (resolveEnd = r));
  let finishing = false;
  const finishShutdown = () => {
    if (finishing) return;
    finishing = true;
    void (async () => {
      guardian?.done();
      await engine.close();
      await metrics?.close();
      fs.rmSync(socketPath, { force: true });
      native.closeFd(lock);
      log.info('engine stopped');
      resolveEnd(0);
    })();
  };
  const shutdown = (sig: string) => {
    if (shuttingDown) return;
    shuttingDown = true;
    accepter.stop();
    native.closeFd(listenFd);
    for (const q of queue.splice(0)) {
      q.client.send({ event: 'refused', error: `the engine received ${sig} before this restore started` });
      q.client.end();
    }
    log.warn(`received ${sig}: ${running.size} restores finish, for up to --shutdown-timeout ${shutdownMs / 1000} s`);
    // Running restores finish; what is still running at the timeout is fail-stopped, never zero-filled.
    setTimeout(() => {
      for (const r of running.values()) r.daemon.failStop(`the engine received ${sig} and its --shutdown-timeout (${shutdownMs / 1000} s) ran out before the restore completed`);
    }, shutdownMs).unref();
    if (running.size === 0) finishShutdown();
  };
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => shutdown(sig));
  return ended;
}

/** One control connection: JSON lines in, JSON lines out. */
class Client {
  closed = false;
  onStop: ((reason: string) => void) | undefined;
  /** the reason of a stop that came before its restore started */
  stopped: string | undefined;
  private readonly socket: net.Socket;
  private buffered = '';

  constructor(fd: number, onMessage: (c: Client, m: Record<string, never>) => void, onError: (why: string) => void) {
    this.socket = new net.Socket({ fd, readable: true, writable: true });
    this.socket.setEncoding('utf8');
    this.socket.on('data', (d: string) => {
      this.buffered += d;
      if (this.buffered.length > 1 << 20) {
        onError('a request line over 1 MiB');
        return this.socket.destroy();
      }
      for (let nl = this.buffered.indexOf('\n'); nl >= 0; nl = this.buffered.indexOf('\n')) {
        const line = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        if (!line.trim()) continue;
        let m;
        try {
          m = JSON.parse(line);
        } catch {
          this.send({ event: 'refused', error: `not JSON: ${line.slice(0, 120)}` });
          return this.end();
        }
        onMessage(this, m);
      }
    });
    this.socket.on('error', (e) => onError(e.message));
    this.socket.on('close', () => (this.closed = true));
  }

  send(e: EngineEvent): void {
    if (!this.closed) this.socket.write(JSON.stringify(e) + '\n');
  }

  end(): void {
    if (!this.closed) this.socket.end();
  }
}

/** One engine per socket path: a second is refused rather than taking the first one's socket. */
function lockSocket(socketPath: string): number {
  try {
    return native.lockFile(`${socketPath}.lock`);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EWOULDBLOCK' || code === 'EAGAIN') throw Object.assign(new Error(`--socket ${socketPath}: another faultline serve listens there`), { code: 'EBUSY' });
    throw Object.assign(new Error(`--socket ${socketPath}: cannot create ${socketPath}.lock: ${code ?? (e as Error).message}`), { code: code ?? 'EIO' });
  }
}


