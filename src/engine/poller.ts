// Poller: an epoll set per shard over its uffds, each watched from libuv (through a second set that
// holds it while its worker may sleep: Poller.watchedEpfds). On readiness a single
// native call moves every pending uffd_msg into the shard's ring; JS then wakes that worker. A busy
// worker also drains its own set between background chunks (no cross-thread wake when it is already
// running); READING in the ring header keeps the two from producing at once.
import { native } from '../native';
import { RingProducer, createRingBuffer } from '../protocol/ring';
import { pushProcess } from '../protocol/ring-records';

export class Poller {
  /** Per shard, the epoll set of its uffds: drained by the main thread and by the worker itself. */
  readonly epfds: number[];
  /**
   * Per shard, the set the main thread watches: it holds the shard's set while its worker may be
   * asleep. A worker busy filling takes its set out (it reads its uffds itself between slices), so
   * that a fault does not also wake the main thread, which would take a CPU from the fill or from
   * the faulting thread for nothing.
   */
  readonly watchedEpfds: number[];
  private readonly watchers: { stop(): void }[];
  readonly rings: RingProducer[];
  private readonly views: Uint8Array[];
  private closed = false;

  constructor(shards: number, ringCapacity: number) {
    this.rings = Array.from({ length: shards }, () => new RingProducer(createRingBuffer(ringCapacity)));
    this.views = this.rings.map((r) => r.bytes);
    this.epfds = this.rings.map(() => native.epollCreate());
    this.watchedEpfds = this.epfds.map((epfd, shard) => {
      const watched = native.epollCreate();
      native.epollAdd(watched, epfd, shard);
      return watched;
    });
    this.watchers = this.watchedEpfds.map((watched, shard) => new native.FdWatcher(watched, () => this.drain(shard)));
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
    for (const fd of [...this.watchedEpfds, ...this.epfds]) native.closeFd(fd);
  }
}
