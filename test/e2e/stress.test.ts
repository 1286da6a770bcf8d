// 64 processes with several threads each fork, mremap, DONTNEED and munmap while faults and the
// background fill race them, over random seeds (printed: replay with FAULTLINE_STRESS_SEED). Every
// page is verified; the daemon's fds and RSS must come back to where they were when it became ready.
import t from 'tap';
import { runRestore } from '../../src/target/run';
import { chaosTree, makeImages, tempDir } from '../helpers/restore';

const PROCESSES = 64;
const THREADS = 2;
const STEPS = 12;
const ROUNDS = Number(process.env.FAULTLINE_STRESS_ROUNDS ?? 2);

const tree = chaosTree(PROCESSES, 30);

for (let round = 0; round < ROUNDS; round++) {
  const seed = Number(process.env.FAULTLINE_STRESS_SEED ?? Math.floor(Math.random() * 1e9)) + round;
  // Odd rounds with more workers than CPUs: more fill leases taken by workers that do not own the
  // process, racing its events from further away.
  const workers = round % 2 ? 4 : 2;
  t.test(`stress round ${round + 1}: ${PROCESSES} processes × ${THREADS} threads, ${workers} workers, chaos seed ${seed}`, async (t) => {
    t.comment(`replay: FAULTLINE_STRESS_SEED=${seed} FAULTLINE_STRESS_ROUNDS=1`);
    const dir = tempDir(t, 'stress');
    const r = await runRestore({
      imagesDir: makeImages(dir, tree),
      workDir: dir,
      timeoutMs: 120_000,
      daemonArgs: ['--workers', String(workers)],
      target: { threads: THREADS, pattern: 'random', fraction: 0.3, seed, extraArgs: ['--chaos', `${seed}:${STEPS}`] },
    });
    t.equal(r.daemon.code, 0, `daemon exits 0 ${r.daemon.stderr.trim().slice(0, 500)}`);
    t.equal(r.target.code, 0, `target exits 0 ${r.target.stderr.trim().split('\n').filter((l) => !l.includes('chaos pid')).join(' ').slice(0, 500)}`);
    t.equal(r.target.summary?.mismatches, 0, '0 mismatched bytes');
    const events: Record<string, number> = {};
    for (const p of r.target.processes) {
      for (const [k, v] of Object.entries((p as { events?: Record<string, number> }).events ?? {})) events[k] = (events[k] ?? 0) + v;
    }
    const pages = r.target.processes.reduce((a, p) => a + p.verified, 0);
    t.comment(`scale: ${r.target.processes.length} processes (${r.daemon.summary?.processes} restored by the daemon), ${THREADS} threads each, events ${JSON.stringify(events)}, ${pages} pages verified`);
    t.ok((events.fork ?? 0) + (events.mremap ?? 0) + (events.dontneed ?? 0) + (events.unmap ?? 0) > 0, 'events happened');
    const s = r.daemon.summary;
    t.equal(s?.workers, workers, `${workers} workers`);
    t.comment(`fill leases: ${s?.leases} taken, ${s?.leasesHelped} by a worker that does not own the process (${s?.pagesFilledByHelpers} pages)`);
    const res = r.daemon.summary?.resources;
    t.ok(res, 'daemon reported its resources');
    // Every uffd, pidfd, socket, epoll set and worker thread the daemon opened is closed again
    // (one fewer than at start: the --status-fd was closed once ready).
    t.ok((res?.fdsAtEnd ?? Infinity) <= (res?.fdsAtStart ?? 0), `daemon fds back to their level before the restore (${res?.fdsAtStart} → ${res?.fdsAtEnd}; ${res?.fdsAtReady} at ready)`);
    t.ok((res?.rssAtEndKiB ?? Infinity) - (res?.rssAtReadyKiB ?? 0) < 64 * 1024, `daemon RSS back near its level at ready: ${res?.rssAtReadyKiB} → ${res?.rssAtEndKiB} KiB`);
  });
}
