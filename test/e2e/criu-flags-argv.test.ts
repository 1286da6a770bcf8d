// Every option of criu's parser (criu/config.c, 4.2) on `faultline lazy-pages` and `faultline
// page-server`: implemented, ignored where it means nothing for the command, or refused with one
// line that names it. The translation itself, then the real command line.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { criuOptionTable, translateCriuArgv, type CriuCommand } from '../../src/cli/criu-options';
import { CLI } from '../../src/target/run';

const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000 });

t.test('verbosity as criu counts it', async (t) => {
  const v = (...a: string[]) => translateCriuArgv('lazy-pages', a).argv;
  t.same(v('-v'), ['--verbosity=3']);
  t.same(v('-vvv'), ['--verbosity=5']);
  t.same(v('-v4'), ['--verbosity=4']);
  t.same(v('--verbosity=1'), ['--verbosity=1']);
  t.same(v('--verbosity'), ['--verbosity=3']);
  t.same(v('-v', '-v'), ['--verbosity=4']);
  t.same(v('-v0', '-v'), ['--verbosity=1']);
  t.throws(() => v('--verbosity=lots'), /verbosity must be a number/);
});

t.test('getopt forms: =value, separate value, clusters, --no-, short with attached value', async (t) => {
  const a = (...x: string[]) => translateCriuArgv('page-server', x).argv;
  t.same(a('--port=27000', '--address', '10.0.0.1'), ['--port', '27000', '--address', '10.0.0.1']);
  t.same(a('-Dimgs', '-W', 'w', '-o-'), ['--images-dir', 'imgs', '--work-dir', 'w', '--log-file', '-']);
  t.same(a('-dv4'), ['--daemon', '--verbosity=4'], '-dv4 is -d -v4');
  t.same(a('--tls', '--no-tls'), [], 'the last of --tls/--no-tls wins');
  t.same(a('--restore-detached'), ['--daemon'], '--restore-detached is -d in criu (one field)');
  t.same(a('--no-daemon', '-d'), ['--daemon']);
  t.same(a('--keep-serving', '--lazy-pages'), ['--keep-serving', '--lazy-pages'], "faultline's own options pass through");
  t.throws(() => a('--port'), /option '--port' needs an argument/);
  t.throws(() => a('--tls=yes'), /option '--tls' takes no argument/);
});

t.test('the table: every criu option has a disposition; refusals name the option', async (t) => {
  for (const cmd of ['lazy-pages', 'page-server'] as CriuCommand[]) {
    const table = criuOptionTable(cmd);
    t.equal(table.length, 85, `${cmd}: ${table.length} criu options`);
    for (const [name, d] of table) {
      if (d !== 'use') t.ok(d[1].length > 10, `${cmd} --${name}: ${d[0]} says why`);
    }
  }
  const ignored = translateCriuArgv('lazy-pages', ['--shell-job', '-j', '--tcp-established', '-x', '--ext-unix-sk=123', '--manage-cgroups=full', '--tree', '42', '-t42', '--log-pid', '--no-default-config', '--timeout', '10', '--lazy-pages']);
  t.same(ignored.argv, [], 'ignored options (and their arguments) are dropped');
  t.equal(ignored.ignored.length, 12);
});

// Options whose meaning matters and that faultline does not do, or that criu itself rejects here.
const REFUSED: [string[], RegExp][] = [
  [['--config', '/etc/criu/x.conf'], /option '--config' is not supported: faultline does not read criu configuration files/],
  [['--stream'], /option '--stream' is not supported/],
  [['--auto-dedup'], /option '--auto-dedup' is not supported: faultline never punches/],
  [['--ps-socket', '5'], /option '--ps-socket' is not supported/],
  [['--inherit-fd', 'fd[3]:pipe[1]'], /option '--inherit-fd' is not supported: a restore-only option/],
  [['--exec-cmd'], /option '--exec-cmd' is not supported/],
  [['--mntns-compat-mode'], /option '--mntns-compat-mode' is not supported/],
  [['--ms'], /option '--ms' is not supported/],
];

for (const cmd of ['lazy-pages', 'page-server']) {
  t.test(`${cmd}: refused options exit 2 with one line naming them`, async (t) => {
    for (const [args, msg] of REFUSED) {
      const r = run(cmd, '-D', '/nonexistent', ...(cmd === 'page-server' ? ['--lazy-pages'] : []), ...args);
      t.equal(r.status, 2, `${args[0]}: exit 2`);
      t.equal(r.stderr.split('\n').length, 2, `${args[0]}: one line`);
      t.match(r.stderr, new RegExp(`^faultline: error: ${cmd}: ${msg.source}`), args[0]!);
    }
    const tls = run(cmd, '--lazy-pages', '-D', '/nonexistent', '--tls-cert', 'c.pem');
    t.equal(tls.status, 2);
    t.equal(tls.stderr, 'faultline: error: --tls-cert given without --tls: the connection would not be encrypted\n');
  });

  t.test(`${cmd}: ignored options are accepted (the run fails later, on the missing images, not on them)`, async (t) => {
    const r = run(cmd, '--no-default-config', '--shell-job', '--tcp-established', '--ext-unix-sk', '--manage-cgroups=soft', '--file-locks', '--link-remap', '--log-pid', '--timeout', '10', '-R', '--evasive-devices', '--lazy-pages', '--page-server', '--images-dir', '/nonexistent/imgs', '--port', '27000');
    t.equal(r.status, 1, r.stderr);
    t.match(r.stderr, /^faultline: error: inventory\.img: .*\/nonexistent\/imgs/);
    t.notMatch(r.stderr, /option/);
  });
}

t.test('page-server without --lazy-pages is refused with the reason', async (t) => {
  const r = run('page-server', '-D', '/tmp', '--port', '27000');
  t.equal(r.status, 2);
  t.match(r.stderr, /^faultline: error: page-server needs --lazy-pages: faultline's page server only serves lazy restores/);
  t.equal(r.stderr.split('\n').length, 2);
});

t.test('-h and -V exit 0', async (t) => {
  const h = run('page-server', '-h');
  t.equal(h.status, 0);
  t.match(h.stdout, /--keep-serving/);
  for (const args of [['lazy-pages', '-V'], ['--version'], ['-V']]) {
    const v = run(...args);
    t.equal(v.status, 0, `${args.join(' ')}: exit 0`);
    t.match(v.stdout, /^Version: \d+\.\d+\.\d+ \(faultline\)\n$/, `${args.join(' ')}: criu's shape, with whose version it is`);
  }
});
