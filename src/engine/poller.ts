// Poller: an epoll set per shard over its uffds, each watched from libuv. On readiness a single
// native call moves every pending uffd_msg into the shard's ring; JS then wakes that worker. A busy
// worker also drains its own set between background chunks (no cross-thread wake when it is already
// running); READING in the ring header keeps the two from producing at once.
import { native } from '../native';
import { RingProducer, createRingBuffer } from '../protocol/ring';
import { pushProcess } from '../protocol/ring-records';

export class Poller {
  readonly epfds: number[];
  private readonly watchers: { stop(): void }[];
  readonly rings: RingProducer[];
  private readonly views: Uint8Array[];
  private closed = false;

  constructor(shards: number, ringCapacity: number) {
    this.rings = Array.from({ length: shards }, () => new RingProducer(createRingBuffer(ringCapacity)));
    this.views = this.rings.map((r) => r.bytes);
    this.epfds = this.rings.map(() => native.epollCreate());
    this.watchers = this.epfds.map((epfd, shard) => new native.FdWatcher(epfd, () => this.drain(shard)));
  }

  private drain(shard: number): void {
    if (native.drain(this.epfds[shard], [this.views[shard]], shard)) this.rings[shard].notify();
  }

  /** The PROCESS record goes into the ring before the uffd joins epoll, so it precedes its faults. */
  addProcess(uffd: number, shard: number, pid: number, hostPid: number, session: number): void {
    this.push(shard, (ring) => pushProcess(ring, uffd, pid, hostPid, session));
    native.epollAdd(this.epfds[shard], uffd, shard);
  }

  /** A forked child: the worker already knows it (it handled the FORK event); just watch it. */
  watch(uffd: number, shard: number): void {
    native.epollAdd(this.epfds[shard], uffd, shard);
  }

  unwatch(uffd: number, shard: number): void {
    native.epollDel(this.epfds[shard], uffd);
  }

  /** One control record (ring-records.ts) into every worker's ring. */
  broadcast(push: (ring: RingProducer) => boolean): void {
    for (let s = 0; s < this.rings.length; s++) this.push(s, push);
  }

  private push(shard: number, push: (ring: RingProducer) => boolean): void {
    const ring = this.rings[shard];
    if (!push(ring)) throw new Error(`ring of worker ${shard} is full`);
    ring.notify();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.watchers) w.stop();
    for (const fd of this.epfds) native.closeFd(fd);
  }
}
