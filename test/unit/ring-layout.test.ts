// The ring layout is declared twice (native/src/ring.h and src/protocol/ring-layout.ts); they must agree.
import t from 'tap';
import { RING, RecordKind, UFFD_MSG } from '../../src/protocol/ring-layout';
import { RingConsumer, RingProducer, createRingBuffer } from '../../src/protocol/ring';
import { native } from '../../src/native';

t.test('TypeScript and C agree on every offset and record kind', async (t) => {
  const c = native.ringLayout();
  for (const [k, v] of Object.entries(RING)) t.equal(c[k], v, k);
  t.equal(c.UFFD_MSG, RecordKind.UFFD_MSG);
  t.equal(c.PROCESS, RecordKind.PROCESS);
  t.equal(c.RESTORE_FINISHED, RecordKind.RESTORE_FINISHED);
  t.equal(c.STOP, RecordKind.STOP);
  t.equal(c.UFFD_ERROR, RecordKind.UFFD_ERROR);
  t.equal(c.UFFD_MSG_BYTES, UFFD_MSG.BYTES);
});

t.test('records go through in order, wrap around, and a full ring refuses', async (t) => {
  const sab = createRingBuffer(4);
  const p = new RingProducer(sab);
  const c = new RingConsumer(sab);
  const seen: number[] = [];
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 4; i++) t.ok(p.push(RecordKind.PROCESS, round * 4 + i, 0, 100 + i), 'push');
    t.notOk(p.push(RecordKind.PROCESS, 99, 0), 'full');
    t.equal(c.available(), 4);
    c.consume((r) => seen.push(r.fd * 1000 + c.i32At(r.at)));
  }
  t.same(seen, Array.from({ length: 20 }, (_, i) => i * 1000 + 100 + (i % 4)));
  t.throws(() => createRingBuffer(3), /power of two/);
});

t.test('drain with nothing pending leaves the ring empty; bad rings and closed fds are errors', async (t) => {
  // Real events (faults, from real processes) are exercised end to end in test/e2e.
  const uffd = native.uffdCreate(native.uffdConstants.O_CLOEXEC | native.uffdConstants.O_NONBLOCK);
  const api = native.uffdApi(uffd, 0n);
  t.ok((api.ioctls & (1n << 0x3fn)) !== 0n || api.ioctls > 0n, 'UFFDIO_API answers with the ioctls it offers');
  const epfd = native.epollCreate();
  native.epollAdd(epfd, uffd, 0);
  const sab = createRingBuffer(16);
  const c = new RingConsumer(sab);
  t.equal(native.drain(epfd, [new Uint8Array(sab)]), 0, 'nothing pending');
  t.equal(c.available(), 0);
  t.throws(() => native.drain(epfd, [new Uint8Array(8) as Uint8Array]), /not a ring buffer/);
  native.epollDel(epfd, uffd);
  native.closeFd(uffd);
  native.closeFd(epfd);
  t.throws(() => native.uffdCopy(uffd, 0x1000, Buffer.alloc(4096), 0, 4096, 0), { code: 'EBADF', syscall: 'UFFDIO_COPY' }, 'errors carry the errno name');
});
