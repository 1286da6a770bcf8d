#!/usr/bin/env node
// faultline: lazy (post-copy) restore of CRIU-checkpointed process trees.
import { Command, Option } from 'commander';
import { ImageError } from '../images';
import { lazyPages, UsageError, type LazyPagesFlags } from './lazy-pages';
import { normalizeVerbosity } from './log';

async function main(argv: string[]): Promise<number> {
  const program = new Command('faultline')
    .description('post-copy (lazy) restore engine for CRIU-checkpointed Linux process trees')
    .exitOverride()
    .showHelpAfterError();
  let code = 0;
  program
    .command('lazy-pages')
    .description('serve the memory of a tree restored with `criu restore --lazy-pages` (drop-in for `criu lazy-pages`)')
    .requiredOption('-D, --images-dir <dir>', 'directory with the checkpoint images')
    .option('-W, --work-dir <dir>', 'directory for lazy-pages.socket (default: the images directory)')
    .option('-d, --daemon', 'detach once the socket is ready')
    .option('--pidfile <file>', 'write the daemon pid here')
    .option('--status-fd <fd>', 'write one NUL byte to this fd once ready')
    .option('-o, --log-file <file>', 'log here instead of stderr')
    .addOption(new Option('--verbosity <level>', 'log level 0-4 (-v, -vv, -v4 as in criu)').default(2).argParser(Number))
    .option('--json', 'print the summary as JSON')
    .option('-j, --workers <n>', 'worker threads (default: CPUs)')
    .option('--fault-around <pages>', 'largest copy per fault')
    .option('--fill-chunk <pages>', 'largest background copy')
    .option('--record-faults <file>', 'write the order in which each process first faulted its pages')
    .option('--prefetch <file>', 'fill the pages of a --record-faults trace first, in that order')
    .option('--page-server', 'page contents come from a page server (remote lazy restore)')
    .option('--address <addr>', 'page server address (default 127.0.0.1)')
    .option('--port <port>', 'page server port')
    .option('--lanes <n>', '1: one connection (a CRIU page server); 2: a second one for faults (faultline page-server)')
    .option('--request-order <order>', "priority (faults first; default) or fifo (CRIU's client order, for comparison)")
    .option('--connect-timeout-ms <ms>', 'keep retrying a page server that is not up yet this long (default 10000)')
    .option('--tls', 'mutual TLS with the page server')
    .option('--tls-cacert <file>', 'CA certificate')
    .option('--tls-cert <file>', 'our certificate')
    .option('--tls-key <file>', 'our key')
    .action(async (flags: LazyPagesFlags) => {
      code = await lazyPages(flags, process.argv.slice(1));
    });
  program
    .command('page-server')
    .description('serve the lazy pages of a checkpoint over TCP to `criu lazy-pages --page-server` (like `criu page-server --lazy-pages`)')
    .requiredOption('-D, --images-dir <dir>', 'directory with the checkpoint images')
    .option('--address <addr>', 'address to listen on (default: 127.0.0.1)')
    .option('--port <port>', 'port to listen on (default: 0 = ephemeral, printed when ready)')
    .option('--tls', 'require mutual TLS (criu --tls)')
    .option('--tls-cacert <file>', 'CA that client certificates must chain to')
    .option('--tls-cert <file>', 'server certificate')
    .option('--tls-key <file>', 'server private key')
    .option('--status-fd <fd>', 'write one NUL byte to this fd once listening')
    .option('-o, --log-file <file>', 'log here instead of stderr')
    .addOption(new Option('--verbosity <level>', 'log level 0-4 (-v, -vv, -v4 as in criu)').default(2).argParser(Number))
    .action(async (flags: import('../server/cli').PageServerFlags) => {
      const { pageServer } = await import('../server/cli');
      code = await pageServer(flags);
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
    await program.parseAsync(normalizeVerbosity(argv), { from: 'user' });
  } catch (e) {
    const err = e as Error & { exitCode?: number; code?: string };
    if (err.code?.startsWith('commander.')) return err.exitCode ?? 2;
    if (e instanceof ImageError || e instanceof UsageError || (e as { code?: string }).code) {
      process.stderr.write(`faultline: error: ${err.message}\n`);
      return e instanceof UsageError ? 2 : 1;
    }
    throw e;
  }
  return code;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: Error) => {
    process.stderr.write(`faultline: internal error: ${e.stack ?? e.message}\n`);
    process.exitCode = 70;
  },
);
