// The fault path, run once on a region of the worker's own before any restored thread can wait on
// it. V8 compiles a function on its first call: in a real CRIU restore of a 1 GiB process the first
// fault, which criu restore itself waits on (its restorer touches the stack), took 1.4–1.6 ms in the
// worker and the PROCESS record before it 0.5–2 ms (docs/DESIGN.md, "The first fault").
import { PAGE_SIZE } from '../address';
import { native } from '../native';
import { RingConsumer, createRingBuffer } from '../protocol/ring';
import type { Tuning } from '../protocol/tuning';
import type { PageSource } from '../source/page-source';
import { LazyProcess } from './lazy-process';

const PAGES = 64;

/**
 * A uffd of this process over a private anonymous region (nothing else in the process knows its
 * address, so no thread can fault on it), served by a LazyProcess from a buffer: a fault, a
 * sequential one, one in a hole (zero page), and a fill lease's bookkeeping. Returns the ms it took
 * and the region's address (unmapped again), or the reason it could not run (a kernel or policy
 * without userfaultfd here: the first real fault then pays for the compiling).
 */
export function warmFaultPath(tuning: Tuning): { ms: number; region: number } | string {
  const t0 = performance.now();
  const len = PAGES * PAGE_SIZE;
  let uffd = -1;
  let addr = 0;
  try {
    // User-mode faults only: nothing faults on the region at all, and such a uffd needs no privilege
    // where vm.unprivileged_userfaultfd is 0 (the daemon itself only receives CRIU's uffds).
    const { O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY } = native.uffdConstants;
    uffd = native.uffdCreate(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    native.uffdApi(uffd, 0n);
    addr = native.mapAnonymous(len);
    native.uffdRegister(uffd, addr, len, native.uffdConstants.UFFDIO_REGISTER_MODE_MISSING);
    const data = Buffer.alloc(len, 0x5a);
    const source: PageSource = {
      locate: (imgAddr, maxPages) => {
        const page = (imgAddr - addr) / PAGE_SIZE;
        if (page < 0 || page >= PAGES - 8) return null;
        return { buf: data, offset: page * PAGE_SIZE, pages: Math.min(maxPages, PAGES - 8 - page) };
      },
    };
    // The last 8 pages are a hole: registered, with no data in the "images".
    const lazy = [{ start: addr, end: addr + (PAGES - 8) * PAGE_SIZE }];
    const gate = new RingConsumer(createRingBuffer(64));
    const p = LazyProcess.fromImages(uffd, 0, source, lazy, [{ start: addr, end: addr + len }], tuning, gate);
    p.fault(addr + 3 * PAGE_SIZE);
    p.fault(addr + 3 * PAGE_SIZE + tuning.faultAroundMin * PAGE_SIZE);
    p.fault(addr + (PAGES - 4) * PAGE_SIZE);
    const runs = p.leaseNext(4).map((r) => ({ dst: r.start, imgStart: r.imgStart, pages: (r.end - r.start) / PAGE_SIZE }));
    if (runs.length) p.leaseSettled(runs, { dealt: 0, existing: 0, stop: 'done' });
    return { ms: Math.round((performance.now() - t0) * 100) / 100, region: addr };
  } catch (e) {
    return (e as Error).message;
  } finally {
    if (uffd >= 0) native.closeFd(uffd);
    if (addr) native.unmap(addr, len);
  }
}
