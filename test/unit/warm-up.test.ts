// The fault path's warm-up (src/worker/warm-up.ts): it runs the real fault path once with real
// userfaultfd ioctls on a region of the process's own, and leaves nothing behind: no uffd, no
// registered region. It needs userfaultfd for this process (root here; preflight checks the rest).
import t from 'tap';
import * as fs from 'node:fs';
import { warmFaultPath } from '../../src/worker/warm-up';
import { DEFAULT_TUNING } from '../../src/protocol/tuning';

function uffds(): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[userfaultfd]') n++;
    } catch {
      // the directory's own fd, closed by now
    }
  }
  return n;
}

/** Whether a mapping of this process starts at `address`. */
const mapped = (address: number) => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').some((l) => l.startsWith(`${address.toString(16)}-`));

t.test('serves its faults with real ioctls and leaves no uffd and no mapping behind', async (t) => {
  const before = uffds();
  const r = warmFaultPath(DEFAULT_TUNING);
  if (typeof r === 'string') return t.fail(`it could not run: ${r}`);
  t.ok(r.ms >= 0, `it ran, in ${r.ms} ms`);
  t.ok(r.region > 0, `on a region at 0x${r.region.toString(16)}`);
  t.equal(uffds(), before, 'its uffd is closed');
  t.notOk(mapped(r.region), 'its region is unmapped');
  t.type(warmFaultPath(DEFAULT_TUNING), 'object', 'and it runs again');
});

t.test('a failure on the way says why and still closes the uffd and unmaps the region', async (t) => {
  const before = uffds();
  // A fault-around that no window can have: the fault path throws after the uffd and region exist.
  const why = warmFaultPath({ ...DEFAULT_TUNING, faultAroundMin: Number.NaN, faultAroundMax: Number.NaN });
  t.type(why, 'string', `it reports the failure: ${why}`);
  t.equal(uffds(), before, 'its uffd is closed');
});
