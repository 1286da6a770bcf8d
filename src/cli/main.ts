#!/usr/bin/env node
// faultline: lazy (post-copy) restore of CRIU-checkpointed process trees.
import { Command, Option } from 'commander';
import { ImageError } from '../images/errors';
import { DEFAULT_VERBOSITY, translateCriuArgv, type CriuCommand } from './criu-options';
import { CRIU_TLS_CACERT, CRIU_TLS_CACRL, CRIU_TLS_CERT, CRIU_TLS_KEY } from './criu-tls';
import { lazyPages, type LazyPagesFlags } from './lazy-pages';
import { closeQuietly } from './log';
import { UsageError } from './usage-error';

const VERSION: string = (require('../../../package.json') as { version: string }).version;

/** The options criu's users pass to both commands (criu/config.c), as commander sees them after translateCriuArgv. */
function criuCommon(cmd: Command): Command {
  return cmd
    .option('-D, --images-dir <dir>', 'directory with the checkpoint images', '.')
    .option('-W, --work-dir <dir>', 'where relative -o/--pidfile/--tls-* paths and lazy-pages.socket go (default: the images directory)')
    .option('-d, --daemon', 'detach once ready (also --restore-detached, as in criu)')
    .option('--pidfile <file>', 'write our pid here once ready')
    .option('--status-fd <fd>', 'write one NUL byte to this fd once ready, then close it')
    .option('-o, --log-file <file>', "log here instead of stderr ('-': stdout); the file is truncated, as criu does")
    .addOption(new Option('--verbosity <level>', 'log level 0-4 (-v, -vv, -v4, --verbosity=4 as in criu)').default(DEFAULT_VERBOSITY).argParser((v: string) => {
      if (!/^\d+$/.test(v)) throw new UsageError(`--verbosity must be a level from 0 to 4, got '${v}'`);
      return Number(v);
    }))
    .option('--log-format <format>', "'text' (criu-like lines; default) or 'json' (pino)")
    .option('--address <addr>', 'page server address')
    .option('--port <port>', 'page server port')
    .option('--tls', 'mutual TLS (criu --tls)')
    .option('--tls-cacert <file>', `trust only this CA (default: system CAs and ${CRIU_TLS_CACERT})`)
    .option('--tls-cacrl <file>', `certificate revocation list (default: ${CRIU_TLS_CACRL} when present)`)
    .option('--tls-cert <file>', `our certificate (default ${CRIU_TLS_CERT})`)
    .option('--tls-key <file>', `our private key (default ${CRIU_TLS_KEY})`)
    .option('--tls-no-cn-verify', "do not check the peer certificate's name against --address")
    .addOption(new Option('--close <fd>', 'close this inherited fd at start (criu --close)').argParser((v: string, prev: number[] = []) => {
      if (!/^\d+$/.test(v)) throw new UsageError(`--close must be a file descriptor number, got '${v}'`);
      return [...prev, Number(v)];
    }))
    .option('--display-stats', 'print the statistics to stdout at the end')
    .option('--version', 'print the version and exit')
    .addHelpText('after', '\nEvery other option of criu is accepted where it means nothing for this command, and refused with one line where it would matter.');
}

async function main(argv: string[]): Promise<number> {
  const program = new Command('faultline')
    .description('post-copy (lazy) restore engine for CRIU-checkpointed Linux process trees')
    // criu's shape (`criu --version` prints "Version: 4.2"), with whose it is
    .version(`Version: ${VERSION} (faultline)`, '-V, --version', 'print the version and exit')
    .exitOverride()
    .configureOutput({
      // One line, like every other error of ours; no help dump after it.
      outputError: (str, write) => write(`faultline: ${str.trim().replace(/\s*\n\s*/g, '; ')}\n`),
    });
  let code = 0;
  const prelude = (flags: { close?: number[]; version?: boolean }): boolean => {
    for (const fd of flags.close ?? []) closeQuietly(fd);
    if (flags.version) process.stdout.write(`Version: ${VERSION} (faultline)\n`);
    return !!flags.version;
  };
  criuCommon(
    program
      .command('lazy-pages')
      .description('serve the memory of a tree restored with `criu restore --lazy-pages` (drop-in for `criu lazy-pages`)'),
  )
    .option('--page-server', 'page contents come from a page server at --address/--port (remote lazy restore)')
    .option('--json', 'print the summary as JSON')
    .option('--workers <n>', 'worker threads (default: CPUs)')
    .option('--nice <n>', "the daemon threads' nice value, above the restored tree's (default -10; root)")
    .option('--fill-nice <n>', 'nice value of the background fill (default: --nice); higher leaves more CPU to restored threads that have their pages')
    .option('--fault-around <pages>', 'largest copy per fault')
    .option('--fill-chunk <pages>', 'largest background copy (default 2048 pages, 256 from a page server)')
    .option('--record-faults <file>', 'write the order in which each process first faulted its pages')
    .option('--prefetch <file>', 'fill the pages of a --record-faults trace first, in that order')
    .option('--lanes <n>', '1: one connection (a CRIU page server); 2: a second one for faults (faultline page-server)')
    .option('--request-order <order>', "priority (faults first; default) or fifo (CRIU's client order, for comparison)")
    .option('--connect-timeout-ms <ms>', 'keep retrying a page server that is not up yet this long (default 10000)')
    .option('--reply-timeout-ms <ms>', 'a page server connection with requests outstanding that sends nothing this long is lost (default 30000; 0: never)')
    .option('--recover-timeout-ms <ms>', 'dial a lost page server connection again this long and resend what it left unanswered, instead of stopping the tree at once (default 0)')
    .option('--socket-group <group>', 'lazy-pages.socket is 0660 with this group (name or gid), whose members may hand over too (default: 0600, root and our user only)')
    .option('--recover-timeout <seconds>', "if this daemon dies mid-restore, its guardian keeps the tree waiting this long (threads block in their faults) for `lazy-pages --resume` on the same work dir, instead of stopping it at once; also the default of --recover-timeout-ms (default 0)")
    .option('--resume', 'take over the restore of a daemon of this work dir that died, from its guardian (see --recover-timeout); give the images and source flags the first daemon had')
    .option('--metrics <address>', 'serve Prometheus metrics of this restore on HOST:PORT (loopback only) or unix:/PATH')
    .option('--engine <socket>', 'have a running `faultline serve` serve this restore (also FAULTLINE_ENGINE); waits and exits as a stand-alone daemon would')
    .option('--no-guardian', 'unsafe: no guardian process (a daemon killed outright then leaves the tree reading zeros)')
    .action(async (flags: LazyPagesFlags & { close?: number[]; version?: boolean }) => {
      if (prelude(flags)) return;
      code = await lazyPages(flags);
    });
  criuCommon(
    program
      .command('page-server')
      .description('serve the lazy pages of a checkpoint over TCP to `lazy-pages --page-server` (like `criu page-server --lazy-pages`)'),
  )
    .option('--lazy-pages', 'required: serve a lazy restore (the only kind faultline serves)')
    .option('--keep-serving', 'serve any number of restores until SIGTERM/SIGINT (criu serves one, then exits)')
    .option('--max-connections <n>', 'connections open at once; one more is closed at once, with a warning (default 512)')
    .option('--max-outstanding-requests <n>', 'requests a connection may have unanswered; beyond, it is not read until it takes its replies (default 1024)')
    .option('--max-unsent-bytes <n>', 'reply bytes a connection may have asked for and not taken (k, m, g suffixes); beyond, as above (default 1g)')
    .option('--idle-timeout-ms <ms>', 'close a connection owed nothing that neither it nor another from its address used this long, and drop one whose replies have not moved this long (default 600000; 0: never)')
    .action(async (flags: import('./page-server').PageServerFlags & { close?: number[]; version?: boolean }) => {
      if (prelude(flags)) return;
      const { pageServer } = await import('./page-server');
      code = await pageServer(flags);
    });
  program
    .command('serve')
    .description('one long-lived engine serving every lazy restore on the host (`lazy-pages --engine SOCKET`)')
    .option('--socket <path>', 'the control socket (0600; default $FAULTLINE_ENGINE or /run/faultline/engine.sock)')
    .option('--workers <n>', 'worker threads shared by all restores (default: 2 × CPUs, at least 8)')
    .option('--max-restores <n>', 'restores served at once; more wait in a queue (default 32)')
    .option('--no-queue', 'refuse a restore beyond --max-restores (or --max-memory) instead of queueing it')
    .option('--max-memory <MiB>', "start no restore while the engine's resident memory is above this")
    .option('--nice <n>', "the engine threads' nice value, above the restored trees' (default -10; root)")
    .option('--fill-nice <n>', 'nice value of the background fill (default: --nice)')
    .option('--shutdown-timeout <seconds>', 'on SIGTERM/SIGINT, running restores finish for this long, then are fail-stopped (default 30)')
    .option('--metrics <address>', 'serve Prometheus metrics of every restore on HOST:PORT (loopback only) or unix:/PATH')
    .option('-o, --log-file <file>', 'log to this file')
    .option('--log-format <format>', 'text (criu-shaped lines; default) or json')
    .option('-v, --verbosity <n>', 'log verbosity 0-4', (v) => Number(v), 2)
    .option('--no-guardian', 'unsafe: no guardian process (an engine killed outright then leaves its trees reading zeros)')
    .action(async (flags: import('./serve').ServeFlags) => {
      const { serve } = await import('./serve');
      code = await serve(flags);
    });
  program
    .command('status')
    .description("the engine's restores: images, pids, progress, faults/s")
    .option('--socket <path>', 'the engine control socket (default $FAULTLINE_ENGINE or /run/faultline/engine.sock)')
    .option('--json', 'print the status as JSON')
    .action(async (flags: { socket?: string; json?: boolean }) => {
      const { statusCommand } = await import('./status');
      code = await statusCommand(flags);
    });
  program
    .command('inspect')
    .description('what a checkpoint holds for a lazy restore: processes, VMAs, lazy / eager / parent / hole pages, the parent chain, page image sizes')
    .option('-D, --images-dir <dir>', 'directory with the checkpoint images', '.')
    .option('--json', 'print the report as JSON')
    .action(async (flags: { imagesDir: string; json?: boolean }) => {
      const { inspectCommand } = await import('./inspect');
      code = inspectCommand(flags);
    });
  program
    .command('demo')
    .description('generate a sample checkpoint (3 processes, 256 MiB), restore it lazily and verify every page')
    .option('--dir <dir>', 'keep the images and logs here (default: a temporary directory, removed afterwards)')
    .option('--json', 'print the result as JSON')
    .action(async (flags: { dir?: string; json?: boolean }) => {
      const { demo } = await import('./demo');
      code = await demo(flags);
    });
  try {
    const command = argv[0];
    if (command === 'lazy-pages' || command === 'page-server') {
      const { argv: rest } = translateCriuArgv(command as CriuCommand, argv.slice(1));
      argv = [command, ...rest];
    }
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    const err = e as Error & { exitCode?: number; code?: string };
    if (err.code?.startsWith('commander.')) {
      // Help and version are not errors; everything else commander rejects is a usage error.
      return err.exitCode === 0 ? 0 : 2;
    }
    if (e instanceof ImageError || e instanceof UsageError || (e as { code?: string }).code) {
      process.stderr.write(`faultline: error: ${err.message.replace(/\s*\n\s*/g, '; ')}\n`);
      return e instanceof UsageError ? 2 : 1;
    }
    throw e;
  }
  return code;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // A command that failed may have started threads (a worker pool, a page server's listener) that
    // would keep this process alive after its one error line; nothing it holds needs more time.
    if (code !== 0) process.exit(code);
  },
  (e: Error) => {
    process.stderr.write(`faultline: internal error: ${e.stack ?? e.message}\n`);
    process.exitCode = 70;
  },
);
