// The remote scenario: pages fetched from `faultline page-server` across two network namespaces
// (scripts/netns.sh) through a relay adding 2 ms each way (emulation: this kernel has no netem).
// Both sides are faultline's daemon; the "baseline" runs it with CRIU's client policy — one
// connection, requests in FIFO order, one page per fault — so the ratio isolates the policy.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, startPageServer } from '../src/target/run';
import { imagesFor, runScenario, type HarnessOptions, type ScenarioResult } from './harness';
import type { Scenario } from './scenarios';

const NETNS = path.join(ROOT, 'scripts/netns.sh');
const SRC = ['ip', 'netns', 'exec', 'fl-src'];
const DST = ['ip', 'netns', 'exec', 'fl-dst'];
const SRC_IP = '10.77.0.1';
const DELAY_MS = 2;

export const REMOTE: Scenario = {
  name: 'remote-2ms',
  what: `3 processes × 32 MiB over a veth link with +${DELAY_MS} ms each way (emulated), 2 threads each touching 30 % at random; baseline = faultline with CRIU's client policy (one connection, FIFO, one page per fault)`,
  tree: {
    processes: [1, 2, 3].map((pid) => ({
      pid,
      ppid: pid === 1 ? 0 : 1,
      regions: [{ name: 'dense', start: 0x2000_0000_0000, pages: 32 * 256, kind: 'dense' as const, seed: 70 + pid }],
    })),
  },
  target: { threads: 2, pattern: 'random', fraction: 0.3, seed: 9 },
};

/** null when this machine cannot make network namespaces (the reason is logged). */
export async function runRemoteScenario(o: HarnessOptions): Promise<ScenarioResult | null> {
  const check = spawnSync('bash', [NETNS, 'check'], { encoding: 'utf8' });
  if (check.status !== 0) {
    o.log(`remote-2ms skipped: ${check.stderr.trim()}`);
    return null;
  }
  execFileSync('bash', [NETNS, 'up']);
  const full = imagesFor(REMOTE, path.join(o.workRoot, 'cache'));
  // The restoring side has mm and pagemaps only, as in a real remote restore.
  const local = `${full}-local`;
  if (!fs.existsSync(local)) {
    fs.mkdirSync(local);
    for (const f of fs.readdirSync(full)) if (!f.startsWith('pages-')) fs.copyFileSync(path.join(full, f), path.join(local, f));
  }
  const server = await startPageServer(full, { address: SRC_IP, wrap: SRC });
  const relay = spawn(SRC[0], [...SRC.slice(1), process.execPath, path.join(ROOT, 'scripts/delay-relay.mjs'), '--listen', `${SRC_IP}:0`, '--to', `${SRC_IP}:${server.port}`, '--delay-ms', String(DELAY_MS)], {
    stdio: ['pipe', 'ignore', 'pipe'],
  });
  try {
    const port = await new Promise<number>((resolve) => {
      let seen = '';
      relay.stderr.on('data', (d: Buffer) => {
        seen += String(d);
        const m = /listening on .*:(\d+)/.exec(seen);
        if (m) resolve(Number(m[1]));
      });
    });
    const remote = ['--page-server', '--address', SRC_IP, '--port', String(port)];
    const common = { imagesDir: local, planImagesDir: full, daemonWrap: DST, daemon: 'faultline' as const };
    return await runScenario(REMOTE, {
      ...o,
      variants: {
        faultline: { ...common, daemonArgs: [...remote, '--lanes', '2'] },
        baseline: { ...common, daemonArgs: [...remote, '--lanes', '1', '--request-order', 'fifo', '--fault-around', '1'] },
      },
    });
  } finally {
    relay.kill('SIGTERM');
    await server.stop();
    spawnSync('bash', [NETNS, 'down']);
  }
}
