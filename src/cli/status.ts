// `faultline status`: what a running `faultline serve` is doing, one line per restore.
import * as net from 'node:net';
import * as path from 'node:path';
import { DEFAULT_ENGINE_SOCKET, type EngineEvent, type RestoreStatus } from './serve';

export async function statusCommand(flags: { socket?: string; json?: boolean }): Promise<number> {
  const at = path.resolve(flags.socket ?? process.env.FAULTLINE_ENGINE ?? DEFAULT_ENGINE_SOCKET);
  let reply: Extract<EngineEvent, { event: 'status' }>;
  try {
    reply = await askEngineStatus(at);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    process.stderr.write(`faultline: error: --socket ${at}: ${code === 'ENOENT' || code === 'ECONNREFUSED' ? 'no engine listens there (start one with `faultline serve`)' : (code ?? (e as Error).message)}\n`);
    return 1;
  }
  if (flags.json) {
    process.stdout.write(JSON.stringify(reply) + '\n');
    return 0;
  }
  process.stdout.write(`engine ${at}: ${reply.restores.length} of at most ${reply.maxRestores} restores, ${reply.queued} queued, ${reply.workers} workers\n`);
  if (reply.restores.length) process.stdout.write(table(reply.restores));
  return 0;
}

/** The engine's answer to a status request on its control socket (also the tests' probe). */
export function askEngineStatus(at: string): Promise<Extract<EngineEvent, { event: 'status' }>> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(at);
    let text = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write('{"op":"status"}\n'));
    s.on('data', (d: string) => (text += d));
    s.on('error', reject);
    s.on('close', () => {
      try {
        const e = JSON.parse(text.split('\n')[0] ?? '') as EngineEvent;
        if (e.event !== 'status') throw new Error(`the engine answered ${e.event}`);
        resolve(e);
      } catch (e) {
        reject(Object.assign(new Error(`not a status answer (${(e as Error).message})`), { code: 'EPROTO' }));
      }
    });
  });
}

function table(rs: RestoreStatus[]): string {
  const MiB = 256;
  const rows = [['SESSION', 'STATE', 'PROGRESS', 'FAULTS/S', 'PIDS', 'IMAGES', 'WORK DIR']];
  for (const r of rs) {
    const pct = r.pages ? Math.floor((100 * r.pagesDone) / r.pages) : 0;
    rows.push([String(r.session), r.state, `${pct}% ${(r.pagesDone / MiB).toFixed(0)}/${(r.pages / MiB).toFixed(0)} MiB`, String(r.faultsPerSecond), r.pids.join(',') || '-', r.imagesDir, r.workDir]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  return rows.map((row) => row.map((cell, c) => (c === row.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n') + '\n';
}
