// The daemon's side of the guardian (native/guardian/guardian.c): a small process that holds a copy
// of every uffd and a pidfd of every restored process, so that a daemon killed outright (SIGKILL,
// the OOM killer, a crash in native code) cannot leave the tree running on zero pages. The guardian
// fail-stops the tree when its control socket closes before the daemon said DONE or STOPPED.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../native';

export const GUARDIAN_BIN = path.resolve(__dirname, '../../../native/bin/faultline-guardian');

// ADD (a handed-over uffd) and CHILD (a forked child's) are sent by the native layer, at the moment
// the uffd is received (unixRecv with guard) or read from a FORK event (the drain).
const enum Msg {
  ADD = 1,
  CHILD = 2,
  RELEASE = 3,
  DONE = 4,
  STOPPED = 5,
  HOLD = 6,
  CONN = 7,
  VPID = 9,
  FINISHED = 10,
  RESUMED = 11,
  PROC = 12,
  END = 13,
  DROP = 14,
  WATCH = 15,
}

/** Where the guardian waits for `lazy-pages --resume` when the daemon dies (--recover-timeout). */
export const RESUME_NAME = 'lazy-pages.resume';

/** A process the guardian kept for a resuming daemon (its PROC record). */
export interface HeldProcess {
  /** The dead daemon's name for it (its uffd number there); children name their parent by it. */
  id: number;
  /** 0 for a root of the hand-over; else the id of the process it was forked from. */
  parent: number;
  /** Its pid in pstree.img: the images it is served from (a forked child has its parent's). */
  vpid: number;
  /** 0 for a forked child (it came as a uffd only). */
  hostPid: number;
  uffd: number;
}

/** RELEASE's argument: what the id names. */
const enum Held {
  PROCESS = 0,
  SOCKET = 1,
}

export class Guardian {
  private sock: number;
  private lost: string | undefined;
  private watcher: { stop(): void } | undefined;
  /** Per listening socket (HOLD id = its fd here): where its connections go, and what to do without the guardian. */
  private readonly acceptors = new Map<number, { take: (fd: number, id: number) => void; fallback: () => void }>();

  private constructor(sock: number, readonly pid: number, private readonly onLost: (why: string) => void) {
    this.sock = sock;
  }

  /**
   * Starts the guardian; its one line goes to this process's stderr and, when given, is appended to
   * `logFile` (the daemon's -o, which is all a daemon detached with -d has). Throws (a start-up error: no restore begins unprotected) when its binary is
   * missing or it cannot be started.
   */
  static start(onLost: (why: string) => void, logFile?: string, resume?: { workDir: string; recoverMs: number }, bin = GUARDIAN_BIN): Guardian {
    if (!fs.existsSync(bin)) throw new Error(`guardian: ${bin} is missing (build it with \`make -C native\`)`);
    const [ours, theirs] = native.unixSocketpair();
    try {
      // Its own session: a signal to the daemon's process group (Ctrl-C, a supervisor's group kill)
      // must not take the guardian with it. stdout is not shared, so nobody waits on it for EOF.
      const resumeArgs = resume && resume.recoverMs > 0 ? [path.resolve(resume.workDir, RESUME_NAME), String(resume.recoverMs)] : [];
      const args = ['3', String(process.pid), ...(logFile || resumeArgs.length ? [logFile ?? '-'] : []), ...resumeArgs];
      const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'inherit', theirs], detached: true });
      if (child.pid === undefined) throw new Error(`guardian: cannot start ${bin}`);
      child.unref();
      native.setGuardian(ours);
      const g = new Guardian(ours, child.pid, onLost);
      if (resumeArgs.length) g.watchReads();
      return g;
    } finally {
      native.closeFd(theirs);
    }
  }

  /**
   * `lazy-pages --resume`: takes the tree from the guardian of a daemon that died (it waits on
   * <workDir>/lazy-pages.resume for --recover-timeout). Its connection becomes this daemon's control
   * line to that guardian. Throws with the reason when there is nobody to resume from.
   */
  static resume(workDir: string, onLost: (why: string) => void): { guardian: Guardian; held: HeldProcess[] } {
    const at = path.resolve(workDir, RESUME_NAME);
    let sock: number;
    try {
      sock = native.unixConnect(at, true);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' || code === 'ECONNREFUSED' ? 'no guardian waits there (no daemon of this work dir died with --recover-timeout, or its time ran out)' : code;
      throw Object.assign(new Error(`--resume: ${at}: ${why}`), { code: 'ERESUME' });
    }
    const peer = native.unixPeer(sock);
    const held: HeldProcess[] = [];
    const fail = (why: string): never => {
      for (const h of held) native.closeFd(h.uffd);
      native.closeFd(sock);
      throw Object.assign(new Error(`--resume: the guardian on ${at} (pid ${peer.pid}) ${why}`), { code: 'ERESUME' });
    };
    if (peer.uid !== 0 && peer.uid !== process.geteuid?.()) fail(`runs as uid ${peer.uid}: only root or this uid is trusted with the tree`);
    for (;;) {
      // Blocking: the guardian writes every record as soon as it accepted.
      const r = native.unixRecv(sock, 64);
      if (!r || r.data.length === 0) fail('closed the connection before the last record');
      const rec = r!.data;
      const type = rec.length === 20 ? rec.readUInt32LE(0) : 0;
      if (type === Msg.END) {
        for (const fd of r!.fds) native.closeFd(fd);
        if (rec.readUInt32LE(4) !== held.length) fail(`sent ${held.length} processes but counted ${rec.readUInt32LE(4)}`);
        break;
      }
      if (type !== Msg.PROC || r!.fds.length < 1) {
        for (const fd of r!.fds) native.closeFd(fd);
        fail(`sent a record of ${rec.length} bytes that is not PROC or END`);
      }
      // The guardian keeps its own copies: a pidfd is opened again from the pid (ProcessTree.add).
      for (const fd of r!.fds.slice(1)) native.closeFd(fd);
      held.push({ id: rec.readUInt32LE(4), parent: rec.readUInt32LE(8), vpid: rec.readUInt32LE(12), hostPid: rec.readUInt32LE(16), uffd: r!.fds[0]! });
    }
    native.setGuardian(sock);
    const guardian = new Guardian(sock, peer.pid, onLost);
    // it waits for a resume again if this daemon dies too
    guardian.watchReads();
    return { guardian, held };
  }

  /**
   * A process taken from the guardian (resume), made known again by this daemon's fd numbers; the
   * guardian drops the dead daemon's entries at resumed().
   */
  adopt(h: HeldProcess, parentUffd: number | undefined): void {
    if (parentUffd !== undefined) this.send(Msg.CHILD, h.uffd, parentUffd, [h.uffd]);
    else {
      let pidfd = -1;
      try {
        pidfd = native.pidfdOpen(h.hostPid);
      } catch {
        // gone: the guardian's copy of the uffd is all there is
      }
      this.send(Msg.ADD, h.uffd, h.hostPid, pidfd >= 0 ? [h.uffd, pidfd] : [h.uffd]);
      if (pidfd >= 0) native.closeFd(pidfd);
      this.vpid(h.uffd, h.vpid);
    }
  }

  /**
   * Only where the guardian may wait for a resume: a daemon killed between reading an mremap (or a
   * fork) and telling the guardian must be stopped, not resumed (native/src/epoll.cc, reading_word).
   */
  private watchReads(): void {
    const memfd = native.guardReadingWord();
    try {
      this.send(Msg.WATCH, 0, 0, [memfd]);
    } finally {
      native.closeFd(memfd);
    }
  }

  resumed(): void {
    this.send(Msg.RESUMED, 0, 0, []);
  }

  /** Which images a handed-over uffd is served from: a resumed daemon needs it. */
  vpid(uffd: number, vpid: number): void {
    this.send(Msg.VPID, uffd, vpid, []);
  }

  /** The restorer handed over everything (RESTORE_FINISHED): from now on the tree can be resumed. */
  finished(): void {
    this.send(Msg.FINISHED, 0, 0, []);
  }

  /** Complete (every page in place) or gone: the guardian lets go of its copies. */
  release(uffd: number): void {
    this.send(Msg.RELEASE, uffd, Held.PROCESS, []);
  }

  /**
   * The listening lazy-pages.socket: from now on the guardian accepts on it and passes each
   * connection on (onConnection), keeping a copy, so that a uffd still in a connection's buffer when
   * this process dies is taken by the guardian instead of closing with it (which would turn that
   * process's missing pages into zeros).
   */
  hold(listening: number, take: (fd: number, id: number) => void, fallback: () => void): void {
    if (this.lost) return fallback();
    this.acceptors.set(listening, { take, fallback });
    this.watcher ??= new native.FdWatcher(this.sock, () => {
      for (;;) {
        const r = this.sock < 0 ? null : native.unixRecv(this.sock, 12);
        if (!r) return;
        if (r.data.length === 0) return this.gone('closed its control socket');
        if (r.data.length !== 12 || r.data.readUInt32LE(0) !== Msg.CONN || r.fds.length !== 1) {
          for (const fd of r.fds) native.closeFd(fd);
          return this.gone(`sent a control message of ${r.data.length} bytes that is not CONN`);
        }
        const id = r.data.readUInt32LE(4);
        const to = this.acceptors.get(r.data.readUInt32LE(8));
        if (to) to.take(r.fds[0]!, id);
        else {
          // accepted on a socket closed meanwhile: nobody serves it
          native.closeFd(r.fds[0]!);
          this.releaseSocket(id);
        }
      }
    });
    this.send(Msg.HOLD, listening, 0, [listening]);
  }

  /** The daemon closed the connection (or the listening socket) the guardian knows as id. */
  releaseSocket(id: number): void {
    this.acceptors.delete(id);
    this.send(Msg.RELEASE, id, Held.SOCKET, []);
  }

  /** An engine's restore of this process ended cleanly or was stopped: the guardian forgets it. */
  drop(hostPid: number): void {
    if (hostPid > 0) this.send(Msg.DROP, hostPid, 0, []);
  }

  /** The restore completed: the guardian exits without touching anything. */
  done(): void {
    this.finish(Msg.DONE);
  }

  /** The daemon fail-stopped the tree itself (killed, poisoned): the guardian just exits. */
  stopped(): void {
    this.finish(Msg.STOPPED);
  }

  private finish(m: Msg): void {
    this.send(m, 0, 0, []);
    this.watcher?.stop();
    native.setGuardian(-1);
    native.closeFd(this.sock);
    this.sock = -1;
  }

  private send(type: Msg, id: number, arg: number, fds: number[]): void {
    if (this.sock < 0 || this.lost) return;
    const b = Buffer.alloc(12);
    b.writeUInt32LE(type, 0);
    b.writeUInt32LE(id >>> 0, 4);
    b.writeUInt32LE(arg >>> 0, 8);
    try {
      native.unixSend(this.sock, b, fds);
    } catch (e) {
      this.gone((e as Error).message);
    }
  }

  private gone(why: string): void {
    if (this.lost) return;
    this.lost = `the guardian (pid ${this.pid}) is gone: ${why}`;
    this.watcher?.stop();
    this.onLost(this.lost);
    for (const a of this.acceptors.values()) a.fallback();
    this.acceptors.clear();
  }
}

/**
 * Lets go of a forked child's uffd that nobody will serve (Engine's onOrphan): the guardian's copy
 * first, then ours, so that the child's waiting faults are released. A child of a complete parent
 * reads its own memory; one of a fail-stopped restore had its missing pages poisoned (SIGBUS, not
 * zeros) and is being killed with its tree.
 */
export function closeOrphanUffd(
  uffd: number,
  parentUffd: number,
  poisonedPages: number | null,
  guardian: Guardian | undefined,
  log: { debug(o: object, msg: string): void },
): void {
  guardian?.release(uffd);
  native.closeFd(uffd);
  if (poisonedPages === null) log.debug({ uffd, parentUffd }, 'a child forked by a process already restored: nothing lazy, its uffd closed');
  else log.debug({ uffd, parentUffd, poisonedPages }, 'a child forked by a process whose restore was fail-stopped: its missing pages poisoned, its uffd closed');
}
