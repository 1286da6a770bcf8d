// native/bin/faultline-engine-client, the C client of `faultline serve`: a drop-in for `faultline
// lazy-pages --engine` (itself a drop-in for `criu lazy-pages`) without Node's start-up. Concurrent
// restores through it verify every page (the restore target does); what it prints and its exit
// status are the Node client's, for a summary (text and --json), no engine, refused flags, a full
// engine, an engine that dies or talks nonsense, and a corrupt image (which fails its own restore
// only); readiness through --status-fd and -d --pidfile; SIGTERM to it fail-stops its restore only,
// and takes a queued one out of the queue.
import t, { type Test } from 'tap';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { CLI, ENGINE_CLIENT, TARGET, collect, parseTargetOutput, runRestore, targetArgs, type Exit, type RestoreResult, type TargetOptions } from '../../src/target/run';
import { writeTargetPlan } from '../../src/target/plan';
import { askEngineStatus } from '../../src/cli/status';
import { startEngine, until, type EngineProcess } from '../helpers/engine';
import { MiB, assertRestored, assertStopped, denseTree, makeImages, tempDir } from '../helpers/restore';

type Client = 'c' | 'node';
const command = (c: Client, args: string[]): [string, string[]] => (c === 'c' ? [ENGINE_CLIENT, args] : [process.execPath, [CLI, 'lazy-pages', ...args]]);

/** A client whose restorer never comes: its restore holds an engine slot until it is stopped. */
function holder(c: Client, images: string, workDir: string, socket: string, extra: string[] = []): { child: ChildProcess; exit: Promise<Exit> } {
  fs.mkdirSync(workDir, { recursive: true });
  const child = spawn(...command(c, ['-D', images, '-W', workDir, '--engine', socket, ...extra]), { stdio: ['ignore', 'pipe', 'pipe'] });
  return { child, exit: collect(child) };
}

const ran = (r: SpawnSyncReturns<string>) => ({ status: r.status, stdout: r.stdout, stderr: r.stderr });
/** Numbers (times, counts, pids) vary between two restores; the words and their order must not. */
// (the "first fault" line and "already present" depend on whether a fault came first or the fill)
const skeleton = (s: string) => s.replace(/\d+(\.\d+)?/g, 'N').replace(/, N already present/, '').replace(/^ {2}first fault .*\n/m, '');
/** A summary's fields, but for those present only when a fault came before the fill was done. */
const fields = (o: object | undefined) => Object.keys(o ?? {}).filter((k) => !/FirstFault/.test(k)).sort();
/** A log line's time and pid are the process's own. */
const unstamped = (s: string) => s.replace(/^\(\d+\.\d+\) \d+: /gm, '(T) PID: ');

interface Restored {
  client: Exit;
  target?: Exit & ReturnType<typeof parseTargetOutput>;
}

/** One restore without runRestore's --json: the client with --status-fd 3 and any flags, then the restore target. */
async function restoreWith(c: Client, images: string, workDir: string, args: string[], target: TargetOptions = { pattern: 'random', fraction: 0.5 }): Promise<Restored> {
  fs.mkdirSync(workDir, { recursive: true });
  const plan = path.join(workDir, 'target.plan');
  writeTargetPlan(images, plan, path.join(workDir, 'lazy-pages.socket'));
  for (let attempt = 0; ; attempt++) {
    const child = spawn(...command(c, ['-D', images, '-W', workDir, '--status-fd', '3', ...args]), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    const exit = collect(child);
    const ready = await new Promise<boolean>((resolve) => {
      const status = child.stdio[3] as NodeJS.ReadableStream;
      status.once('data', () => resolve(true));
      status.once('end', () => resolve(false));
    });
    if (!ready) return { client: await exit };
    const tgt = spawn(TARGET, targetArgs(plan, target), { stdio: ['ignore', 'pipe', 'pipe'] });
    const targetExit = collect(tgt);
    void targetExit.then(() => setTimeout(() => child.exitCode === null && child.kill('SIGTERM'), 2000).unref());
    const client = await exit;
    if (tgt.exitCode === null) tgt.kill('SIGUSR1');
    const te = await targetExit;
    // 3: the target could not map a VMA at its dump-time address (ASLR collision): run it again
    if (te.code === 3 && attempt < 2) continue;
    return { client, target: { ...te, ...parseTargetOutput(te.stdout) } };
  }
}

function assertVerified(t: Test, r: Restored, processes: number, name: string): void {
  t.equal(r.client.code, 0, `${name}: the client exits 0 ${r.client.stderr.trim()}`);
  t.equal(r.target?.code, 0, `${name}: the target exits 0 ${r.target?.stderr.trim()}`);
  t.equal(r.target?.processes.length, processes, `${name}: every process reported`);
  for (const p of r.target?.processes ?? []) t.ok(p.verified === p.pages && p.mismatches === 0, `${name}: pid ${p.pid}: ${p.verified} of ${p.pages} pages verified, ${p.mismatches} mismatches`);
}

t.test('concurrent restores through the C client verify every page; its summary is the Node client\'s, as text and as --json', async (t) => {
  const dir = tempDir(t, 'engine-c');
  const images = makeImages(dir, denseTree(2, 32 * MiB));
  const engine = await startEngine(t, dir, ['--workers', '2']);
  const json = (c: Client, i: number) =>
    runRestore({ imagesDir: images, workDir: path.join(dir, `${c}${i}`), daemon: c === 'c' ? 'engine-client' : 'faultline', daemonArgs: ['--engine', engine.socket], target: { pattern: 'random', fraction: 0.5, seed: i, threads: 2 }, retries: 2 });
  const [c0, c1, c2, n0, cText, nText] = await Promise.all([
    json('c', 0),
    json('c', 1),
    json('c', 2),
    json('node', 0),
    restoreWith('c', images, path.join(dir, 'c-text'), ['--engine', engine.socket, '--fault-around', '32', '--fill-chunk', '256']),
    restoreWith('node', images, path.join(dir, 'node-text'), ['--engine', engine.socket, '--fault-around', '32', '--fill-chunk', '256']),
  ]);
  for (const r of [c0, c1, c2, n0]) assertRestored(t, r, 2);
  for (const r of [c0, c1, c2]) {
    t.equal(r.daemon.stdout, JSON.stringify(r.daemon.summary) + '\n', '--json: one line, the summary as JSON.stringify writes it');
    t.same(fields(r.daemon.summary), fields(n0.daemon.summary), "--json: the Node client's fields");
    t.equal(r.daemon.stderr, '', 'nothing on stderr at the default verbosity');
  }
  assertVerified(t, cText, 2, 'C client, text summary');
  assertVerified(t, nText, 2, 'Node client, text summary');
  t.match(cText.client.stdout, /^faultline: restore complete\n {2}processes {8}2 restored/, 'the text summary');
  t.equal(skeleton(cText.client.stdout), skeleton(nText.client.stdout), `the same text as the Node client's, numbers aside:\n${cText.client.stdout}`);
  engine.child.kill('SIGTERM');
  t.equal((await engine.exit).code, 0);
});

t.test('the Node client\'s one line and exit status: no engine, refused and bad flags, a full engine, an engine that dies', async (t) => {
  const dir = tempDir(t, 'engine-c-errors');
  const images = makeImages(dir, denseTree(1, 16 * MiB));
  const nobody = path.join(dir, 'nobody.sock');
  const same = (args: string[], what: string, env: NodeJS.ProcessEnv = {}) => {
    const opts = { encoding: 'utf8' as const, env: { ...process.env, ...env } };
    const c = ran(spawnSync(...command('c', args), opts));
    const n = ran(spawnSync(...command('node', args), opts));
    t.same(c, n, `${what}: ${JSON.stringify(c)}`);
    return c;
  };
  const none = same(['-D', images, '--engine', nobody], 'no engine listens');
  t.equal(none.status, 1);
  t.match(none.stderr, /^faultline: error: --engine \S+nobody\.sock: no engine listens there \(start one with `faultline serve`\)\n$/);
  same(['-D', images, '--engine', nobody, '--json'], 'no engine listens, --json');
  same(['-D', images, '--json'], 'FAULTLINE_ENGINE in place of --engine', { FAULTLINE_ENGINE: nobody });
  same(['-D', images, '--engine', nobody, '--tcp-established', '-j', '--ext-unix-sk=x', '-v4', '--no-default-config', '--display-stats'], "criu's options that mean nothing here are dropped");
  for (const flag of [['--workers', '2'], ['--nice', '5'], ['--fill-nice', '3'], ['--tls'], ['--resume'], ['--recover-timeout', '3'], ['--no-guardian']]) {
    const r = same(['-D', images, '--engine', nobody, ...flag], `${flag[0]} is refused`);
    t.equal(r.status, 2, `${flag[0]}: exit 2`);
  }
  for (const bad of [['--config', 'x'], ['--stream'], ['-W', path.join(dir, 'missing')], ['--page-server'], ['--page-server', '--port', '70000'], ['--fault-around', '9999'], ['--status-fd', 'x'], ['--bogus'], ['-D'], ['--tls-key', 'k'], ['--request-order', 'x', '--page-server', '--port', '1'], ['stray']]) {
    const r = same(['-D', images, '--engine', nobody, ...bad], `bad command line ${bad.join(' ')}`);
    t.equal(r.status, 2, `${bad.join(' ')}: exit 2`);
  }

  // A full engine refuses (--no-queue); an engine that dies ends its clients' restores in one line.
  const strict = await startEngine(t, path.join(dir, 'strict'), ['--workers', '1', '--max-restores', '2', '--no-queue']);
  const hc = holder('c', images, path.join(dir, 'hc'), strict.socket, ['--json']);
  const hn = holder('node', images, path.join(dir, 'hn'), strict.socket, ['--json']);
  await until('both restores to hold their slot', async () => (await askEngineStatus(strict.socket)).restores.filter((r) => r.state === 'waiting for the restorer').length === 2);
  const full = same(['-D', images, '-W', dir, '--engine', strict.socket, '--json'], 'the engine is full');
  t.match(full.stderr, /^faultline: error: the engine at \S+ is full: it serves 2 restores at once \(--max-restores\), and it does not queue \(--no-queue\)\n$/);
  strict.child.kill('SIGKILL');
  const [c, n] = await Promise.all([hc.exit, hn.exit]);
  t.same({ code: c.code, stdout: c.stdout, stderr: c.stderr }, { code: n.code, stdout: n.stdout, stderr: n.stderr }, `an engine killed under its clients: ${JSON.stringify(c)}`);
  t.match(c.stderr, /the engine closed the connection before the restore ended\n$/);
});

t.test('what the engine says, read as the Node client reads it: relative -D/-W, escapes, a malformed line', async (t) => {
  const dir = tempDir(t, 'engine-c-wire');
  fs.mkdirSync(path.join(dir, 'imgs'));
  fs.mkdirSync(path.join(dir, 'work'));
  const socket = path.join(dir, 'fake.sock');
  // A stand-in engine: records each request, answers with the next canned reply.
  let reply = '';
  const requests: object[] = [];
  const server = net.createServer((s) => {
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      got += d;
      if (!got.includes('\n')) return;
      requests.push(JSON.parse(got.split('\n')[0]!));
      s.end(reply);
    });
  });
  await new Promise<void>((r) => server.listen(socket, r));
  t.teardown(() => server.close());
  const both = async (args: string[], what: string) => {
    const out = [];
    for (const c of ['c', 'node'] as const) {
      const child = spawn(...command(c, args), { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
      const e = await collect(child);
      out.push({ code: e.code, stdout: e.stdout, stderr: unstamped(e.stderr) });
    }
    t.same(out[0], out[1], `${what}: ${JSON.stringify(out[0])}`);
    return out[0]!;
  };
  reply = JSON.stringify({ event: 'failed', error: 'a "quoted"\tword, a\\backslash, ü, \u0001 and a line\nbreak' }) + '\n';
  const failed = await both(['-D', 'imgs', '-W', './work/', '--engine', 'fake.sock', '--json', '--socket-group', '0', '--fault-around', '64', '--fill-chunk', '128', '--record-faults', 'rec', '--prefetch', 'imgs/../rec'], 'a failure with characters to escape');
  t.equal(failed.code, 1);
  t.same(requests[0], requests[1], 'the same request from both clients');
  t.same(requests[0], { op: 'restore', imagesDir: path.join(dir, 'imgs'), workDir: path.join(dir, 'work'), socketGid: 0, faultAround: 64, fillChunk: 128, recordFaults: path.join(dir, 'rec'), prefetch: path.join(dir, 'rec'), json: true }, 'relative -D, -W and files resolved against the cwd');
  requests.length = 0;
  await both(['-D', 'imgs', '--engine', 'fake.sock', '--page-server', '--address', '10.0.0.1', '--port', '7000', '--lanes', '2', '--request-order', 'fifo', '--reply-timeout-ms', '0'], 'a remote restore');
  t.same(requests[0], requests[1], 'the same remote request from both clients');
  t.match(requests[0], { pageServer: { address: '10.0.0.1', port: 7000, lanes: 2, connectTimeoutMs: 10000, replyTimeoutMs: 0, recoverTimeoutMs: 0, requestOrder: 'fifo' } });
  reply = '{"event":"queued","position":3}\n{"event":"done", "stdout":"x';
  const malformed = await both(['-D', 'imgs', '--engine', 'fake.sock', '--json'], 'a line cut short, then the connection closed');
  t.match(malformed.stderr, /^\(T\) PID: Warn  \(faultline\): the engine is full: this restore waits, number 3 in its queue\nfaultline: error: --engine \S+: the engine closed the connection before the restore ended\n$/);
  reply = '{"event":"done","stdout":"x"\n';
  const notJson = await both(['-D', 'imgs', '--engine', 'fake.sock', '--json'], 'a line that is not JSON');
  t.match(notJson.stderr, /^faultline: error: --engine \S+fake\.sock: the engine sent something that is not JSON: \{"event":"done","stdout":"x"\n$/);
  t.equal(notJson.code, 1);
  reply = '{"event":"done","summary":{"ok":true,"nested":[1,{"a":null}]},"stdout":"line 1\\nü \\ud83d\\ude00\\n"}\n';
  const done = await both(['-D', 'imgs', '--engine', 'fake.sock'], "'done': the engine's text, as is");
  t.same(done, { code: 0, stdout: 'line 1\nü 😀\n', stderr: '' });
  reply = '{"event":"done","summary":{"ok":true}}\n';
  // (not spawnSync: the stand-in engine answers from this process's event loop)
  const old = await collect(spawn(ENGINE_CLIENT, ['-D', 'imgs', '--engine', 'fake.sock'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }));
  t.equal(old.code, 1, "an engine whose 'done' has no text: exit 1");
  t.match(old.stderr, /^faultline: error: --engine \S+: the engine's 'done' has no stdout text \(an engine older than this client: update faultline serve\)\n$/, 'in one line');
});

t.test('a corrupt image fails its own restore only; the C client prints what the Node client prints', async (t) => {
  const dir = tempDir(t, 'engine-c-bad');
  const images = makeImages(dir, denseTree(2, 32 * MiB));
  const damaged = path.join(dir, 'damaged');
  fs.cpSync(images, damaged, { recursive: true });
  const pm = path.join(damaged, 'pagemap-2.img');
  fs.truncateSync(pm, fs.statSync(pm).size - 3);
  const engine = await startEngine(t, dir, ['--workers', '2']);
  const run = (c: Client, name: string, imgs: string) =>
    runRestore({ imagesDir: imgs, planImagesDir: images, workDir: path.join(dir, name), daemon: c === 'c' ? 'engine-client' : 'faultline', daemonArgs: ['--engine', engine.socket], target: { pattern: 'random', fraction: 0.5, threads: 2 }, retries: 0 });
  const [good, badC, badNode] = await Promise.all([run('c', 'good', images), run('c', 'bad-c', damaged), run('node', 'bad-node', damaged)]);
  assertRestored(t, good, 2);
  assertStopped(t, badC, /pagemap-2\.img/);
  assertStopped(t, badNode, /pagemap-2\.img/);
  const norm = (s: string) => skeleton(s.replace(/bad-(c|node)/g, 'W'));
  t.equal(badC.daemon.code, badNode.daemon.code, 'the same exit status');
  t.equal(norm(badC.daemon.stdout), norm(badNode.daemon.stdout), `the same --json line: ${badC.daemon.stdout.trim()}`);
  t.equal(norm(badC.daemon.stderr), norm(badNode.daemon.stderr), 'the same error line');
  engine.child.kill('SIGTERM');
  t.equal((await engine.exit).code, 0);
});

t.test('readiness: -d detaches once the engine listens (--pidfile, --status-fd, -o); without an engine it fails in one line', async (t) => {
  const dir = tempDir(t, 'engine-c-daemon');
  const images = makeImages(dir, denseTree(2, 16 * MiB));
  const engine = await startEngine(t, dir, ['--workers', '2']);
  const work = path.join(dir, 'w');
  fs.mkdirSync(work);
  const plan = path.join(work, 'target.plan');
  writeTargetPlan(images, plan, path.join(work, 'lazy-pages.socket'));
  const parent = spawn(ENGINE_CLIENT, ['-D', images, '-W', work, '--engine', engine.socket, '-d', '--pidfile', 'client.pid', '--status-fd', '3', '-o', 'client.log', '--json', '-v3'], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  const parentExit = collect(parent);
  const said = new Promise<boolean>((resolve) => {
    const s = parent.stdio[3] as NodeJS.ReadableStream;
    s.once('data', () => resolve(true));
    s.once('end', () => resolve(false));
  });
  const pe = await parentExit;
  t.equal(pe.code, 0, `the -d parent exits 0 once ready ${pe.stderr}`);
  t.ok(await said, 'after one byte on --status-fd');
  const pid = Number(fs.readFileSync(path.join(work, 'client.pid'), 'utf8'));
  t.ok(pid > 0 && pid !== parent.pid, `--pidfile (relative to -W) has the detached client's pid ${pid}`);
  t.doesNotThrow(() => process.kill(pid, 0), 'which runs');
  t.teardown(() => void (fs.existsSync(`/proc/${pid}`) && process.kill(pid, 'SIGKILL')));
  const tgt = spawn(TARGET, targetArgs(plan, { pattern: 'random', fraction: 0.5 }), { stdio: ['ignore', 'pipe', 'pipe'] });
  const te = collect(tgt);
  await until('the detached client to exit once restored', () => !fs.existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8')), 60_000);
  tgt.kill('SIGUSR1');
  const target = parseTargetOutput((await te).stdout);
  t.equal(target.summary?.mismatches, 0, 'the target verified every page');
  t.ok(target.processes.length === 2 && target.processes.every((p) => p.verified === p.pages), 'every page of both processes');
  const log = fs.readFileSync(path.join(work, 'client.log'), 'utf8');
  t.match(log, /^\(\d+\.\d+\) \d+: the engine waits for the restorer socket=\S+lazy-pages\.socket session=\d+\n/, '-o: its log, -v3');
  const last = JSON.parse(log.trim().split('\n').pop()!);
  t.ok(last.ok && last.processes === 2, "its stdout went to the log: the summary, --json");

  const nobody = path.join(dir, 'nobody.sock');
  const args = ['-D', images, '-W', work, '--engine', nobody, '-d', '-o', 'gone.log'];
  const c = ran(spawnSync(...command('c', args), { encoding: 'utf8' }));
  const n = ran(spawnSync(...command('node', args), { encoding: 'utf8' }));
  t.same(c, n, `-d without an engine: the Node client's line and status ${JSON.stringify(c)}`);
  t.match(c.stderr, /^faultline: error: the lazy-pages daemon exited before it was ready \(see \S+gone\.log\)\n$/);
  t.match(fs.readFileSync(path.join(work, 'gone.log'), 'utf8'), /no engine listens there/, 'the reason is in its log');
  engine.child.kill('SIGTERM');
  t.equal((await engine.exit).code, 0);
});

t.test('SIGTERM to a C client fail-stops its restore only; one still queued leaves the queue', async (t) => {
  const dir = tempDir(t, 'engine-c-sigterm');
  const images = makeImages(dir, denseTree(2, 64 * MiB));
  const engine = await startEngine(t, dir, ['--workers', '2', '--max-restores', '2']);
  let sent = '';
  const seen: string[] = [];
  // The victim is SIGTERMed once the engine says its tree is handed over and less than half filled;
  // a restore that outran the poll, or completed before the stop reached the engine (a busy host),
  // is tried again, up to 3 times.
  const victim = async (): Promise<RestoreResult> => {
    for (let attempt = 0; ; attempt++) {
      const victimDir = path.join(dir, `victim${attempt}`);
      let over = false;
      const r = await runRestore({
        imagesDir: images,
        workDir: victimDir,
        daemon: 'engine-client',
        // one page per fill copy: a longer restore, to be caught in the middle
        daemonArgs: ['--engine', engine.socket, '--fill-chunk', '1'],
        target: { pattern: 'random', fraction: 0.5, threads: 2 },
        retries: 0,
        onStarted: (client) => {
          void until('the victim to be mid-restore', async () => {
            if (over) return true;
            const x = (await askEngineStatus(engine.socket)).restores.find((y) => y.workDir === victimDir);
            seen.push(JSON.stringify(x));
            // pages 0: the workers have not published this restore's progress yet, so it is far from done
            if (!x || !(x.state === 'restoring' || x.state === 'filling') || (x.pages > 0 && 2 * x.pagesDone >= x.pages)) return false;
            sent = `${x.state}, ${x.pagesDone} of ${x.pages} pages`;
            client.kill('SIGTERM');
            return true;
          }, 30_000, 2).catch(() => undefined);
        },
      });
      over = true;
      if ((sent && r.daemon.code !== 0) || attempt === 2) return r;
      sent = '';
    }
  };
  const bystander = runRestore({ imagesDir: images, workDir: path.join(dir, 'bystander'), daemon: 'engine-client', daemonArgs: ['--engine', engine.socket], target: { pattern: 'random', fraction: 0.5, threads: 2 }, retries: 0 });
  const [v, b] = await Promise.all([victim(), bystander]);
  t.ok(sent, `SIGTERM sent mid-restore (${sent || seen.join(' ')})`);
  assertStopped(t, v, /^faultline: error: faultline lazy-pages --engine received SIGTERM before the restore completed; the restored processes were stopped$/);
  t.same(JSON.parse(v.daemon.stdout), { ok: false, error: 'faultline lazy-pages --engine received SIGTERM before the restore completed; the restored processes were stopped' }, '--json: {ok: false, error}');
  assertRestored(t, b, 2);

  // Two restores hold both slots; a third waits in the queue until SIGTERM takes it out.
  const h1 = holder('c', images, path.join(dir, 'h1'), engine.socket);
  const h2 = holder('c', images, path.join(dir, 'h2'), engine.socket);
  await until('both slots held', async () => (await askEngineStatus(engine.socket)).restores.filter((r) => r.state === 'waiting for the restorer').length === 2);
  const queued = holder('c', images, path.join(dir, 'q'), engine.socket, ['--json']);
  let qErr = '';
  queued.child.stderr!.on('data', (d: Buffer) => (qErr += String(d)));
  await until('the third to be queued', () => /number 1 in its queue/.test(qErr));
  queued.child.kill('SIGTERM');
  const q = await queued.exit;
  t.equal(q.code, 1, 'the queued client exits 1');
  t.match(q.stderr, /faultline: error: faultline lazy-pages --engine received SIGTERM before the restore completed; the restore had not started\n$/, 'in one line');
  t.match(JSON.parse(q.stdout), { ok: false }, '--json');
  const st = await askEngineStatus(engine.socket);
  t.equal(st.queued, 0, 'the queue is empty');
  t.equal(st.restores.length, 2, 'the two held restores go on');
  // A stop that reaches the engine before its request (a client signalled while it connected): that
  // restore never starts.
  const early = await new Promise<string>((resolve, reject) => {
    const s = net.createConnection(engine.socket);
    let text = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`{"op":"stop","reason":"stopped early"}\n${JSON.stringify({ op: 'restore', imagesDir: images, workDir: path.join(dir, 'h1') })}\n`));
    s.on('data', (d: string) => (text += d));
    s.on('error', reject);
    s.on('close', () => resolve(text));
  });
  t.same(JSON.parse(early.split('\n')[0]!), { event: 'failed', error: 'stopped early; the restore had not started' }, 'a stop before its request: the request is refused');
  h1.child.kill('SIGTERM');
  h2.child.kill('SIGTERM');
  for (const h of [await h1.exit, await h2.exit]) t.match(h.stderr, /received SIGTERM before the restore completed; the restored processes were stopped\n$/);
  engine.child.kill('SIGTERM');
  t.equal((await engine.exit).code, 0);
});
