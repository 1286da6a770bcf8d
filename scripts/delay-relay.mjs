#!/usr/bin/env node
// Link emulation for tests and benchmarks: a TCP relay that holds every chunk for --delay-ms in each
// direction before passing it on, in order. This kernel has no netem, so together with tc tbf
// (bandwidth, scripts/netns.sh) it stands in for a WAN link. It is emulation, and labelled so.
//   node scripts/delay-relay.mjs --listen HOST:PORT --to HOST:PORT [--delay-ms 2]
// Prints "delay-relay: listening on HOST:PORT" when ready; exits on SIGTERM or when stdin closes.
import * as net from 'node:net';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const split = (hp) => {
  const at = hp.lastIndexOf(':');
  return [hp.slice(0, at), Number(hp.slice(at + 1))];
};
const [lhost, lport] = split(arg('--listen', '127.0.0.1:0'));
const [thost, tport] = split(arg('--to', ''));
const delay = Number(arg('--delay-ms', '2'));

/**
 * Forwards from -> to, each chunk delivered `delay` ms after it arrived. One FIFO and one timer per
 * direction: timers of different durations may fire out of order, a byte stream must not.
 */
function pipeDelayed(from, to) {
  const queue = [];
  let timer = null;
  let ended = false;
  const flush = () => {
    timer = null;
    const now = Date.now();
    while (queue.length && queue[0].due <= now) if (to.writable) to.write(queue.shift().chunk);
    if (queue.length) timer = setTimeout(flush, queue[0].due - now);
    else if (ended) to.end();
  };
  from.on('data', (chunk) => {
    queue.push({ due: Date.now() + delay, chunk });
    if (!timer) timer = setTimeout(flush, delay);
  });
  from.on('end', () => {
    ended = true;
    if (!timer) flush();
  });
  from.on('error', () => to.destroy());
}

const server = net.createServer((client) => {
  const upstream = net.connect(tport, thost);
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  pipeDelayed(client, upstream);
  pipeDelayed(upstream, client);
  upstream.on('close', () => client.destroy());
  client.on('close', () => upstream.destroy());
});
server.listen(lport, lhost, () => {
  const a = server.address();
  process.stderr.write(`delay-relay: listening on ${a.address}:${a.port} (emulated link: +${delay} ms each way)\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
