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
  RELEASE = 3,
  DONE = 4,
  STOPPED = 5,
  HOLD = 6,
  CONN = 7,
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
  private fallback: (() => void) | undefined;

  private constructor(sock: number, readonly pid: number, private readonly onLost: (why: string) => void) {
    this.sock = sock;
  }

  /**
   * Starts the guardian; its one line goes to this process's stderr and, when given, is appended to
   * `logFile` (the daemon's -o, which is all a daemon detached with -d has). Throws (a start-up error: no restore begins unprotected) when its binary is
   * missing or it cannot be started.
   */
  static start(onLost: (why: string) => void, logFile?: string, bin = GUARDIAN_BIN): Guardian {
    if (!fs.existsSync(bin)) throw new Error(`guardian: ${bin} is missing (build it with \`make -C native\`)`);
    const [ours, theirs] = native.unixSocketpair();
    try {
      // Its own session: a signal to the daemon's process group (Ctrl-C, a supervisor's group kill)
      // must not take the guardian with it. stdout is not shared, so nobody waits on it for EOF.
      const child = spawn(bin, ['3', String(process.pid), ...(logFile ? [logFile] : [])], { stdio: ['ignore', 'ignore', 'inherit', theirs], detached: true });
      if (child.pid === undefined) throw new Error(`guardian: cannot start ${bin}`);
      child.unref();
      native.setGuardian(ours);
      return new Guardian(ours, child.pid, onLost);
    } finally {
      native.closeFd(theirs);
    }
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
  hold(listening: number): void {
    this.send(Msg.HOLD, listening, 0, [listening]);
  }

  /** Connections the guardian accepted, with its id for each (for releaseSocket). */
  onConnection(take: (fd: number, id: number) => void, fallback: () => void): void {
    this.fallback = fallback;
    this.watcher = new native.FdWatcher(this.sock, () => {
      for (;;) {
        const r = this.sock < 0 ? null : native.unixRecv(this.sock, 12);
        if (!r) return;
        if (r.data.length === 0) return this.gone('closed its control socket');
        if (r.data.length !== 12 || r.data.readUInt32LE(0) !== Msg.CONN || r.fds.length !== 1) {
          for (const fd of r.fds) native.closeFd(fd);
          return this.gone(`sent a control message of ${r.data.length} bytes that is not CONN`);
        }
        take(r.fds[0]!, r.data.readUInt32LE(4));
      }
    });
  }

  /** The daemon closed the connection the guardian knows as id. */
  releaseSocket(id: number): void {
    this.send(Msg.RELEASE, id, Held.SOCKET, []);
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
    this.fallback?.();
  }
}
