// Listener: <workdir>/lazy-pages.socket, the one restorer connection, and the uffds it hands over.
// Readiness comes from libuv (FdWatcher), so accepting never blocks the main thread.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../native';
import { HandoverParser, type HandoverEvent } from './handover';
import { HandoverProtocolError } from './errors';

export const SOCKET_NAME = 'lazy-pages.socket';
export const LOCK_NAME = 'lazy-pages.lock';

/**
 * One daemon per work directory: a second one would replace the first's socket (criu's rule for a
 * stale socket), and whichever exits first would delete the other's. Held (flock) until close() or
 * this process ends. Throws a coded error naming the directory when another daemon holds it.
 */
export function lockWorkDir(workDir: string): number {
  const lockPath = path.resolve(workDir, LOCK_NAME);
  try {
    return native.lockFile(lockPath);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
      throw Object.assign(new Error(`-W ${workDir}: another lazy-pages daemon serves this work directory (it holds ${lockPath})`), { code: 'EBUSY' });
    }
    throw Object.assign(new Error(`-W ${workDir}: cannot create ${lockPath}: ${code ?? (e as Error).message}`), { code: code ?? 'EIO' });
  }
}
const RECV_BYTES = 4096;
/**
 * Test hook: the listener never accepts on its own, so a restorer waits in the backlog until a
 * fail-stop takes it (handover-socket.test.ts, "a restorer still in the backlog"). Never set in
 * normal use.
 */
const TEST_HOLD_ACCEPT = process.env.FAULTLINE_TEST_HOLD_ACCEPT === '1';
/** How long a fail-stop keeps reading the restorer's connection for late hand-overs. */
export const DRAIN_AFTER_FAILSTOP_MS = 2000;
/** How long half of a hand-over record may wait for the rest (see watchPartial). */
export const PARTIAL_RECORD_MS = Number(process.env.FAULTLINE_PARTIAL_RECORD_MS ?? 10_000);

export interface ListenerEvents {
  onEvent(e: HandoverEvent, peer: string): void;
  onError(e: Error): void;
  /** A connection closed unread: a second restorer, or a peer that may not hand over. */
  onRefused(peerPid: number, why: string): void;
}

/**
 * Accepting through the guardian (engine/guardian.ts): it accepts on the listening socket, keeps each
 * connection and passes us a copy, so that no connection is ever held by this process alone (one
 * killed between accept and anything else would take the uffds queued in it along).
 */
export interface Acceptor {
  /** Connections on `listening` go to take (with the acceptor's id); fallback: the guardian is gone, accept here from now on. */
  hold(listening: number, take: (fd: number, id: number) => void, fallback: () => void): void;
  /** We closed the connection (or the listening socket) it knows as id. */
  releaseSocket(id: number): void;
}

export class Listener {
  readonly socketPath: string;
  private readonly fd: number;
  private watcher: { stop(): void } | undefined;
  private conn: { fd: number; watcher: { stop(): void }; parser: HandoverParser; peer: string; guardId?: number; stall?: NodeJS.Timeout } | null = null;
  private accepted = false;
  private closed = false;
  /** Set by a fail-stop: read on only to kill late senders, until EOF. */
  private draining: (() => void) | null = null;
  private readonly heldFds: number[] = [];

  constructor(
    workDir: string,
    private readonly nrTasks: number,
    private readonly events: ListenerEvents,
    private readonly acceptor?: Acceptor,
    /** From lockWorkDir: closed last, after the socket file is gone. */
    private readonly lockFd = -1,
    /** --socket-group: the socket is 0660 with this group, whose members may hand over too. */
    private readonly socketGid?: number,
  ) {
    this.socketPath = path.resolve(workDir, SOCKET_NAME);
    this.fd = native.unixListen(this.socketPath, 10);
    if (socketGid !== undefined) {
      // widened only after bind made it 0600: never open to more than root, us and this group
      fs.chownSync(this.socketPath, -1, socketGid);
      fs.chmodSync(this.socketPath, 0o660);
    }
    if (acceptor) {
      acceptor.hold(
        this.fd,
        (fd, id) => this.take(native.unixPeer(fd), id),
        () => {
          if (!this.closed) this.watcher = new native.FdWatcher(this.fd, () => this.accept());
        },
      );
    } else if (!TEST_HOLD_ACCEPT) {
      this.watcher = new native.FdWatcher(this.fd, () => this.accept());
    }
  }

  private accept(): void {
    for (;;) {
      const c = native.unixAccept(this.fd);
      if (!c) return;
      this.take(c);
    }
  }

  private take(c: { fd: number; pid: number; uid: number; gid: number }, guardId?: number): void {
    // Only root, our own user or --socket-group may hand over: a uffd from anyone else would be sent
    // the checkpoint's memory (the socket's mode says so too; this holds even if someone widened it).
    const ours = process.geteuid?.() ?? 0;
    if (c.uid !== 0 && c.uid !== ours && !(this.socketGid !== undefined && inGroup(c.pid, c.gid, this.socketGid))) {
      native.closeFd(c.fd);
      if (guardId !== undefined) this.acceptor?.releaseSocket(guardId);
      const group = this.socketGid !== undefined ? `, nor in --socket-group (gid ${this.socketGid})` : '';
      this.events.onRefused(c.pid, `its user (uid ${c.uid}) is neither root nor the daemon's (uid ${ours})${group}`);
      return;
    }
    if (this.accepted || this.closed) {
      // CRIU serves exactly one restorer; a second one must not be able to inject uffds. Any it has
      // sent already would be dropped with the connection: their senders are killed first.
      drainAndKill(c.fd, this.heldFds);
      native.closeFd(c.fd);
      if (guardId !== undefined) this.acceptor?.releaseSocket(guardId);
      if (!this.closed) this.events.onRefused(c.pid, 'one restorer per daemon, and one is connected');
      return;
    }
    this.accepted = true;
    const peer = `${SOCKET_NAME} (restorer pid ${c.pid})`;
    const parser = new HandoverParser(this.nrTasks, peer);
    const watcher = new native.FdWatcher(c.fd, () => this.receive());
    this.conn = { fd: c.fd, watcher, parser, peer, guardId };
  }

  /**
   * A restorer writes each record whole (criu: the pid, then at once the byte with the uffd), so a
   * record left half-sent is a peer that stalled or died holding the socket: fail-stop after
   * PARTIAL_RECORD_MS rather than wait forever with the tree half handed over. Silence between
   * records is not judged: criu may take long between processes.
   */
  private watchPartial(conn: NonNullable<Listener['conn']>): void {
    const partial = conn.parser.partialBytes();
    if (!partial) {
      clearTimeout(conn.stall);
      conn.stall = undefined;
    } else if (!conn.stall) {
      conn.stall = setTimeout(() => {
        if (this.conn === conn && !this.draining) {
          this.events.onError(new HandoverProtocolError(`${conn.peer}: sent ${conn.parser.partialBytes()} bytes of a hand-over record and nothing more for ${PARTIAL_RECORD_MS} ms`));
        }
      }, PARTIAL_RECORD_MS);
      conn.stall.unref();
    }
  }

  private receive(): void {
    const conn = this.conn;
    if (!conn) return;
    if (this.draining) return this.drainLate(conn.fd);
    try {
      for (;;) {
        if (this.draining) return this.drainLate(conn.fd);
        const r = native.unixRecv(conn.fd, RECV_BYTES, true);
        if (!r) return;
        if (r.truncated) throw new HandoverProtocolError(`${conn.peer}: control message truncated (too many file descriptors in one message)`);
        for (const fd of r.fds) checkIsUffd(fd, conn.peer);
        const events = conn.parser.feed(r.data, r.fds, r.pid);
        for (const e of events) this.events.onEvent(e, conn.peer);
        this.watchPartial(conn);
        if (r.data.length === 0) {
          this.closeConnection();
          return;
        }
      }
    } catch (e) {
      // Keep the connection: the fail-stop this triggers drains it (see stop()).
      this.heldFds.push(...conn.parser.leftoverFds());
      this.events.onError(e as Error);
    }
  }

  /**
   * Fail-stop: a restorer that is still handing over must not get to RESTORE_FINISHED and release
   * tasks whose uffd we would drop (dropping it turns their missing pages into zeros). So read on
   * until EOF, SIGKILL every sender (SCM_CREDENTIALS), and keep their uffds open until the end.
   * Resolves at EOF, or after DRAIN_AFTER_FAILSTOP_MS; closing then makes the restorer's next send
   * (RESTORE_FINISHED included) fail.
   */
  stop(): Promise<void> {
    // A restorer still in the backlog may have sent every uffd and RESTORE_FINISHED already and
    // released its tasks: it is taken and drained like one already connected (a fast machine
    // fail-stopped 1 ms after start, before its accept ran, and the tree read zeros; the guardian,
    // when there is one, holds the socket and takes it too).
    if (!this.conn && !this.closed) this.accept();
    if (!this.conn) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.finishDrain(), DRAIN_AFTER_FAILSTOP_MS);
      this.draining = () => {
        clearTimeout(timer);
        resolve();
      };
      this.drainLate(this.conn!.fd);
    });
  }

  private drainLate(fd: number): void {
    if (drainAndKill(fd, this.heldFds).ended) this.finishDrain();
  }

  /**
   * Closing the socket would reset the connections still in its backlog and drop the uffds they
   * carry, which turns their missing pages into zeros: every process that sent a uffd on one, and
   * the restorer that connected it, is SIGKILLed first (the uffds are held until the end of
   * close()). A connection that carries no uffd is only closed. A restore that ended normally has none.
   */
  private killBacklog(): void {
    for (;;) {
      const c = native.unixAccept(this.fd);
      if (!c) return;
      if (drainAndKill(c.fd, this.heldFds).taken > 0 && c.pid > 0) killPid(c.pid);
      native.closeFd(c.fd);
    }
  }

  private finishDrain(): void {
    const done = this.draining;
    this.closeConnection();
    done?.();
  }

  private closeConnection(): void {
    if (!this.conn) return;
    clearTimeout(this.conn.stall);
    this.conn.watcher.stop();
    native.closeFd(this.conn.fd);
    if (this.conn.guardId !== undefined) this.acceptor?.releaseSocket(this.conn.guardId);
    this.conn = null;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closeConnection();
    this.killBacklog();
    this.watcher?.stop();
    // the guardian's copy too: in an engine, other restores' guardian lives on
    this.acceptor?.releaseSocket(this.fd);
    native.closeFd(this.fd);
    for (const fd of this.heldFds.splice(0)) native.closeFd(fd);
    fs.rmSync(this.socketPath, { force: true });
    if (this.lockFd >= 0) native.closeFd(this.lockFd);
  }
}

/**
 * Reads what a connection holds now, SIGKILLs every process that sent a uffd on it
 * (SCM_CREDENTIALS) and keeps the uffds in `held`: how many it took, and whether the connection
 * ended (EOF or an error) rather than having nothing more yet.
 */
function drainAndKill(fd: number, held: number[]): { taken: number; ended: boolean } {
  let taken = 0;
  for (;;) {
    let r;
    try {
      r = native.unixRecv(fd, RECV_BYTES, true);
    } catch {
      return { taken, ended: true };
    }
    if (!r) return { taken, ended: false };
    if (r.fds.length && r.pid > 0) killPid(r.pid);
    taken += r.fds.length;
    held.push(...r.fds);
    if (r.data.length === 0) return { taken, ended: true };
  }
}

function killPid(pid: number): void {
  try {
    const pidfd = native.pidfdOpen(pid);
    native.pidfdSendSignal(pidfd, 9);
    native.closeFd(pidfd);
  } catch {
    // already gone
  }
}

function checkIsUffd(fd: number, peer: string): void {
  let target = '';
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // unreadable: judged by the ioctls later
    return;
  }
  if (target !== 'anon_inode:[userfaultfd]') {
    throw new HandoverProtocolError(`${peer}: the file descriptor handed over is not a userfaultfd (${target})`);
  }
}

const UFFD_FEATURE_INITIALIZED = 0x8000_0000;
let kernelMarksInitialized: boolean | undefined;

/** The `features` field of a uffd's fdinfo ("API:\t<api>:<features>:<ioctls>"), or undefined. */
function fdinfoFeatures(fd: number): number | undefined {
  try {
    const m = /^API:\s*[0-9a-f]+:([0-9a-f]+):/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? parseInt(m[1]!, 16) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * False when the uffd handed over never had UFFDIO_API done: its process cannot have registered a
 * range, so nothing we copy would reach it and the "restore" would end with no page served. Judged
 * only on kernels that mark an initialized uffd in its fdinfo (probed once); true elsewhere.
 */
export function uffdInitialized(fd: number): boolean {
  if (kernelMarksInitialized === undefined) {
    kernelMarksInitialized = false;
    try {
      const probe = native.uffdCreate(native.uffdConstants.O_CLOEXEC | native.uffdConstants.O_NONBLOCK);
      try {
        native.uffdApi(probe, 0n);
        kernelMarksInitialized = ((fdinfoFeatures(probe) ?? 0) & UFFD_FEATURE_INITIALIZED) !== 0;
      } finally {
        native.closeFd(probe);
      }
    } catch {
      /* no userfaultfd here: nothing to judge by */
    }
  }
  if (!kernelMarksInitialized) return true;
  const features = fdinfoFeatures(fd);
  return features === undefined || (features & UFFD_FEATURE_INITIALIZED) !== 0;
}

/** The peer's primary group (SO_PEERCRED) or one of its supplementary groups (/proc/PID/status). */
function inGroup(pid: number, gid: number, group: number): boolean {
  if (gid === group) return true;
  try {
    const m = /^Groups:\s*(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return !!m && m[1]!.split(/\s+/).filter(Boolean).map(Number).includes(group);
  } catch {
    return false;
  }
}
