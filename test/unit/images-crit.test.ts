import t from 'tap';
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PE_LAZY, PE_PRESENT, writeImageSet } from '../../src/images';
import { PAGE_SIZE } from '../../src/address';

// Debian's crit (package criu) is an independent decoder of the image format.
function findCrit(): string | null {
  const r = spawnSync('sh', ['-c', 'command -v crit'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

const crit = findCrit();
const A = 0x7f7700000000;

type CritImage = { magic: string; entries: Record<string, unknown>[] };
const decode = (dir: string, file: string): CritImage =>
  JSON.parse(execFileSync(crit!, ['decode', '-i', path.join(dir, file), '--pretty'], { encoding: 'utf8' })) as CritImage;

// Skipped with a visible reason when crit is missing, never a silent pass.
const skip = crit ? false : 'crit not installed (Debian package criu); run scripts/setup-test-deps.sh to install it';
{
  t.test('crit decodes faultline writer output', { skip }, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-crit-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    writeImageSet(dir, {
      processes: [
        {
          pid: 1,
          ppid: 0,
          vmas: [{ start: A, end: A + 64 * PAGE_SIZE }],
          entries: [
            { vaddr: A, nrPages: 3, flags: PE_LAZY | PE_PRESENT, data: Buffer.alloc(3 * PAGE_SIZE, 1) },
            { vaddr: A + 10 * PAGE_SIZE, nrPages: 7, flags: PE_PRESENT, data: Buffer.alloc(7 * PAGE_SIZE, 2) },
          ],
        },
        { pid: 4, ppid: 1, vmas: [], entries: [] },
      ],
    });
    const inv = decode(dir, 'inventory.img');
    t.equal(inv.magic, 'INVENTORY');
    t.equal(inv.entries[0]!.img_version, 2);
    t.equal(inv.entries[0]!.fdinfo_per_id, true);

    const ps = decode(dir, 'pstree.img');
    t.equal(ps.magic, 'PSTREE');
    t.same(
      ps.entries.map((e) => [e.pid, e.ppid, e.threads]),
      [
        [1, 0, [1]],
        [4, 1, [4]],
      ],
    );

    const mm = decode(dir, 'mm-1.img');
    t.equal(mm.magic, 'MM');
    const vmas = mm.entries[0]!.vmas as Record<string, unknown>[];
    t.equal(vmas.length, 1);
    t.equal(vmas[0]!.start, '0x' + A.toString(16));
    t.equal(vmas[0]!.end, '0x' + (A + 64 * PAGE_SIZE).toString(16));

    const pm = decode(dir, 'pagemap-1.img');
    t.equal(pm.magic, 'PAGEMAP');
    t.same(pm.entries[0], { pages_id: 1 });
    // crit from CRIU < 4.2 names field 2 `nr_pages`; 4.2's names it compat_nr_pages and adds field 5.
    const count = (e: Record<string, unknown>) => Number(e.nr_pages ?? e.compat_nr_pages);
    t.same(
      pm.entries.slice(1).map((e) => [e.vaddr, count(e), e.flags]),
      [
        ['0x' + A.toString(16), 3, 'PE_LAZY | PE_PRESENT'],
        ['0x' + (A + 10 * PAGE_SIZE).toString(16), 7, 'PE_PRESENT'],
      ],
    );
    t.same(decode(dir, 'pagemap-4.img').entries, [{ pages_id: 2 }]);
  });
}
