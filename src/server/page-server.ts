// The source side of a remote lazy restore: answers the GETs of `criu lazy-pages --page-server`
// (or faultline's own client) from a local image directory, like `criu page-server --lazy-pages`,
// but for any number of sessions, within bounds on what one client can make it do (connections,
// requests and reply bytes it leaves unanswered, idle time), and without ever serving a page that
// is not lazy.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { firstAbove, hex, PAGE_SIZE } from '../address';
import { ImageError, ProcessImages, readInventory, readPstree, type OpenPagesFile } from '../images';
import {
  CLOSE_REPLY_SIZE,
  encodeGetReply,
  HEADER_SIZE,
  formatPeer,
  looksLikeTls,
  MAX_REQUEST_PAGES,
  PageServerProtocolError,
  RequestParser,
  type Request,
} from '../protocol/page-server-wire';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export type PageServerLog = (level: LogLevel, msg: string) => void;

export interface PageServerTlsOptions {
  key: string | Buffer;
  cert: string | Buffer;
  /** CAs that client certificates must chain to (default: Node's bundled roots). */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Ask for a client certificate (default true: CRIU's TLS is mutual). */
  requestCert?: boolean;
  /** Drop clients whose certificate does not verify (default true). */
  rejectUnauthorized?: boolean;
  /** Certificate revocation lists (PEM) checked with the CA. */
  crl?: string | Buffer | Array<string | Buffer>;
  /** Drop clients whose certificate does not carry this name (criu checks against its --address). */
  peerName?: string;
}

export interface PageServerOptions {
  imagesDir: string;
  /** Default 127.0.0.1 for the library; the CLI listens on every IPv4 address without --address, as criu does. */
  address?: string;
  /** 0 (default) = ephemeral; read the bound port from listen() or .port. */
  port?: number;
  tls?: PageServerTlsOptions;
  log?: PageServerLog;
  /** How pages-*.img files are mapped; default mmap through the native addon, else readFileSync. */
  openPagesFile?: OpenPagesFile;
  /** Cap on pages per reply (default MAX_REQUEST_PAGES); replies may always be shorter than asked. */
  maxReplyPages?: number;
  /** Log every GET and its reply at debug level (-v4), so a stalled session shows where it stopped. */
  traceRequests?: boolean;
  /**
   * Called whenever the last open connection has closed (TCP level, handshakes that failed
   * included): how the CLI knows that a restore session is over.
   */
  onAllClosed?: () => void;
  /**
   * Bounds on what a client can make the server do (each logged with the peer when hit; see
   * docs/notes-page-server-bounds.md). Concurrent TCP connections: one more is closed at once.
   */
  maxConnections?: number;
  /** Requests a connection may have unanswered; beyond, it is not read until it takes its replies. */
  maxOutstandingRequests?: number;
  /** Reply bytes a connection may have asked for and not yet taken; beyond, as above. */
  maxUnsentBytes?: number;
  /**
   * A connection with nothing outstanding that neither it nor another connection from its address
   * used for this long is closed; one whose replies have not moved this long is dropped. 0: never.
   */
  idleTimeoutMs?: number;
}

export interface ConnectionState {
  peer: string;
  /** Requests received and not yet answered to the kernel. */
  outstanding: number;
  /** Reply bytes owed that the kernel has not taken. */
  unsentBytes: number;
  /** Bytes read from the socket so far. */
  bytesRead: number;
  /** false while it is over a bound (not read). */
  reading: boolean;
}

export const DEFAULT_MAX_CONNECTIONS = 512;
export const DEFAULT_MAX_OUTSTANDING_REQUESTS = 1024;
export const DEFAULT_MAX_UNSENT_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60 * 1000;

export interface PageServerStats {
  connections: number;
  active: number;
  gets: number;
  pages: number;
  /** Connections closed because of a malformed or unservable request, or a failed TLS check. */
  refused: number;
  /** Connections that ended with CLOSE answered and the peer's EOF: a restore that finished. */
  closed: number;
  /** Connections closed at once because --max-connections were open. */
  overLimit: number;
  /** Connections that went over --max-outstanding-requests or --max-unsent-bytes (were not read for a while). */
  throttled: number;
  /** Connections closed by --idle-timeout-ms: idle, or replies not taken for that long. */
  dropped: number;
}

/**
 * Size of each socket.write of page data: small enough that a backpressured connection holds at
 * most this much beyond the socket buffer, big enough that per-write overhead does not matter.
 */
const WRITE_CHUNK = 256 * 1024;
/** TLS's largest record payload: one write of at most this is one record. */
const TLS_RECORD_DATA = 16 * 1024;
/** A connection that stops reading after a refusal is not kept around waiting for it. */
const LINGER_MS = 5000;
/** --max-connections refusals are logged at most this often (a flood of connects is one line a second). */
const REFUSAL_LOG_MS = 1000;

interface Served {
  images: ProcessImages;
  /** lazyRanges() as parallel arrays for binary search on the hot path. */
  starts: Float64Array;
  ends: Float64Array;
}

function defaultOpener(): OpenPagesFile {
  try {
    // Loaded lazily so the server still works (reading files into memory) without the addon.
    const { native } = require('../native') as typeof import('../native');
    return (f) => native.mmapFile(f);
  } catch {
    return (f) => fs.readFileSync(f);
  }
}

export class PageServer {
  readonly imagesDir: string;
  private readonly opts: PageServerOptions;
  private readonly log: PageServerLog;
  private readonly processes = new Map<number, Served>();
  private readonly conns = new Set<Connection>();
  private server: net.Server | null = null;
  private bound: { address: string; port: number } | null = null;
  private closing: Promise<void> | null = null;
  readonly stats: PageServerStats = { connections: 0, active: 0, gets: 0, pages: 0, refused: 0, closed: 0, overLimit: 0, throttled: 0, dropped: 0 };
  /** One line per connection that ended badly (refused, reset, failed TLS, dropped by --idle-timeout-ms), in order. */
  readonly problems: string[] = [];
  /** TCP connections open now, TLS handshakes included. */
  private open = 0;
  readonly maxReplyPages: number;
  readonly traceRequests: boolean;
  readonly maxConnections: number;
  readonly maxOutstandingRequests: number;
  readonly maxUnsentBytes: number;
  readonly idleTimeoutMs: number;
  /** Address → Date.now() of the last byte either way on any connection from it (see idleTimeoutMs). */
  private readonly hostActive = new Map<string, number>();
  private sweeper: NodeJS.Timeout | null = null;
  private refusedSinceLog = 0;
  private lastRefusalLog = 0;

  /** Opens every process's images now so a broken image set fails at start-up, not mid-restore. Throws ImageError. */
  constructor(opts: PageServerOptions) {
    this.opts = opts;
    this.imagesDir = path.resolve(opts.imagesDir);
    this.log = opts.log ?? (() => undefined);
    this.traceRequests = !!opts.traceRequests;
    this.maxReplyPages = Math.max(1, Math.min(MAX_REQUEST_PAGES, Math.floor(opts.maxReplyPages ?? MAX_REQUEST_PAGES)));
    const bound = (v: number | undefined, dflt: number, name: string, min: number): number => {
      const n = v ?? dflt;
      if (!Number.isSafeInteger(n) || n < min) throw new RangeError(`page server: ${name} must be an integer >= ${min}, got ${v}`);
      return n;
    };
    this.maxConnections = bound(opts.maxConnections, DEFAULT_MAX_CONNECTIONS, 'maxConnections', 1);
    this.maxOutstandingRequests = bound(opts.maxOutstandingRequests, DEFAULT_MAX_OUTSTANDING_REQUESTS, 'maxOutstandingRequests', 1);
    this.maxUnsentBytes = bound(opts.maxUnsentBytes, DEFAULT_MAX_UNSENT_BYTES, 'maxUnsentBytes', 1);
    this.idleTimeoutMs = bound(opts.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS, 'idleTimeoutMs', 0);
    const openPagesFile = opts.openPagesFile ?? defaultOpener();
    const imgVersion = readInventory(this.imagesDir).imgVersion;
    for (const p of readPstree(this.imagesDir, { imgVersion })) {
      // Zombies are in pstree but have no memory images; a GET for them is an unknown pid.
      if (!fs.existsSync(path.join(this.imagesDir, `mm-${p.pid}.img`))) {
        this.log('debug', `pid ${p.pid}: no mm-${p.pid}.img (zombie?), not served`);
        continue;
      }
      const images = ProcessImages.open(this.imagesDir, p.pid, { openPagesFile });
      const ranges = images.lazyRanges();
      this.processes.set(p.pid, {
        images,
        starts: Float64Array.from(ranges, (r) => r.start),
        ends: Float64Array.from(ranges, (r) => r.end),
      });
    }
  }

  /** pids that have memory images, in pstree order. */
  get pids(): number[] {
    return [...this.processes.keys()];
  }

  get address(): string | undefined {
    return this.bound?.address;
  }

  get port(): number | undefined {
    return this.bound?.port;
  }

  listen(): Promise<{ address: string; port: number }> {
    if (this.server) return Promise.reject(new Error('page server: listen() called twice'));
    const t = this.opts.tls;
    const server = t
      ? tls.createServer({
          key: t.key,
          cert: t.cert,
          ...(t.ca !== undefined ? { ca: t.ca } : {}),
          requestCert: t.requestCert ?? true,
          rejectUnauthorized: t.rejectUnauthorized ?? true,
          ...(t.crl !== undefined ? { crl: t.crl } : {}),
          // TLS 1.3 servers send session tickets after the handshake. CRIU's client treats any
          // readable moment with no request of its own outstanding as a bug (page-xfer.c:1644,
          // BUG_ON(list_empty(&async_reads))) and dies: zdtm maps06, whose restore is slow to its
          // first GET, hit it every time. TLS 1.2 sends nothing after its handshake.
          maxVersion: 'TLSv1.2',
          allowHalfOpen: true,
        })
      : net.createServer({ allowHalfOpen: true });
    this.server = server;
    // Node closes a connection over the limit before anything else sees it (TLS: before the
    // handshake), and tells us with 'drop'.
    server.maxConnections = this.maxConnections;
    server.on('drop', (d?: { remoteAddress?: string; remotePort?: number }) => this.refusedOverLimit(formatPeer(d?.remoteAddress, d?.remotePort)));
    server.on('connection', (raw: net.Socket) => {
      this.open++;
      raw.once('close', () => {
        this.open--;
        // After the TLS socket's own close handlers, which record how the connection ended.
        if (this.open === 0) setImmediate(() => this.open === 0 && this.opts.onAllClosed?.());
      });
    });
    server.on(t ? 'secureConnection' : 'connection', (s: net.Socket) => {
      if (t?.peerName !== undefined) {
        const cert = (s as tls.TLSSocket).getPeerCertificate();
        const err = tls.checkServerIdentity(t.peerName, cert);
        if (err) {
          const msg = `page-server peer ${formatPeer(s.remoteAddress, s.remotePort)}: the client's certificate does not name ${t.peerName} (our --address; --tls-no-cn-verify skips this check): ${oneLine(err.message)}; closing connection`;
          this.stats.refused++;
          this.problems.push(msg);
          this.log('warn', msg);
          s.destroy();
          return;
        }
      }
      this.accept(s);
    });
    if (t) {
      // A failed handshake may have torn the TCP socket down before 'tlsClientError', and with it
      // the peer address: remember it from the raw connection.
      const peers = new WeakMap<net.Socket, string>();
      server.on('connection', (raw: net.Socket) => peers.set(raw, formatPeer(raw.remoteAddress, raw.remotePort)));
      server.on('tlsClientError', (err: Error, s: tls.TLSSocket) => {
        this.stats.refused++;
        const raw = (s as unknown as { _parent?: net.Socket })._parent;
        const peer = (raw && peers.get(raw)) ?? formatPeer(s.remoteAddress, s.remotePort);
        const msg = `page-server peer ${peer}: TLS handshake failed: ${oneLine(err.message)} (a client without --tls?); closing connection`;
        this.problems.push(msg);
        this.log('warn', msg);
      });
    }
    const host = this.opts.address ?? '127.0.0.1';
    const port = this.opts.port ?? 0;
    return new Promise((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException) => {
        this.server = null;
        reject(Object.assign(new Error(`page server: cannot listen on ${formatPeer(host, port)}: ${e.code ?? oneLine(e.message)}`), { code: e.code ?? 'ELISTEN' }));
      };
      server.once('error', onError);
      server.listen({ host, port }, () => {
        server.off('error', onError);
        // Errors after a successful bind (EMFILE on accept, …) must not crash a running restore.
        server.on('error', (e) => this.log('error', `page server: ${oneLine(e.message)}`));
        const a = server.address() as net.AddressInfo;
        this.bound = { address: a.address, port: a.port };
        this.log('info', `page server: listening on ${formatPeer(a.address, a.port)} serving pids ${this.pids.join(',')} from ${this.imagesDir}${t ? ' (TLS)' : ''}`);
        const idle = this.idleTimeoutMs;
        if (idle > 0) {
          this.sweeper = setInterval(() => this.sweep(idle), Math.max(10, Math.min(1000, Math.floor(idle / 4))));
          this.sweeper.unref();
        }
        resolve({ ...this.bound });
      });
    });
  }

  /** Stops listening and drops every connection (in-flight replies are cut). */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    const server = this.server;
    if (this.sweeper) clearInterval(this.sweeper);
    this.closing = new Promise<void>((resolve) => {
      for (const c of this.conns) c.destroy();
      if (!server) return resolve();
      server.close(() => resolve());
    });
    return this.closing;
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const conn = new Connection(this, socket, this.log);
    this.conns.add(conn);
    this.stats.connections++;
    this.stats.active++;
    socket.once('close', () => {
      this.conns.delete(conn);
      this.stats.active--;
    });
  }

  /** @internal */
  lookup(pid: number): Served | undefined {
    return this.processes.get(pid);
  }

  /** Each open connection now: what it is owed, what was read from it, whether it is read. */
  connectionStates(): ConnectionState[] {
    return [...this.conns].map((c) => c.state());
  }

  /** @internal A byte went either way on a connection from `address`. */
  touch(address: string, now: number): void {
    this.hostActive.set(address, now);
  }

  /** @internal */
  lastHostActivity(address: string): number {
    return this.hostActive.get(address) ?? 0;
  }

  private sweep(idle: number): void {
    const now = Date.now();
    for (const c of this.conns) c.checkIdle(now, idle);
    for (const [a, at] of this.hostActive) if (now - at > idle) this.hostActive.delete(a);
  }

  private refusedOverLimit(peer: string): void {
    this.stats.overLimit++;
    this.refusedSinceLog++;
    const now = Date.now();
    if (now - this.lastRefusalLog < REFUSAL_LOG_MS) return;
    const more = this.refusedSinceLog - 1;
    this.refusedSinceLog = 0;
    this.lastRefusalLog = now;
    this.log('warn', `page-server peer ${peer}: refused: ${this.maxConnections} connection${this.maxConnections === 1 ? '' : 's'} open (--max-connections ${this.maxConnections})${more > 0 ? `; ${more} more refused since the last such line` : ''}`);
  }
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ');
}

function findRange(starts: Float64Array, addr: number): number {
  return firstAbove(starts.length, (i) => starts[i]!, addr) - 1;
}

/** A request taken off the wire, or the protocol error that stands in its place in line. */
type Queued = Request | { kind: 'error'; error: unknown };

/**
 * One session: requests are answered strictly in arrival order, as CRIU matches replies FIFO.
 * Requests are taken off the wire while the connection has fewer than maxOutstandingRequests
 * unanswered and less than maxUnsentBytes of replies the kernel has not taken; over either bound the
 * socket is not read (TCP pushes back on the client) until it takes its replies.
 */
class Connection {
  readonly peer: string;
  private readonly address: string;
  private readonly parser: RequestParser;
  /** Taken, not yet being answered. */
  private readonly queue: Queued[] = [];
  /** Reply bytes the requests in `queue` asked for (a reply may come out shorter). */
  private queuedBytes = 0;
  /** A CLOSE or a malformed request is in the queue: nothing after it is taken. */
  private intakeDone = false;
  /** Replies whose last bytes are still in the socket's own buffer (the kernel has not taken them). */
  private inSocket = 0;
  /** Page data of the current reply not yet handed to the socket (backpressure). */
  private pending: { buf: Buffer; pos: number; end: number } | null = null;
  private waitingDrain = false;
  /** TLS: a reply is going out record by record (sendRecords), which paces itself. */
  private sendingRecords = false;
  /** Not read because it is over a bound. */
  private readingPaused = false;
  private warnedRequests = false;
  private warnedBytes = false;
  private closed = false; // CLOSE answered: only the peer's EOF is expected now
  private dead = false;
  private peerEnded = false;
  private ending = false;
  /** We ended it: a refusal or a bound (its close is not a restore that finished). */
  private refused = false;
  /** Some bytes came: a TLS record header now is data, not a handshake. */
  private heard = false;
  /** Date.now() of the last byte either way. */
  private lastActive: number;
  /** Date.now() of the last reply bytes the kernel took, or of when something became owed. */
  private lastProgress: number;
  private readonly wrote = (): void => this.progress();
  private readonly replyOut = (): void => {
    this.inSocket--;
    this.progress();
    if (this.readingPaused) this.run();
  };

  constructor(
    private readonly server: PageServer,
    private readonly socket: net.Socket,
    private readonly log: PageServerLog,
  ) {
    this.peer = formatPeer(socket.remoteAddress, socket.remotePort);
    this.address = socket.remoteAddress ?? '?';
    this.parser = new RequestParser(this.peer);
    this.lastActive = this.lastProgress = Date.now();
    this.server.touch(this.address, this.lastActive);
    // Every reply unblocks a faulting thread on the other side; Nagle would add up to 40 ms.
    socket.setNoDelay(true);
    this.log('info', `page-server peer ${this.peer}: connected`);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('drain', () => this.onDrain());
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (!this.dead) {
        const msg = `page-server peer ${this.peer}: ${e.code ?? oneLine(e.message)}`;
        // A peer that resets after CLOSE was answered has still finished its restore.
        if (!this.closed) this.server.problems.push(msg);
        this.log(this.closed ? 'info' : 'warn', msg);
      }
      this.dead = true;
    });
    socket.on('close', () => {
      this.dead = true;
      if (this.closed && !this.refused) this.server.stats.closed++;
      // criu's server also ends its session quietly on an EOF between requests.
      else if (this.peerEnded && !this.refused) this.log('info', `page-server peer ${this.peer}: closed the connection without CLOSE`);
      this.log('info', `page-server peer ${this.peer}: disconnected`);
    });
  }

  destroy(): void {
    this.dead = true;
    this.socket.destroy();
  }

  state(): ConnectionState {
    return { peer: this.peer, outstanding: this.outstanding(), unsentBytes: this.unsentBytes(), bytesRead: this.socket.bytesRead, reading: !this.readingPaused };
  }

  /** Requests received and not yet answered to the kernel: taken, being answered, or in the socket's buffer. */
  private outstanding(): number {
    return this.queue.length + (this.pending || this.sendingRecords ? 1 : 0) + this.inSocket;
  }

  /** Reply bytes owed that the kernel has not taken: asked for, not yet handed over, in the socket's buffer. */
  private unsentBytes(): number {
    return this.queuedBytes + (this.pending ? this.pending.end - this.pending.pos : 0) + this.socket.writableLength;
  }

  private over(): boolean {
    return this.outstanding() >= this.server.maxOutstandingRequests || this.unsentBytes() >= this.server.maxUnsentBytes;
  }

  private progress(): void {
    const now = Date.now();
    this.lastActive = this.lastProgress = now;
    this.server.touch(this.address, now);
  }

  private onData(chunk: Buffer): void {
    if (this.dead) return;
    this.lastActive = Date.now();
    this.server.touch(this.address, this.lastActive);
    if (this.closed) {
      this.refuse(new PageServerProtocolError(this.peer, 'cmd', `${chunk.length} bytes after CLOSE (only EOF may follow)`));
      return;
    }
    if (!this.heard && looksLikeTls(chunk)) {
      this.refuse(new PageServerProtocolError(this.peer, 'cmd', 'the client speaks TLS (its first bytes are a TLS handshake): start this page server with --tls too, or the client without it'));
      return;
    }
    this.heard = true;
    this.parser.push(chunk);
    this.run();
  }

  private onEnd(): void {
    this.peerEnded = true;
    if (this.dead) return;
    if (this.closed) {
      this.socket.end();
      return;
    }
    this.run();
  }

  private onDrain(): void {
    if (!this.waitingDrain || this.dead || this.sendingRecords) return;
    this.waitingDrain = false;
    this.progress();
    if (this.pending) this.flush();
    this.run();
  }

  /** Takes requests within the bounds and answers them until input runs out or the socket pushes back. */
  private run(): void {
    while (!this.dead && !this.closed) {
      this.intake();
      if (this.waitingDrain) break;
      const next = this.queue.shift();
      if (!next) {
        // Peer finished sending and everything it asked has been answered: half-close our side.
        if (this.peerEnded && this.parser.buffered === 0 && !this.ending) {
          this.ending = true;
          this.socket.end();
        }
        break;
      }
      if (next.kind === 'error') return this.refuse(next.error);
      if (next.kind === 'close') return this.answerClose(next);
      this.queuedBytes -= this.replyBytes(next);
      if (!this.serveGet(next)) break;
    }
    if (this.dead || this.closed) return;
    if (this.over()) {
      this.noteBound();
      if (!this.readingPaused) {
        this.readingPaused = true;
        this.socket.pause();
      }
    } else if (this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
  }

  private replyBytes(req: Extract<Request, { kind: 'get' }>): number {
    return HEADER_SIZE + Math.min(req.nrPages, this.server.maxReplyPages) * PAGE_SIZE;
  }

  /** Moves complete requests from the parser to the queue while under the bounds. */
  private intake(): void {
    while (!this.intakeDone && !this.over()) {
      let req: Request | null;
      try {
        req = this.parser.next();
        if (!req && this.peerEnded) this.parser.end();
      } catch (e) {
        // Answered in its turn: the replies to earlier requests go out first.
        this.queue.push({ kind: 'error', error: e });
        this.intakeDone = true;
        return;
      }
      if (!req) return;
      // The clock of "its replies have not moved" starts when something is owed.
      if (this.outstanding() === 0) this.lastProgress = Date.now();
      this.queue.push(req);
      if (req.kind === 'get') this.queuedBytes += this.replyBytes(req);
      else this.intakeDone = true;
    }
  }

  /** Over a bound: one warn line per bound and connection. */
  private noteBound(): void {
    const n = this.outstanding();
    const bytes = this.unsentBytes();
    const s = this.server;
    if (!this.warnedRequests && !this.warnedBytes) s.stats.throttled++;
    if (n >= s.maxOutstandingRequests && !this.warnedRequests) {
      this.warnedRequests = true;
      this.log('warn', `page-server peer ${this.peer}: ${n} requests unanswered (--max-outstanding-requests ${s.maxOutstandingRequests}): not reading its requests until it takes its replies`);
    } else if (bytes >= s.maxUnsentBytes && !this.warnedBytes) {
      this.warnedBytes = true;
      this.log('warn', `page-server peer ${this.peer}: ${bytes} bytes of replies not taken (--max-unsent-bytes ${s.maxUnsentBytes}): not reading its requests until it takes its replies`);
    }
  }

  private answerClose(req: Extract<Request, { kind: 'close' }>): void {
    this.closed = true;
    // CRIU's reply: int32 status 0. The peer closes first; our end follows its EOF.
    this.socket.write(Buffer.alloc(CLOSE_REPLY_SIZE));
    this.log('info', `page-server peer ${this.peer}: ${req.force ? 'FORCE_CLOSE' : 'CLOSE'} after ${req.seq - 1} request(s)`);
    // Only EOF may follow now: read on to see it (or bytes that must not come).
    if (this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
    if (this.parser.buffered > 0) this.refuse(new PageServerProtocolError(this.peer, 'cmd', `request ${req.seq + 1}: ${this.parser.buffered} bytes after CLOSE (only EOF may follow)`));
    else if (this.peerEnded) this.socket.end();
  }

  /**
   * --idle-timeout-ms: a connection owed replies that the kernel has not taken for that long is
   * dropped (the client does not read them); one owed nothing is closed when neither it nor any other
   * connection from its address has sent or taken a byte for that long (the fault lane of a restore
   * whose fill lane is busy is not idle).
   */
  checkIdle(now: number, idle: number): void {
    if (this.dead) return;
    const n = this.outstanding();
    if (n > 0 || this.unsentBytes() > 0) {
      const quiet = now - this.lastProgress;
      if (quiet >= idle) this.drop(`its replies have not moved for ${quiet} ms (--idle-timeout-ms ${idle}) with ${n} requests and ${this.unsentBytes()} bytes unanswered (it does not read them): dropping connection`, true);
      return;
    }
    const quiet = now - Math.max(this.lastActive, this.server.lastHostActivity(this.address));
    if (quiet >= idle) this.drop(`idle for ${quiet} ms (--idle-timeout-ms ${idle}) with nothing outstanding: closing connection`, false);
  }

  private drop(why: string, owed: boolean): void {
    this.dead = true;
    this.refused = true;
    this.server.stats.dropped++;
    const msg = `page-server peer ${this.peer}: ${why}`;
    // A peer whose CLOSE was answered has finished its restore, even if it never hangs up.
    if (!this.closed) this.server.problems.push(msg);
    this.log('warn', msg);
    this.queue.length = 0;
    this.pending = null;
    if (owed) {
      // A reset: what it never read is thrown away at once (a FIN would queue behind it, and the
      // kernel would keep the socket and its buffers until the client reads or gives up).
      try {
        this.socket.resetAndDestroy();
      } catch {
        this.socket.destroy(); // TLS: not a TCP handle of its own
      }
    } else this.socket.destroy();
  }

  /** false when the connection can take no more now (refused, or waiting for 'drain'). */
  private serveGet(req: Extract<Request, { kind: 'get' }>): boolean {
    const served = this.server.lookup(req.pid);
    const at = () => `request ${req.seq}: GET pid ${req.pid} vaddr ${hex(req.vaddr)} nr_pages ${req.nrPages}`;
    if (!served) {
      this.refuse(new PageServerProtocolError(this.peer, 'dst_id', `${at()}: unknown pid (dst_id) — not a process of this checkpoint with memory images`));
      return false;
    }
    const i = findRange(served.starts, req.vaddr);
    if (i < 0 || req.vaddr >= served.ends[i]!) {
      this.refuse(new PageServerProtocolError(this.peer, 'vaddr', `${at()}: vaddr is outside every lazy (PE_LAZY) range of pid ${req.pid}`));
      return false;
    }
    // Never past the lazy range: the next page may belong to a non-lazy entry or another VMA.
    let pages = Math.min(req.nrPages, (served.ends[i]! - req.vaddr) / PAGE_SIZE, this.server.maxReplyPages);
    let loc;
    try {
      loc = served.images.locate(req.vaddr, pages);
    } catch (e) {
      this.refuse(new PageServerProtocolError(this.peer, 'vaddr', `${at()}: ${e instanceof ImageError ? e.message : oneLine((e as Error).message)}`), 'error');
      return false;
    }
    if (!loc || loc.offset + loc.pages * PAGE_SIZE > loc.buf.length) {
      this.refuse(new PageServerProtocolError(this.peer, 'vaddr', `${at()}: the images hold no data for this page`), 'error');
      return false;
    }
    pages = Math.min(pages, loc.pages);
    if (this.server.traceRequests) this.log('debug', `page-server peer ${this.peer}: ${at()}: ${pages} pages`);
    this.server.stats.gets++;
    this.server.stats.pages += pages;
    this.pending = { buf: loc.buf, pos: loc.offset, end: loc.offset + pages * PAGE_SIZE };
    if (this.socket instanceof tls.TLSSocket) return this.sendRecords(encodeGetReply(req.pid, req.vaddr, pages));
    // Header and the first data chunk leave in one writev.
    this.socket.cork();
    this.socket.write(encodeGetReply(req.pid, req.vaddr, pages));
    const ok = this.flush();
    this.socket.uncork();
    return ok;
  }

  /**
   * TLS: the header in a record of its own, then the data in records that never reach into the next
   * reply. CRIU's client reads a reply with one gnutls_record_recv per epoll wake-up, asking for the
   * header's 32 bytes, then for the rest of the data; what a record holds beyond that stays in
   * gnutls' buffer, the socket never turns readable again, and the restore hangs (zdtm: 0/11 with
   * CRIU's client before this). Node merges writes queued together (writev) into one SSL_write, so
   * each record is written only once the previous one has left; no other reply meanwhile, as under
   * backpressure.
   */
  private sendRecords(header: Buffer): false {
    this.sendingRecords = true;
    this.waitingDrain = true;
    const next = (e?: Error | null): void => {
      if (e || this.dead) return; // the 'error' handler reports it
      this.progress();
      const p = this.pending;
      if (!p || p.pos >= p.end) {
        this.pending = null;
        this.sendingRecords = false;
        this.waitingDrain = false;
        this.run();
        return;
      }
      const n = Math.min(TLS_RECORD_DATA, p.end - p.pos);
      const chunk = p.buf.subarray(p.pos, p.pos + n);
      p.pos += n;
      this.socket.write(chunk, next);
    };
    this.socket.write(header, next);
    return false;
  }

  /** Writes the pending reply data; when the socket pushes back, answers nothing more until 'drain'. */
  private flush(): boolean {
    const p = this.pending!;
    while (p.pos < p.end) {
      const n = Math.min(WRITE_CHUNK, p.end - p.pos);
      const last = p.pos + n >= p.end;
      if (last) {
        this.pending = null;
        this.inSocket++;
      }
      const ok = this.socket.write(p.buf.subarray(p.pos, p.pos + n), last ? this.replyOut : this.wrote);
      p.pos += n;
      if (!ok) {
        // Requests are still read within the bounds (run() decides); replies wait for 'drain'.
        this.waitingDrain = true;
        return false;
      }
    }
    return true;
  }

  private refuse(e: unknown, level: LogLevel = 'warn'): void {
    if (this.dead) return;
    this.dead = true;
    this.refused = true;
    this.server.stats.refused++;
    const msg = e instanceof PageServerProtocolError ? e.message : `page-server peer ${this.peer}: ${oneLine((e as Error).message)}`;
    this.server.problems.push(msg);
    this.log(level, `${msg}; closing connection`);
    this.pending = null;
    this.queue.length = 0;
    // Keep reading (and discarding) so the peer's EOF is seen and the socket is freed at once.
    this.socket.removeAllListeners('data');
    this.socket.on('data', () => undefined);
    this.socket.resume();
    // end() lets replies already queued reach the peer, so it sees exactly where we stopped.
    this.socket.end();
    setTimeout(() => this.socket.destroy(), LINGER_MS).unref();
  }
}
