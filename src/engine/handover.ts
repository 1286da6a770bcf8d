// Parser for the restorer → daemon stream on lazy-pages.socket (criu-lazy-pages.md §2): per process
// an int32 pid (negative: zombie, nothing follows) then one byte carrying the uffd in SCM_RIGHTS;
// after exactly nr_tasks processes the u32 RESTORE_FINISHED; then EOF. The kernel may split or merge
// these writes arbitrarily, so this is a byte-stream state machine fed whatever recvmsg returned.
import { HandoverProtocolError } from './errors';

export const RESTORE_FINISHED = 0x52535446;

export type HandoverEvent =
  | { type: 'process'; pid: number; uffd: number; senderPid: number }
  | { type: 'zombie'; pid: number }
  | { type: 'finished' };

export class HandoverParser {
  private buf: Buffer = Buffer.alloc(0);
  private readonly fds: number[] = [];
  private seen = 0;
  private pendingPid: number | null = null;
  private finished = false;
  private eof = false;

  constructor(
    private readonly nrTasks: number,
    private readonly peer: string,
  ) {}

  /** Feeds one recvmsg result. Returns the events it completed; throws HandoverProtocolError on garbage. */
  feed(data: Buffer, fds: number[], senderPid: number): HandoverEvent[] {
    if (this.eof) throw this.error('data after EOF');
    this.fds.push(...fds);
    if (data.length === 0) {
      this.eof = true;
      if (!this.finished) {
        throw this.error(`connection closed before RESTORE_FINISHED (after ${this.seen} of ${this.nrTasks} processes)`);
      }
      return [];
    }
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    const out: HandoverEvent[] = [];
    for (;;) {
      if (this.finished) {
        if (this.buf.length) throw this.error(`${this.buf.length} unexpected bytes after RESTORE_FINISHED`);
        if (this.fds.length) throw this.error('file descriptors sent after RESTORE_FINISHED');
        return out;
      }
      if (this.pendingPid !== null) {
        if (this.buf.length < 1) return out;
        // Fds are matched to processes in order: a merged read may carry several at once, ahead of
        // the bytes they belong to.
        const uffd = this.fds.shift();
        if (uffd === undefined) throw this.error(`pid ${this.pendingPid}: the hand-over byte came without a uffd (no SCM_RIGHTS)`);
        this.buf = this.buf.subarray(1);
        out.push({ type: 'process', pid: this.pendingPid, uffd, senderPid });
        this.pendingPid = null;
        this.seen++;
        continue;
      }
      if (this.buf.length < 4) return out;
      const word = this.buf.readInt32LE(0);
      this.buf = this.buf.subarray(4);
      if (this.seen === this.nrTasks) {
        if (word >>> 0 !== RESTORE_FINISHED) {
          throw this.error(`expected RESTORE_FINISHED (0x52535446) after ${this.nrTasks} processes, got 0x${(word >>> 0).toString(16)}`);
        }
        if (this.fds.length) throw this.error(`${this.fds.length} file descriptors more than processes`);
        this.finished = true;
        out.push({ type: 'finished' });
        continue;
      }
      if (word >>> 0 === RESTORE_FINISHED) {
        throw this.error(`RESTORE_FINISHED after ${this.seen} of ${this.nrTasks} processes (pstree.img lists ${this.nrTasks})`);
      }
      if (word === 0) throw this.error('pid 0 is not a process');
      if (word < 0) {
        out.push({ type: 'zombie', pid: -word });
        this.seen++;
        continue;
      }
      this.pendingPid = word;
    }
  }

  /** Bytes of a record begun but not complete (a pid without its byte, part of a pid): 0 between records. */
  partialBytes(): number {
    return this.buf.length + (this.pendingPid !== null ? 4 : 0);
  }

  /** Fds received but not yet handed out (to close on error). */
  leftoverFds(): number[] {
    return this.fds.splice(0);
  }

  private error(what: string): HandoverProtocolError {
    return new HandoverProtocolError(`${this.peer}: ${what}`);
  }
}
