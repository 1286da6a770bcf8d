// Remote lazy restore with real CRIU on either side: `criu dump` of the workload tree, then
// `criu restore --lazy-pages` served by a lazy-pages daemon that takes every lazy page from a page
// server, in each pairing (criu's server + faultline's client, faultline's server + criu's client,
// faultline on both ends), across two network namespaces, and with mutual TLS. The daemon's images
// have no pages-*.img, so every lazy page crossed the connection; the restored processes verify every
// word themselves. Like CRIU's, both page servers serve one restore and exit 0.
import t from 'tap';
import { criuSkip } from '../helpers/criu';
import {
  assertExits,
  assertVerified,
  criuNetnsDown,
  criuNetnsUp,
  dumpWorkload,
  lazyRestore,
  makeCerts,
  netnsWhy,
  opensslWhy,
  type Dumped,
  type LazyRunOptions,
} from '../helpers/criu-restore';
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

const PROCS = 4;
const MIB = 8;

// One dump per action serves every restore of this file (criu restore leaves the images as they are).
const dumps = new Map<string, Promise<Dumped>>();
function dump(action: 'verify' | 'events'): Promise<Dumped> {
  let d = dumps.get(action);
  if (!d) {
    d = dumpWorkload(t, `criu-remote-${action}`, { procs: PROCS, mib: MIB, threads: 2, action });
    dumps.set(action, d);
  }
  return d;
}

async function pairing(t: Test, action: 'verify' | 'events', o: LazyRunOptions): Promise<void> {
  const d = await dump(action);
  const run = await lazyRestore(t, d, o);
  assertVerified(t, d, run.results);
  assertExits(t, run, o);
  const s = run.daemon.summary;
  if (s) {
    // Forked children arrive through UFFD_EVENT_FORK unless the fill completed their parent first.
    if (action === 'events') t.ok(s.processes >= PROCS && s.processes <= 2 * PROCS, `faultline restored ${s.processes} processes (${PROCS} to ${2 * PROCS})`);
    else t.equal(s.processes, PROCS, `faultline restored ${s.processes} processes`);
    t.ok(s.pagesByFault > 0, `faultline: ${s.pagesByFault} pages by fault, ${s.pagesByFill} by fill`);
    // seen twice in whole-suite runs (0 by fault and 0 by fill, lazyPages 0, every word verified): keep
    // what the daemon said, and what criu restore's log says about lazy pages and userfaultfd
    if (s.pagesByFault === 0) {
      let restoreLog = '';
      try {
        restoreLog = fs.readFileSync(path.join(run.workDir, 'restore.log'), 'utf8').split('\n').filter((l) => /lazy|uffd|userfault|page.?server|Error/i.test(l)).slice(0, 40).join('\n');
      } catch (e) {
        restoreLog = `(no restore.log: ${(e as Error).message})`;
      }
      t.comment(`summary: ${JSON.stringify(s)}\ndaemon stderr: ${run.daemon.stderr.slice(-2000)}\ncriu restore log (lazy/uffd lines):\n${restoreLog}`);
    }
  }
  t.comment(`${o.name}: every result ${run.resultsMs.toFixed(0)} ms after criu restore started, daemon exit at ${run.daemonExitMs.toFixed(0)} ms`);
}

const skip = criuSkip();

t.test('criu page-server --lazy-pages + faultline lazy-pages --page-server (one lane)', { skip }, (t) =>
  pairing(t, 'verify', { name: 'criu-fl', server: 'criu', daemon: 'faultline' }),
);

t.test('faultline page-server --lazy-pages + criu lazy-pages --page-server', { skip }, (t) =>
  pairing(t, 'verify', { name: 'fl-criu', server: 'faultline', daemon: 'criu' }),
);

t.test('faultline page-server --lazy-pages + faultline lazy-pages --page-server', { skip }, (t) =>
  pairing(t, 'verify', { name: 'fl-fl', server: 'faultline', daemon: 'faultline' }),
);

t.test('criu page-server + faultline lazy-pages: fork, mremap, swap, DONTNEED, munmap while pages are remote', { skip }, (t) =>
  pairing(t, 'events', { name: 'criu-fl-events', server: 'criu', daemon: 'faultline' }),
);

const nsWhy = skip || (netnsWhy() && `network namespaces unavailable: ${netnsWhy()}`);
t.test('across two network namespaces: page server in one, lazy daemon and criu restore in the other', { skip: nsWhy }, async (t) => {
  criuNetnsUp();
  t.teardown(criuNetnsDown);
  t.test('criu page-server + faultline lazy-pages', (t) => pairing(t, 'verify', { name: 'ns-criu-fl', server: 'criu', daemon: 'faultline', netns: true }));
  t.test('faultline page-server + criu lazy-pages', (t) => pairing(t, 'verify', { name: 'ns-fl-criu', server: 'faultline', daemon: 'criu', netns: true }));
});

const tlsWhy = skip || opensslWhy();
t.test('mutual TLS against real CRIU, certificates signed by a test CA', { skip: tlsWhy }, async (t) => {
  const d = await dump('verify');
  // the name check passes: both certificates carry the server's address (criu checks both peers against it)
  const named = makeCerts(path.join(d.dir, 'certs-ip'), '127.0.0.1');
  // these carry only a DNS name: they pass only with --tls-no-cn-verify, as zdtm runs
  const unnamed = makeCerts(path.join(d.dir, 'certs-dns'), undefined);
  t.test('criu page-server --tls + faultline lazy-pages --tls (name checked)', (t) =>
    pairing(t, 'verify', { name: 'tls-criu-fl', server: 'criu', daemon: 'faultline', tls: { files: named } }),
  );
  t.test('faultline page-server --tls + criu lazy-pages --tls (name checked)', (t) =>
    pairing(t, 'verify', { name: 'tls-fl-criu', server: 'faultline', daemon: 'criu', tls: { files: named } }),
  );
  t.test('criu page-server + faultline lazy-pages, --tls-no-cn-verify', (t) =>
    pairing(t, 'verify', { name: 'tls-nocn-criu-fl', server: 'criu', daemon: 'faultline', tls: { files: unnamed, noCnVerify: true } }),
  );
  t.test('faultline page-server + criu lazy-pages, --tls-no-cn-verify', (t) =>
    pairing(t, 'verify', { name: 'tls-nocn-fl-criu', server: 'faultline', daemon: 'criu', tls: { files: unnamed, noCnVerify: true } }),
  );
});
