// `faultline lazy-pages --engine SOCKET` (or FAULTLINE_ENGINE=SOCKET): the restore is served by a
// running `faultline serve`; this process asks for it, says it is ready when the engine listens on the
// restore's socket, waits, and exits with the restore's status and summary, as a stand-alone daemon
// would (so scripts written for `criu lazy-pages` keep working).
import * as net from 'node:net';
import * as path from 'node:path';
import { readinessFd, signalReady } from './daemonize';
import type { EngineEvent, RestoreRequest } from './serve';

export interface EngineRun {
  socket: string;
  request: Omit<RestoreRequest, 'op'>;
  json?: boolean;
  statusFd: number;
  /** once the engine listens for this restore (pidfile) */
  onListening: () => void;
  log: { info(o: object, msg: string): void; warn(msg: string): void };
  /** signals that end a stand-alone daemon through fail-stop end this restore the same way */
  stopSignals: NodeJS.Signals[];
}

export function runViaEngine(o: EngineRun): Promise<number> {
  const at = path.resolve(o.socket);
  return new Promise<number>((resolve) => {
    let ended = false;
    const end = (code: number, stderr?: string, json?: object) => {
      if (ended) return;
      ended = true;
      if (stderr) process.stderr.write(`faultline: error: ${stderr}\n`);
      if (json && o.json) process.stdout.write(JSON.stringify(json) + '\n');
      socket.destroy();
      resolve(code);
    };
    const socket = net.createConnection(at);
    socket.setEncoding('utf8');
    socket.on('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'no engine listens there (start one with `faultline serve`)' : e.code === 'EACCES' ? 'not allowed to connect (the engine socket is 0600: run as root or as its user)' : (e.code ?? e.message);
      end(1, `--engine ${at}: ${why}`, { ok: false, error: why });
    });
    socket.on('close', () => end(1, `--engine ${at}: the engine closed the connection before the restore ended`, { ok: false, error: 'engine connection closed' }));
    // json: the engine's 'done' then carries the JSON summary as the text to print.
    socket.on('connect', () => socket.write(JSON.stringify({ op: 'restore', ...o.request, ...(o.json ? { json: true } : {}) }) + '\n'));
    for (const sig of o.stopSignals) process.on(sig, () => socket.write(JSON.stringify({ op: 'stop', reason: `faultline lazy-pages --engine received ${sig} before the restore completed` }) + '\n'));
    let buffered = '';
    socket.on('data', (d: string) => {
      buffered += d;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        let e: EngineEvent;
        try {
          e = JSON.parse(line) as EngineEvent;
        } catch {
          return end(1, `--engine ${at}: the engine sent something that is not JSON: ${line.slice(0, 120)}`);
        }
        switch (e.event) {
          case 'queued':
            o.log.warn(`the engine is full: this restore waits, number ${e.position} in its queue`);
            break;
          case 'listening':
            o.log.info({ socket: e.socket, session: e.session }, 'the engine waits for the restorer');
            o.onListening();
            signalReady(readinessFd(o.statusFd), (err) => {
              socket.write(JSON.stringify({ op: 'stop', reason: `cannot say we are ready: --status-fd ${o.statusFd}: ${(err as NodeJS.ErrnoException).code ?? err.message}` }) + '\n');
            });
            break;
          case 'done':
            // The engine formats it: one text for every client, this one and the C one.
            process.stdout.write(e.stdout);
            return end(0);
          case 'failed':
            return end(1, e.error, { ok: false, error: e.error });
          case 'refused':
            return end(1, e.error, { ok: false, error: e.error });
          default:
            break;
        }
      }
    });
  });
}
