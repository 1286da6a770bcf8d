// The commonest real case: one big process (a database, a JVM, a cache). Every worker fills it on
// fill leases while it forks, mremaps, madvises and unmaps; every page is verified.
import t from 'tap';
import { runRestore } from '../../src/target/run';
import { MiB, denseTree, makeImages, tempDir } from '../helpers/restore';

const WORKERS = 3;

t.test(`one 1 GiB process filled by all ${WORKERS} workers while it runs the event script`, async (t) => {
  const dir = tempDir(t, 'big');
  const images = makeImages(dir, denseTree(1, 1024 * MiB));
  const script = [
    'touch:0-64',
    'mremap:1000-3000>s0',
    'touch:s0-s64',
    'dontneed:5000-6000',
    'touch:5000-5100',
    'fork',
    'touch:100000-100200',
    'unmap:7000-9000',
    'swap:20000-22000,30000-32000',
    'touch:20000-20100',
    'shrink:40000-50000-2000',
    'grow:40000-48000+16',
    'touch:200000-200300',
  ].join(',');
  const r = await runRestore({
    imagesDir: images,
    workDir: dir,
    timeoutMs: 120_000,
    daemonArgs: ['--workers', String(WORKERS)],
    target: { fraction: 0.02, pattern: 'random', threads: 2, extraArgs: ['--script', script] },
  });
  t.equal(r.daemon.code, 0, `daemon exits 0 ${r.daemon.stderr.trim().slice(0, 500)}`);
  t.equal(r.target.code, 0, `target exits 0 ${r.target.stderr.trim().slice(0, 500)}`);
  t.equal(r.target.summary?.mismatches, 0, 'no byte differs from what the program must see');
  t.equal(r.target.processes.length, 2, 'the process and its forked child reported');
  for (const p of r.target.processes) t.equal(p.mismatches, 0, `pid ${p.pid}${(p as { forkOf?: number }).forkOf ? ' (forked)' : ''}: 0 mismatches over ${p.verified} pages`);
  const s = r.daemon.summary!;
  t.equal(s.workers, WORKERS);
  t.ok(s.leasesHelped > 0 && s.pagesFilledByHelpers > 0, `workers that do not own the process filled it: ${s.leasesHelped} of ${s.leases} leases, ${s.pagesFilledByHelpers} pages`);
  t.comment(`fill ${s.pagesByFill} pages, faults ${s.faults}, fork children restored: ${s.processes - 1}`);
});
