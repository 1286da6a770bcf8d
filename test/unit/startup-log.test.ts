// The text log (src/cli/log.ts) is written without pino, which costs ~25 ms of CPU to load at every
// start: its lines must stay those of pino's records formatted as text, field for field.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { formatTextLine, makeLogger } from '../../src/cli/log';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-startup-log-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function calls(log: Logger): void {
  log.info({ socket: '/tmp/x y/lazy-pages.socket', tasks: 3, workers: 2 }, 'waiting for the restorer');
  log.debug({ vpid: 7, hostPid: 1234, uffd: 21, shard: 1 }, 'process handed over');
  log.debug({ vpid: 7, hostPid: undefined, faults: 10, copies: 0 }, 'process restored');
  log.warn({ peerPid: 99 }, 'refused a second connection on lazy-pages.socket: one restorer per daemon');
  log.error({ killed: [5, 6] }, 'fail-stop: page server 10.0.0.1:27000 closed the connection\n  twice');
  log.info({ pid: 42, reason: 'the process exited (ESRCH)' }, 'process gone before completion');
  log.info('restore finished: filling in the background');
  log.warn('--status-fd 9: EBADF: bad file descriptor, write');
  log.info({ empty: '', quote: 'a"b', eq: 'a=b', nested: { a: [1, 'x'] }, nan: NaN, t: true, n: null }, '');
  log.info({ only: 'fields' });
  log.error(new Error('boom'));
  log.fatal({ err: new TypeError('bad type') }, 'with an error field');
}

t.test('text lines are those of pino records formatted as text', async (t) => {
  const textFile = path.join(dir, 'text.log');
  const jsonFile = path.join(dir, 'json.log');
  const text = makeLogger({ verbosity: 4, logFile: textFile, workDir: dir, format: 'text' });
  const json = makeLogger({ verbosity: 4, logFile: jsonFile, workDir: dir, format: 'json' });
  calls(text);
  calls(json);
  const stripTs = (l: string) => l.replace(/^\(\d+\.\d{6}\) /, '');
  const got = fs.readFileSync(textFile, 'utf8').split('\n').filter(Boolean).map(stripTs);
  const want = fs
    .readFileSync(jsonFile, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => stripTs(formatTextLine(l, '(00.000000)').replace(/\n$/, '')));
  t.equal(got.length, 12, 'one line per call');
  t.same(got, want);
  t.match(got[0], new RegExp(`^${process.pid}: waiting for the restorer socket="/tmp/x y/lazy-pages.socket" tasks=3 workers=2$`));
  t.match(got[4], /Error \(faultline\): fail-stop: .* connection; twice killed=\[5,6\]$/);
  t.match(got[5], /process gone before completion vpid=42 reason=/);
});

t.test('levels follow the verbosity, as with pino', async (t) => {
  for (const verbosity of [0, 1, 2, 3, 4]) {
    const file = path.join(dir, `v${verbosity}.log`);
    const log = makeLogger({ verbosity, logFile: file, workDir: dir });
    calls(log);
    const json = makeLogger({ verbosity, logFile: file + '.json', workDir: dir, format: 'json' });
    calls(json);
    const n = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).length;
    t.equal(n(file), n(file + '.json'), `-v${verbosity}: ${n(file)} lines`);
    t.equal(log.isLevelEnabled('debug'), json.isLevelEnabled('debug'), `-v${verbosity}: isLevelEnabled('debug')`);
    t.equal(log.isLevelEnabled('warn'), json.isLevelEnabled('warn'), `-v${verbosity}: isLevelEnabled('warn')`);
  }
});

t.test('the text logger does not load pino', async (t) => {
  const loaded = () => Object.keys(require.cache).some((k) => k.includes(`${path.sep}node_modules${path.sep}pino${path.sep}`));
  // This file loaded it for the json cases above; a fresh process shows what the text path loads.
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path.resolve(__dirname, '../../src/cli/log.js'))}).makeLogger({ verbosity: 4, logFile: '-', workDir: '.' }).info('x'); console.log(Object.keys(require.cache).some((k) => k.includes('/node_modules/pino/')))`], { encoding: 'utf8' });
  t.match(r.stdout, /x\nfalse\n$/, r.stderr);
  t.ok(loaded(), 'pino is still what --log-format json uses');
});
