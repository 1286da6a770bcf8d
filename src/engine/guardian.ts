// The daemon's side of the guardian (native/guardian/guardian.c): a small process that holds a copy
// of every uffd and a pidfd of every restored process, so that a daemon killed outright (SIGKILL,
// the OOM killer, a crash in native code) cannot leave the tree running on zero pages. The guardian
// fail-stops the tree when its control socket closes before the daemon said DONE or STOPPED.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../native';

export const GUARDIAN_BIN = path.resolve(__dirname, '../../../native/bin/faultline-guardian');

const enum Msg {
  ADD = 1,
  RELEASE = 3,
  DONE = 4,
  STOPPED = 5,
}

export class Guardian {
  private sock: number;
  private lost: string | undefined;

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

  /** A process handed over: the guardian keeps its own copies of the uffd and the pidfd. */
  add(uffd: number, hostPid: number, pidfd: number): void {
    this.send(Msg.ADD, uffd, hostPid, pidfd >= 0 ? [uffd, pidfd] : [uffd]);
  }

  /** Complete (every page in place) or gone: the guardian lets go of its copies. */
  release(uffd: number): void {
    this.send(Msg.RELEASE, uffd, 0, []);
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
      this.lost = `the guardian (pid ${this.pid}) is gone: ${(e as Error).message}`;
      this.onLost(this.lost);
    }
  }
}
