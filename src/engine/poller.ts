// Poller: one epoll set over every uffd, watched from libuv. On readiness a single native call moves
// every pending uffd_msg into the owning worker's ring; JS then wakes just the rings it touched.
import { native } from '../native';
import { RingProducer, createRingBuffer } from './ring';
import { RecordKind } from './ring-layout';

export class Poller {
  private readonly epfd: number;
  private readonly watcher: { stop(): void };
  readonly rings: RingProducer[];
  private readonly views: Uint8Array[];
  private closed = false;

  constructor(shards: number, ringCapacity: number) {
    this.rings = Array.from({ length: shards }, () => new RingProducer(createRingBuffer(ringCapacity)));
    this.views = this.rings.map((r) => r.bytes);
    this.epfd = native.epollCreate();
    this.watcher = new native.FdWatcher(this.epfd, () => this.drain());
  }

  private drain(): void {
    let touched = native.drain(this.epfd, this.views);
    for (let i = 0; touched; i++, touched >>>= 1) if (touched & 1) this.rings[i].notify();
  }

  /** The PROCESS record goes into the ring before the uffd joins epoll, so it precedes its faults. */
  addProcess(uffd: number, shard: number, pid: number, hostPid: number): void {
    this.push(shard, RecordKind.PROCESS, uffd, pid, hostPid);
    native.epollAdd(this.epfd, uffd, shard);
  }

  /** A forked child: the worker already knows it (it handled the FORK event); just watch it. */
  watch(uffd: number, shard: number): void {
    native.epollAdd(this.epfd, uffd, shard);
  }

  unwatch(uffd: number): void {
    native.epollDel(this.epfd, uffd);
  }

  broadcast(kind: RecordKind, ...payload: number[]): void {
    for (let s = 0; s < this.rings.length; s++) this.push(s, kind, -1, ...payload);
  }

  private push(shard: number, kind: RecordKind, fd: number, ...payload: number[]): void {
    const ring = this.rings[shard];
    if (!ring.push(kind, fd, native.monotonicNs(), ...payload)) throw new Error(`ring of worker ${shard} is full`);
    ring.notify();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.stop();
    native.closeFd(this.epfd);
  }
}
