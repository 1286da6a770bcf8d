// The native core (native/src): thin syscall wrappers. Errors it throws carry `code` (errno name),
// `errno` and `syscall`; UFFDIO_COPY / ZEROPAGE / POISON errors also carry `done` (bytes filled
// before the failure).
import * as path from 'node:path';

export interface ErrnoError extends Error {
  code: string;
  errno: number;
  syscall: string;
  done?: number;
}

export interface RecvResult {
  data: Buffer;
  fds: number[];
  /** Sender's pid from SCM_CREDENTIALS, 0 if none arrived. */
  pid: number;
  truncated: boolean;
}

export interface NativeCore {
  uffdCreate(flags?: number): number;
  uffdApi(fd: number, features: bigint): { features: bigint; ioctls: bigint };
  uffdRegister(fd: number, start: number, len: number, mode: number): bigint;
  uffdUnregister(fd: number, start: number, len: number): void;
  uffdWake(fd: number, start: number, len: number): void;
  uffdCopy(fd: number, dst: number, src: Buffer, srcOffset: number, len: number, mode: number): number;
  uffdZeropage(fd: number, start: number, len: number, mode: number): number;
  uffdPoison(fd: number, start: number, len: number): number;
  uffdConstants: Record<string, number>;

  epollCreate(): number;
  epollAdd(epfd: number, fd: number, ring: number): void;
  epollDel(epfd: number, fd: number): void;
  drain(epfd: number, rings: Uint8Array[], firstRing?: number): number;
  setGuardian(fd: number): void;
  /** A memfd whose first word counts drains between a read and its guardian sends (WATCH). */
  guardReadingWord(): number;
  ringLayout(): Record<string, number>;
  monotonicNs(): number;
  FdWatcher: new (fd: number, onReady: (status: number) => void) => { stop(): void };

  unixListen(path: string, backlog: number): number;
  unixAccept(fd: number): { fd: number; pid: number; uid: number; gid: number } | null;
  /** An exclusive flock on path (created 0600); throws (code EWOULDBLOCK) when another process holds it. */
  lockFile(path: string): number;
  /** fcntl(F_GETFL) & O_ACCMODE; throws EBADF for a closed fd. */
  fdAccessMode(fd: number): number;
  unixPeer(fd: number): { fd: number; pid: number; uid: number; gid: number };
  /** guard: every fd received reaches the guardian (setGuardian) before it leaves the socket. */
  unixRecv(fd: number, maxBytes: number, guard?: boolean): RecvResult | null;
  unixConnect(path: string, seqpacket?: boolean): number;
  unixSend(fd: number, data: Buffer, fds: number[]): number;
  unixSocketpair(): [number, number];
  closeFd(fd: number): void;
  shutdownFd(fd: number): void;
  pidfdOpen(pid: number): number;
  pidfdSendSignal(pidfd: number, signal: number): void;

  mmapFile(path: string): Buffer;
  /** A private anonymous mapping of `len` bytes, by address only (the fault path's warm-up). */
  mapAnonymous(len: number): number;
  unmap(address: number, len: number): void;

  /**
   * UFFDIO_COPY of `nRuns` runs ([dst, srcOffset, len] triples in `runs`) from `src`, in slices of
   * `slicePages`, entering `gate`'s copy gate for every ioctl with the owner's event `epoch`. Stops
   * early when a record waits in `watch`, or a uffd in `epfd` is readable, after `yieldAtNs`. Returns a FillStatus; `out` gets
   * [bytes dealt with, pages already present, errno, ioctls].
   */
  fillRuns(
    uffd: number,
    gate: Uint8Array,
    epoch: number,
    src: Buffer,
    runs: Float64Array,
    nRuns: number,
    slicePages: number,
    watch: Uint8Array | null,
    yieldAtNs: number,
    out: Float64Array,
    epfd?: number,
  ): number;
  fillStatus: { DONE: number; YIELDED: number; EVENT: number; ERRNO: number };
  /** Involuntary context switches of the calling thread so far. */
  threadPreemptions(): number;
}

function load(): NativeCore {
  // dist/src/native.js → <root>/build/Release; also works from src/ under a TS loader.
  for (const up of ['../..', '..']) {
    try {
      return require(path.resolve(__dirname, up, 'build/Release/faultline_native.node')) as NativeCore;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  throw new Error('faultline: the native addon is not built (build/Release/faultline_native.node): run `npm ci` or `npm run build`');
}

export const native: NativeCore = load();

export function isErrno(e: unknown, ...codes: string[]): e is ErrnoError {
  return e instanceof Error && typeof (e as ErrnoError).code === 'string' && (codes.length === 0 || codes.includes((e as ErrnoError).code));
}
