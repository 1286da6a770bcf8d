// The restored tree as the main thread knows it: which uffd belongs to which process and shard, and
// how to reach the process (pidfd) when it must be stopped.
import * as fs from 'node:fs';
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
    const known = [...this.byUffd.values(), ...this.finished].filter((p) => p.pidfd >= 0);
    // A child forked after the hand-over has a uffd here but no pid. It is found as a descendant,
    // with the known processes stopped first: a stopped process can neither fork again nor exit
    // and leave its children to be reparented (out of reach) while they are looked for.
    for (const p of known) signalPidfd(p.pidfd, SIGSTOP);
    const descendants = descendantsOf(known.map((p) => p.hostPid).filter((pid) => pid > 0));
    for (const pid of descendants) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    for (const p of known) this.kill(p);
    return known.length + descendants.length;
  }

  kill(p: TrackedProcess): void {
    if (p.pidfd >= 0) signalPidfd(p.pidfd, SIGKILL);
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

  /** Every process with a known pid, served or finished. */
  hostPids(): number[] {
    return [...this.byUffd.values(), ...this.finished].map((p) => p.hostPid).filter((pid) => pid > 0);
  }
}

const SIGKILL = 9;
const SIGSTOP = 19;

function signalPidfd(pidfd: number, sig: number): void {
  try {
    native.pidfdSendSignal(pidfd, sig);
  } catch {
    // exited meanwhile
  }
}

/** Parent pid of every process now, from /proc/PID/stat (field 4, after the parenthesised name). */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      out.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  return out;
}

/**
 * Every descendant of `roots`, looked for a few times over a few ms: a fork already under way when
 * its parent was stopped completes (its FORK event read by the drain) and its child appears late.
 */
export function descendantsOf(roots: number[]): number[] {
  const found = new Set<number>();
  for (let round = 0; round < 3; round++) {
    const ppid = parents();
    const tree = new Set(roots);
    let grew = true;
    while (grew) {
      grew = false;
      for (const [pid, parent] of ppid) {
        if (!tree.has(pid) && tree.has(parent)) {
          tree.add(pid);
          grew = true;
        }
      }
    }
    for (const pid of tree) if (!roots.includes(pid)) found.add(pid);
    if (round < 2) Atomics.wait(PAUSE, 0, 0, 2);
  }
  return [...found];
}

const PAUSE = new Int32Array(new SharedArrayBuffer(4));
