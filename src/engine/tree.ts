// The restored tree as the main thread knows it: which uffd belongs to which process and shard, and
// how to reach the process (pidfd) when it must be stopped.
import { native } from '../native';

export interface TrackedProcess {
  uffd: number;
  pid: number;
  /** pid in faultline's namespace (SCM_CREDENTIALS); 0 for forked children, which come as a uffd only */
  hostPid: number;
  pidfd: number;
  shard: number;
  lazyPages: number;
  state: 'loading' | 'restoring' | 'complete' | 'gone';
}

export class ProcessTree {
  private readonly byUffd = new Map<number, TrackedProcess>();
  readonly finished: TrackedProcess[] = [];
  zombies = 0;
  add(uffd: number, pid: number, hostPid: number, shard: number): TrackedProcess {
    let pidfd = -1;
    if (hostPid > 0) {
      try {
        pidfd = native.pidfdOpen(hostPid);
      } catch {
        // already gone: nothing to stop later
      }
    }
    const p: TrackedProcess = { uffd, pid, hostPid, pidfd, shard, lazyPages: 0, state: 'loading' };
    this.byUffd.set(uffd, p);
    return p;
  }

  get(uffd: number): TrackedProcess | undefined {
    return this.byUffd.get(uffd);
  }

  hasPid(pid: number): boolean {
    for (const p of this.byUffd.values()) if (p.pid === pid) return true;
    return this.finished.some((p) => p.pid === pid);
  }

  get active(): number {
    return this.byUffd.size;
  }

  /** The process needs nothing more: forget its uffd (the caller closes it). */
  release(uffd: number, state: 'complete' | 'gone'): TrackedProcess | undefined {
    const p = this.byUffd.get(uffd);
    if (!p) return undefined;
    this.byUffd.delete(uffd);
    p.state = state;
    this.finished.push(p);
    return p;
  }

  /**
   * SIGKILL the whole tree, finished processes included: a tree missing some of its processes is
   * not a restore anyone wants to keep running. Returns how many were signalled.
   */
  killAll(): number {
    let n = 0;
    for (const p of [...this.byUffd.values(), ...this.finished]) {
      if (p.pidfd < 0) continue;
      this.kill(p);
      n++;
    }
    return n;
  }

  kill(p: TrackedProcess): void {
    if (p.pidfd < 0) return;
    try {
      native.pidfdSendSignal(p.pidfd, 9);
    } catch {
      // exited meanwhile
    }
  }

  closePidfds(): void {
    for (const p of [...this.byUffd.values(), ...this.finished]) {
      if (p.pidfd >= 0) native.closeFd(p.pidfd);
      p.pidfd = -1;
    }
  }

  uffds(): number[] {
    return [...this.byUffd.keys()];
  }
}
