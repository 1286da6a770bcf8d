// A page server that stops answering, or goes away and comes back (issue 10). Without recovery the
// tree is stopped (never left waiting forever, never reading zeros); with --recover-timeout-ms the
// daemon dials again, sends what was left unanswered, and the restore completes byte-exact.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runRestore, startPageServer, type PageServerProcess, type RestoreRunOptions } from '../../src/target/run';
import { freePort } from '../helpers/criu-restore';
import { BASE, MiB, assertRestored, assertStopped, makeImages, tempDir, withoutPages } from '../helpers/restore';

/** Three 32 MiB processes; the restoring side has no pages files, so every page crosses the link. */
function images(t: Test, name: string): { full: string; local: string; dir: string } {
  const dir = tempDir(t, name);
  const full = makeImages(dir, {
    processes: [1, 2, 3].map((pid) => ({
      pid,
      ppid: pid === 1 ? 0 : 1,
      regions: [{ name: 'dense', start: BASE, pages: 32 * MiB, kind: 'dense' as const, seed: 70 + pid }],
    })),
  });
  const local = withoutPages(full, dir);
  return { full, local, dir };
}


/** A restore whose page server meets `trouble` once the daemon logs RESTORE_FINISHED. */
async function troubled(t: Test, name: string, daemonArgs: string[], trouble: (server: PageServerProcess, port: number, images: string) => void | Promise<void>) {
  const im = images(t, name);
  const port = await freePort();
  const server = await startPageServer(im.full, { port });
  t.teardown(() => {
    try {
      server.child.kill('SIGCONT');
    } catch {
      /* gone */
    }
    return server.stop();
  });
  let struck = false;
  const opts: RestoreRunOptions = {
    imagesDir: im.local,
    planImagesDir: im.full,
    workDir: path.join(im.dir, 'work'),
    // one thread touching every page in order: it keeps faulting long after the trouble starts
    target: { pattern: 'seq', fraction: 1, threads: 1 },
    daemonArgs: ['--page-server', '--port', String(port), '-v3', '--fill-chunk', '16', ...daemonArgs],
    timeoutMs: 60_000,
    onDaemonStderr: (chunk) => {
      if (struck || !chunk.includes('restore finished')) return;
      struck = true;
      void trouble(server, port, im.full);
    },
  };
  const r = await runRestore(opts);
  t.ok(struck, 'the trouble started after RESTORE_FINISHED');
  return { r, im };
}

t.test('a page server that stops answering (SIGSTOP): --reply-timeout-ms stops the tree, naming the server', async (t) => {
  const { r } = await troubled(t, 'silent', ['--reply-timeout-ms', '800'], (server) => void server.child.kill('SIGSTOP'));
  assertStopped(t, r, /page server 127\.0\.0\.1:\d+: sent nothing for \d+ ms with \d+ requests outstanding on the page-server connection \(stopped, or the link is down\)/);
});

t.test('the page server killed and started again on its port: --recover-timeout-ms carries the restore through', async (t) => {
  const restarted: PageServerProcess[] = [];
  t.teardown(() => Promise.all(restarted.map((s) => s.stop())));
  const { r } = await troubled(t, 'restart', ['--recover-timeout-ms', '10000'], async (server, port, full) => {
    server.child.kill('SIGKILL');
    await server.exit;
    await new Promise((res) => setTimeout(res, 300));
    restarted.push(await startPageServer(full, { port }));
  });
  assertRestored(t, r, 3);
  t.match(r.daemon.stderr, /page server 127\.0\.0\.1:\d+: .*; reconnecting for up to \d+ ms/);
  t.match(r.daemon.stderr, /the page-server connection is back after \d+ ms; \d+ unanswered requests sent again/);
});

t.test('a page server stopped for a while: the silence is noticed, the reconnect waits, the restore completes', async (t) => {
  const { r } = await troubled(t, 'pause', ['--reply-timeout-ms', '300', '--recover-timeout-ms', '10000'], (server) => {
    server.child.kill('SIGSTOP');
    setTimeout(() => server.child.kill('SIGCONT'), 1500);
  });
  assertRestored(t, r, 3);
  t.match(r.daemon.stderr, /sent nothing for \d+ ms with \d+ requests outstanding.*reconnecting/);
});

t.test('a page server that never comes back: stopped once --recover-timeout-ms runs out', async (t) => {
  const { r } = await troubled(t, 'gone', ['--recover-timeout-ms', '700'], (server) => void server.child.kill('SIGKILL'));
  assertStopped(t, r, /page server 127\.0\.0\.1:\d+: .*lost \(.*\) and not back within --recover-timeout-ms 700/);
});
