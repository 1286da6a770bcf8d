// CRIU's own test suite, zdtm, with faultline as the lazy-pages daemon and the lazy page server
// (issue 8, point 5): a representative subset of CRIU CI's lazy-pages selection, run through
// scripts/zdtm.sh exactly as `npm run zdtm` runs the whole of it — zdtm.py calls
// scripts/criu-faultline as its criu, with zdtm's own arguments, and checks each test's memory and
// state after the lazy restore itself. The subset: a map-heavy test, a futex test, uffd events
// (fork, mremap, madvise after restore) and a forking tree; locally, and remote with faultline on
// both sides (faultline) and with CRIU's own lazy-pages client against faultline's page server
// (faultline-ps). About a minute here; the whole selection is `npm run zdtm` (docs/zdtm.md).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CRIU_SKIP_PREFIX, criuSkip } from '../helpers/criu';
import { ROOT } from '../helpers/restore';

const CRIU_SRC = process.env.CRIU_SRC ?? '/opt/criu-4.2';
const SUBSET = ['zdtm/static/maps00', 'zdtm/static/futex', 'zdtm/static/uffd-events', 'zdtm/transition/fork'];
// FAULTLINE_ZDTM_MODES=local,remote,tls to try the subset in other modes (scripts/zdtm.sh --modes)
const MODES = (process.env.FAULTLINE_ZDTM_MODES ?? 'local,remote').split(',');
const DAEMONS = ['faultline', 'faultline-ps'];
/** scripts/zdtm.sh runs faultline-ps only where there is a page server */
const daemonsOf = (mode: string) => DAEMONS.filter((d) => mode !== 'local' || d === 'faultline');

/** Why this machine cannot run zdtm, or false. The reason starts with CRIU_SKIP_PREFIX so that CI,
 * where ../shared/criu exists, counts the skip as a failure (scripts/run-tests.mjs). */
function zdtmSkip(): string | false {
  const noCriu = criuSkip();
  if (noCriu) return noCriu;
  if (process.getuid?.() !== 0) return `${CRIU_SKIP_PREFIX}: zdtm needs root`;
  // scripts/zdtm.sh extracts and builds the tree from ../shared/criu when that is present.
  const shared = fs.existsSync(path.join(ROOT, '..', 'shared', 'criu', 'build.sh'));
  if (!shared && !fs.existsSync(path.join(CRIU_SRC, 'test', 'zdtm.py')))
    return `${CRIU_SKIP_PREFIX}: no CRIU source tree with zdtm at CRIU_SRC=${CRIU_SRC} (test/zdtm.py), and no ../shared/criu to build one from`;
  return false;
}

interface Row {
  mode: string;
  daemon: string;
  iter: string;
  test: string;
  status: string;
}

function tail(file: string, n: number): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

/** The block zdtm printed for one test (with -p 2 each test's output is printed whole, when it ends). */
function zdtmBlock(log: string, test: string): string[] {
  const lines = log.split('\n');
  const start = lines.findIndex((l) => new RegExp(`^=+ Run ${test.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} in \\w+ =+$`).test(l));
  if (start < 0) return [];
  const end = lines.findIndex((l, i) => i > start && (/^=+ Run \S+ in \w+ =+$/.test(l) || /^=== Run \d+\/\d+ /.test(l) || /^#+ \d+ TEST\(S\) FAILED/.test(l)));
  return lines.slice(start, end < 0 ? undefined : end);
}

/** What to show for a failed test: zdtm's verdict and the error lines it quoted for this test, and the
 * daemons' own last log lines, from the dump directory that scripts/zdtm.sh keeps for failed tests. */
function excerpt(out: string, row: Row): string {
  const dir = path.join(out, row.mode, row.daemon, row.iter);
  const parts: string[] = [];
  let log = '';
  try {
    log = fs.readFileSync(path.join(dir, 'zdtm.log'), 'utf8');
  } catch {
    // no log: the daemon logs below are all there is
  }
  const noise = /RLIMIT_NOFILE|Hardware breakpoints|^\s*File "|^\s*\^+$/;
  const telling = /FAIL|faultline|Error|error|Timeout|timed out|exited with/;
  parts.push(zdtmBlock(log, row.test).filter((l) => telling.test(l) && !noise.test(l)).slice(0, 25).join('\n'));
  const name = row.test.replace(/\//g, '_');
  // <test>_<flavour>/images/<iteration>/ (zdtm's copy; scripts/zdtm.sh's is <test>_unknown)
  const flavours = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.startsWith(`${name}_`)) : [];
  for (const images of flavours.map((f) => path.join(dir, f, 'images')).filter((d) => fs.existsSync(d))) {
    for (const iter of fs.readdirSync(images)) {
      for (const f of ['lazy-pages.log', 'page-server.log', 'restore.log']) {
        const text = tail(path.join(images, iter, f), f === 'restore.log' ? 5 : 15);
        if (text) parts.push(`--- ${path.join(images, iter, f)} (tail)\n${text}`);
      }
    }
  }
  return parts.filter(Boolean).join('\n');
}

t.test('zdtm lazy-pages subset with faultline as the daemon', { skip: zdtmSkip(), timeout: 230_000 }, async (t) => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'faultline-zdtm-test-'));
  const tests = `(${SUBSET.join('|')})$`;
  const started = Date.now();
  const r = spawnSync('bash', [path.join(ROOT, 'scripts/zdtm.sh'), '--tests', tests, '--modes', MODES.join(','), '--daemons', DAEMONS.join(','), '--out', out], {
    encoding: 'utf8',
    // a running `npm run zdtm` holds zdtm's lock: say so within the test's time rather than hang
    env: { ...process.env, ZDTM_LOCK_WAIT: '60' },
    timeout: 220_000,
    killSignal: 'SIGTERM',
  });
  t.comment(`zdtm subset: ${((Date.now() - started) / 1000).toFixed(0)} s; results in ${out}`);
  const results = path.join(out, 'results.tsv');
  if (!fs.existsSync(results) || r.error) {
    t.fail(`scripts/zdtm.sh did not run zdtm (exit ${r.status ?? r.signal}${r.error ? `, ${r.error.message}` : ''}):\n${(r.stderr + r.stdout).trim().split('\n').slice(-30).join('\n')}`);
    return;
  }
  const rows: Row[] = fs
    .readFileSync(results, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [mode, daemon, iter, test, status] = l.split('\t');
      return { mode, daemon, iter, test, status };
    });
  for (const mode of MODES) {
    for (const daemon of daemonsOf(mode)) {
      const mine = rows.filter((x) => x.mode === mode && x.daemon === daemon);
      const broken = mine.find((x) => x.status === 'error');
      if (broken) {
        t.fail(`${mode} ${daemon}: zdtm.py did not report:\n${tail(path.join(out, mode, daemon, broken.iter, 'zdtm.log'), 30)}`);
        continue;
      }
      for (const test of SUBSET) {
        const row = mine.find((x) => x.test === test);
        if (!row) {
          t.fail(`${mode} ${daemon}: ${test} was not in zdtm's report`);
          continue;
        }
        // zdtm skips a test only for a reason of its own (flavour, kernel feature): say so, don't hide it
        if (row.status === 'skip') {
          t.comment(`${mode} ${daemon}: zdtm skipped ${test}`);
          continue;
        }
        if (row.status === 'pass') t.pass(`${mode} ${daemon}: ${test}`);
        else t.fail(`${mode} ${daemon}: ${test} failed\n${excerpt(out, row)}`);
      }
    }
  }
  t.equal(r.status, 0, `scripts/zdtm.sh exit status\n${r.stdout.split('\n').filter((l) => l.startsWith('REGRESSION')).join('\n')}`);
  if (r.status === 0 && !process.env.FAULTLINE_KEEP_ZDTM) fs.rmSync(out, { recursive: true, force: true });
});
