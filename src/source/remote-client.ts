// The restoring side of remote lazy restore, on the main thread: connections to the page server,
// GET requests from the workers, replies matched in order and handed to the owning worker through
// its arena and ring (socket → main → ring → worker → UFFDIO_COPY). Faults never wait behind bulk
// fill: with two lanes (a faultline server) faults have their own connection; with one (a CRIU
// server serves exactly one) fault requests go ahead of fill requests not yet sent, and at most
// one fill request is on the wire at a time.
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { Logger } from 'pino';
import { ReplyParser, encodeClose, encodeGet, formatPeer, looksLikeTls, type GetReply } from '../protocol/page-server-wire';

export interface RemoteOptions {
  address: string;
  port: number;
  /** 2: a second connection for faults (faultline's page server); 1: CRIU's single connection. */
  lanes: 1 | 2;
  /** Mutual TLS as criu --tls sets it up (src/cli/criu-tls.ts): material, CRL and the server-name check. */
  tls?: tls.ConnectionOptions;
  /** A server that is not up yet is retried this long. */
  connectTimeoutMs: number;
  /** 'fifo': every request sent at once in arrival order on one connection, CRIU's client policy (for comparison). */
  requestOrder?: 'priority' | 'fifo';
  /**
   * A connection with requests outstanding that hears nothing this long is lost (a stopped server, a
   * link that is down without a reset): the tree's faults would otherwise wait forever. 0: never.
   */
  replyTimeoutMs?: number;
  /**
   * A lost connection (closed, reset, or silent past replyTimeoutMs) is dialled again for this long
   * and its unanswered requests are sent again, so a page server restarted, or a link that comes back,
   * does not cost the tree (QEMU's postcopy recovery, for a restore). 0: fail-stop at once, as criu.
   */
  recoverTimeoutMs?: number;
}

export interface PageRequest {
  shard: number;
  uffd: number;
  /**
   * The process the request was made for. A uffd's number is reused once a process that exited is
   * released (a forked child often gets it at once), so a late reply is routed only while the uffd
   * still belongs to this same process, never by its number alone.
   */
  owner: object;
  tag: number;
  pid: number;
  /** dump-time address */
  vaddr: number;
  pages: number;
  urgent: boolean;
}

/** Fill requests allowed on the wire per lane: enough to keep a link busy, few enough that a fault sharing the lane waits little. */
const FILL_IN_FLIGHT = { 1: 1, 2: 4 } as const;

interface Lane {
  name: string;
  socket: net.Socket;
  parser: ReplyParser;
  sent: PageRequest[];
  fillsOnWire: number;
  /** Date.now() when it last heard from the server, or began to wait with nothing outstanding before. */
  heard: number;
  /** Replaced by a new connection (its socket's late events mean nothing). */
  dead: boolean;
  /** Any byte came from the server on it. */
  replied: boolean;
}

export class PageServerClient {
  readonly peer: string;
  private lanes: Lane[] = [];
  private readonly urgentQueue: PageRequest[] = [];
  private readonly fillQueue: PageRequest[] = [];
  private closing = false;
  private failed = false;
  private watchdog: NodeJS.Timeout | undefined;
  /** Lane name → Date.now() of the loss that a reconnect has not yet made good (data heard since). */
  private readonly lostAt = new Map<string, number>();
  requests = 0;
  pagesReceived = 0;
  recoveries = 0;

  constructor(
    private readonly opts: RemoteOptions,
    /** Hands a reply to its worker; false if its arena is full (the client then pauses and retries). */
    private readonly deliver: (req: PageRequest, reply: GetReply) => boolean,
    private readonly onFatal: (reason: string) => void,
    private readonly log: Logger,
  ) {
    this.peer = formatPeer(opts.address, opts.port);
  }

  async connect(): Promise<void> {
    // Named for error lines: with one lane there is just "the" connection.
    const names = this.opts.lanes === 1 ? ['page-server'] : ['urgent', 'fill'];
    for (const name of names) this.lanes.push(await this.open(name, this.opts.connectTimeoutMs));
    const timeout = this.opts.replyTimeoutMs ?? 0;
    if (timeout > 0) {
      this.watchdog = setInterval(() => this.checkSilence(timeout), Math.max(50, Math.min(1000, timeout / 4)));
      this.watchdog.unref();
    }
  }

  /** A lane whose requests have waited past the reply timeout without a byte from the server is lost. */
  private checkSilence(timeout: number): void {
    const now = Date.now();
    for (const lane of this.lanes) {
      // Replies held back by a full arena are ours to take, not the server's to send.
      if (lane.dead || !lane.sent.length || this.pendingReplies.length || now - lane.heard <= timeout) continue;
      this.lost(lane, `sent nothing for ${now - lane.heard} ms with ${lane.sent.length} requests outstanding on the ${lane.name} connection (stopped, or the link is down)`);
    }
  }

  private async open(name: string, timeoutMs: number): Promise<Lane> {
    const deadline = Date.now() + timeoutMs;
    let warned = false;
    for (;;) {
      try {
        const socket = await this.dial();
        return this.attach(name, socket);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        // A reset before the TCP connection was up is a listener going away or coming back (a page
        // server restarted on its port: seen once in remote-recovery.test.ts), not a refusal of ours.
        const resetEarly = code === 'ECONNRESET' && (e as { beforeConnect?: boolean }).beforeConnect === true;
        const retryable = code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ETIMEDOUT' || resetEarly;
        if (!retryable || Date.now() > deadline) {
          throw new Error(`page server ${this.peer}: ${(e as Error).message}${retryable ? ` (still not up after ${timeoutMs} ms)` : ''}`);
        }
        if (!warned) this.log.warn(`page server ${this.peer} is not up yet (${code}): retrying for ${timeoutMs} ms`);
        warned = true;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private dial(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const t = this.opts.tls;
      const s = t
        ? tls.connect({ ...t, host: this.opts.address, port: this.opts.port })
        : net.connect({ host: this.opts.address, port: this.opts.port });
      const ok = t ? 'secureConnect' : 'connect';
      let connected = false;
      s.once('connect', () => (connected = true));
      s.once(ok, () => {
        s.removeListener('error', fail);
        resolve(s);
      });
      // Over an open TCP connection, a handshake that fails is most often a server without --tls.
      const fail = (e: Error) => reject(t && connected ? Object.assign(new Error(`TLS handshake failed (${e.message}): is the page server started with --tls?`), { code: (e as NodeJS.ErrnoException).code }) : Object.assign(e, { beforeConnect: !connected }));
      s.once('error', fail);
    });
  }

  private attach(name: string, socket: net.Socket): Lane {
    socket.setNoDelay(true);
    const lane: Lane = { name, socket, parser: new ReplyParser(this.peer), sent: [], fillsOnWire: 0, heard: Date.now(), dead: false, replied: false };
    socket.on('data', (chunk: Buffer) => this.onData(lane, chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      // A TLS server drops a plain client's first request without a word (no alert): by a reset, or
      // by a FIN that the next write meets as EPIPE ("ended by the other party"). Say so.
      const hint = (e.code === 'ECONNRESET' || e.code === 'EPIPE') ? this.tlsHint(lane) : '';
      this.lost(lane, `${name} connection: ${e.message}${hint}`);
    });
    socket.on('close', () => {
      if (this.closing || lane.dead) return;
      // One wording whatever was in flight, naming the server as every client-side error does; the
      // parser's account of what was left unanswered (its own "page-server peer …" line) follows.
      let left = '';
      try {
        lane.parser.end();
      } catch (e) {
        left = ` (${(e as Error).message.replace(/^page-server peer \S+: /, '')})`;
      }
      this.lost(lane, `closed the ${name} connection before the restore completed${left}${this.tlsHint(lane)}`);
    });
    return lane;
  }

  private tlsHint(lane: Lane): string {
    return !this.opts.tls && !lane.replied ? ' before any reply (does the page server run with --tls? then lazy-pages needs --tls too)' : '';
  }

  /** A connection is gone (or silent): dial again within --recover-timeout-ms, or fail-stop. */
  private lost(lane: Lane, reason: string): void {
    if (this.failed || this.closing || lane.dead) return;
    const recover = this.opts.recoverTimeoutMs ?? 0;
    const since = this.lostAt.get(lane.name) ?? Date.now();
    if (recover <= 0 || Date.now() - since >= recover) {
      return this.fail(`page server ${this.peer}: ${reason}${recover > 0 ? `; not back within --recover-timeout-ms ${recover}` : ''}`);
    }
    this.lostAt.set(lane.name, since);
    lane.dead = true;
    lane.socket.destroy();
    const unanswered = lane.sent.splice(0);
    const left = recover - (Date.now() - since);
    this.log.warn(`page server ${this.peer}: ${reason}; reconnecting for up to ${left} ms (faults wait meanwhile)`);
    this.open(lane.name, left).then(
      (fresh) => {
        if (this.failed || this.closing) return fresh.socket.destroy();
        this.lanes[this.lanes.indexOf(lane)] = fresh;
        this.recoveries++;
        this.log.warn(`page server ${this.peer}: the ${lane.name} connection is back after ${Date.now() - since} ms; ${unanswered.length} unanswered requests sent again`);
        for (const req of unanswered) this.send(fresh, req);
        this.flush();
      },
      (e: Error) => this.fail(`${e.message.replace(/ \(still not up after \d+ ms\)$/, '')}; lost (${reason}) and not back within --recover-timeout-ms ${recover}`),
    );
  }

  request(req: PageRequest): void {
    if (this.failed || this.closing) return;
    this.requests++;
    if (this.opts.requestOrder === 'fifo' && !this.lanes[0].dead) return this.send(this.lanes[0], req);
    (req.urgent ? this.urgentQueue : this.fillQueue).push(req);
    this.flush();
  }

  private flush(): void {
    if (this.opts.requestOrder !== 'fifo') return this.pump();
    // fifo: what waited for a reconnect goes out in arrival order... near enough: faults first
    const lane = this.lanes[0];
    if (lane.dead) return;
    for (const q of [this.urgentQueue, this.fillQueue]) while (q.length) this.send(lane, q.shift()!);
  }

  /** Its process was released: requests not yet on the wire are not worth the link. */
  forget(owner: object): void {
    for (const q of [this.urgentQueue, this.fillQueue]) {
      const keep = q.filter((r) => r.owner !== owner);
      q.splice(0, q.length, ...keep);
    }
  }

  private pump(): void {
    const urgentLane = this.lanes[0];
    const fillLane = this.lanes[this.lanes.length - 1];
    // A lane being dialled again keeps its requests queued until it is back.
    while (this.urgentQueue.length && !urgentLane.dead) this.send(urgentLane, this.urgentQueue.shift()!);
    while (this.fillQueue.length && !fillLane.dead && fillLane.fillsOnWire < FILL_IN_FLIGHT[this.opts.lanes]) this.send(fillLane, this.fillQueue.shift()!);
  }

  private send(lane: Lane, req: PageRequest): void {
    // the silence clock starts when there is something to answer
    if (!lane.sent.length) lane.heard = Date.now();
    lane.sent.push(req);
    if (!req.urgent) lane.fillsOnWire++;
    lane.parser.expectGet(req.pid, req.vaddr, req.pages);
    lane.socket.write(encodeGet(req.pid, req.vaddr, req.pages));
  }

  private pendingReplies: { lane: Lane; req: PageRequest; reply: GetReply }[] = [];

  private onData(lane: Lane, chunk: Buffer): void {
    if (lane.dead) return;
    if (!this.opts.tls && !lane.replied && looksLikeTls(chunk)) {
      return this.fail(`page server ${this.peer}: answered with a TLS record: it runs with --tls; start lazy-pages with --tls too`);
    }
    lane.replied = true;
    lane.heard = Date.now();
    this.lostAt.delete(lane.name);
    lane.parser.push(chunk);
    try {
      for (let r = lane.parser.next(); r; r = lane.parser.next()) {
        if (r.kind !== 'pages') continue;
        const req = lane.sent.shift()!;
        if (!req.urgent) lane.fillsOnWire--;
        this.pagesReceived += r.nrPages;
        // The reply's data may be a view into the parser's chunks: copy if it has to wait.
        if (this.pendingReplies.length || !this.deliver(req, r)) this.pendingReplies.push({ lane, req, reply: { ...r, data: Buffer.from(r.data) } });
      }
    } catch (e) {
      this.fail((e as Error).message);
      return;
    }
    if (this.pendingReplies.length) {
      lane.socket.pause();
      this.retryPending();
    }
    this.flush();
  }

  /** A worker's arena was full: try again shortly, in order, then resume reading. */
  private retryPending(): void {
    setTimeout(() => {
      while (this.pendingReplies.length && this.deliver(this.pendingReplies[0].req, this.pendingReplies[0].reply)) this.pendingReplies.shift();
      if (this.pendingReplies.length) return this.retryPending();
      for (const l of this.lanes) l.socket.resume();
    }, 1).unref();
  }

  private fail(reason: string): void {
    if (this.failed || this.closing) return;
    this.failed = true;
    clearInterval(this.watchdog);
    for (const l of this.lanes) l.socket.destroy();
    this.onFatal(reason);
  }

  /** PS_IOV_CLOSE on every connection, wait for each 4-byte status, then hang up (criu-lazy-pages.md §4.2). */
  async close(): Promise<void> {
    if (this.failed) return;
    this.closing = true;
    clearInterval(this.watchdog);
    await Promise.all(
      this.lanes.map(
        (lane) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
              this.log.warn(`page server ${this.peer}: no answer to CLOSE on the ${lane.name} connection`);
              lane.socket.destroy();
              resolve();
            }, 5000);
            lane.parser.expectClose();
            lane.socket.removeAllListeners('data');
            lane.socket.on('data', (chunk: Buffer) => {
              lane.parser.push(chunk);
              try {
                const r = lane.parser.next();
                if (r?.kind === 'close') {
                  if (r.status !== 0) this.log.warn(`page server ${this.peer}: CLOSE answered status ${r.status}`);
                  clearTimeout(timer);
                  lane.socket.end();
                  resolve();
                }
              } catch (e) {
                this.log.warn((e as Error).message);
                clearTimeout(timer);
                lane.socket.destroy();
                resolve();
              }
            });
            lane.socket.on('error', () => undefined);
            lane.socket.write(encodeClose());
          }),
      ),
    );
  }

  destroy(): void {
    this.closing = true;
    clearInterval(this.watchdog);
    for (const l of this.lanes) l.socket.destroy();
  }
}
