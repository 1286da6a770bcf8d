// The fuzz targets: every parser of faultline that reads outside input. Each one's expected failure
// is its own one-line error (ImageError for the images, the protocol errors for the wire); any
// other exception (a TypeError, a RangeError from a Buffer read, a stack overflow) is a bug.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HandoverParser, RESTORE_FINISHED } from '../../src/engine/handover';
import { HandoverProtocolError as HandoverError } from '../../src/engine/errors';
import { ImageError, readInventory, readMm, readPagemap, readPstree } from '../../src/images';
import { PageServerProtocolError as WireError, ReplyParser, RequestParser, encodeClose, encodeGet, encodeGetReply } from '../../src/protocol/page-server-wire';
import type { FuzzTarget } from './engine';

const ROOT = path.resolve(__dirname, '../../..');
/** A real CRIU 4.2 dump (test/fixtures): the image targets' seeds. */
export const FIXTURE = path.join(ROOT, 'test/fixtures/criu-4.2-two-procs/img');
const FIXTURE_PID = 23581;

function fixtureFile(name: string): Buffer[] {
  return [fs.readFileSync(path.join(FIXTURE, name))];
}

/** Inputs cut into chunks as a socket would deliver them: byte k of the input picks the next chunk's size. */
function* chunks(data: Buffer): Generator<{ chunk: Buffer; withFd: boolean }> {
  let at = 0;
  while (at < data.length) {
    const ctl = data[at]!;
    const n = 1 + (ctl & 0x3f);
    yield { chunk: data.subarray(at + 1, at + 1 + n), withFd: (ctl & 0x80) !== 0 };
    at += 1 + n;
  }
}

/** Frames a byte stream for `chunks`: whole chunks of up to 64 bytes, fds where `fdAt` says. */
function framed(stream: Buffer, fdAt: number[] = []): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < stream.length; ) {
    const fd = fdAt.some((f) => f >= at && f < at + 64);
    const n = Math.min(64, stream.length - at, fd ? fdAt.find((f) => f >= at)! - at + 1 : 64);
    out.push(Buffer.from([(n - 1) | (fd ? 0x80 : 0)]), stream.subarray(at, at + n));
    at += n;
  }
  return Buffer.concat(out);
}

const handover: FuzzTarget = {
  name: 'handover',
  seeds() {
    // pid 1, its byte (with a uffd), zombie -2, pid 3 and its byte, RESTORE_FINISHED: criu's stream
    const s = Buffer.alloc(4 + 1 + 4 + 4 + 1 + 4);
    s.writeInt32LE(1, 0);
    s.writeInt32LE(-2, 5);
    s.writeInt32LE(3, 9);
    s.writeUInt32LE(RESTORE_FINISHED, 14);
    return [framed(s, [4, 13])];
  },
  run(data) {
    const p = new HandoverParser(3, 'fuzz');
    for (const { chunk, withFd } of chunks(data)) p.feed(chunk, withFd ? [1000] : [], 1);
    p.feed(Buffer.alloc(0), [], 1);
  },
  expected: (e) => e instanceof HandoverError,
  covers: /dist\/src\/engine\/handover\.js$/,
};

/** Feeds a wire parser chunk by chunk, taking every message it completes, then the peer's EOF. */
function parseAll(p: { push(b: Buffer): void; next(): unknown; end(): void }, data: Buffer): void {
  for (const { chunk } of chunks(data)) {
    p.push(chunk);
    while (p.next());
  }
  p.end();
}

const requests: FuzzTarget = {
  name: 'page-server-requests',
  seeds: () => [framed(Buffer.concat([encodeGet(23581, 0x7f0000000000, 16), encodeGet(23583, 0x400000, 1), encodeClose()]))],
  run: (data) => parseAll(new RequestParser('fuzz'), data),
  expected: (e) => e instanceof WireError,
  covers: /dist\/src\/protocol\/page-server-wire\.js$/,
};

/** A reply stream: the answer to a GET of 2 pages of pid 7 at 0x10000, its data, then CLOSE's status. */
function replySeed(): Buffer {
  return Buffer.concat([encodeGetReply(7, 0x10000, 2), Buffer.alloc(8192, 0xab), Buffer.alloc(4)]);
}

const replies: FuzzTarget = {
  name: 'page-server-replies',
  seeds: () => [framed(replySeed())],
  run(data) {
    const p = new ReplyParser('fuzz');
    p.expectGet(7, 0x10000, 2);
    p.expectClose();
    parseAll(p, data);
  },
  expected: (e) => e instanceof WireError,
  covers: /dist\/src\/protocol\/page-server-wire\.js$/,
};

/** Image targets write the input as the one file their reader opens, in a private directory. */
function imageTarget(name: string, file: string, read: (dir: string) => unknown): FuzzTarget {
  let dir = '';
  return {
    name,
    seeds: () => fixtureFile(file),
    run(data) {
      if (!dir) {
        // the rest of the dump beside it (inventory.img gives the others their version)
        dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `faultline-fuzz-${name}-`));
        for (const f of fs.readdirSync(FIXTURE)) if (!f.startsWith('pages-')) fs.copyFileSync(path.join(FIXTURE, f), path.join(dir, f));
        process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      }
      fs.writeFileSync(path.join(dir, file), data);
      read(dir);
    },
    expected: (e) => e instanceof ImageError,
    covers: /dist\/src\/images\/(framing|proto|reader)\.js$/,
  };
}

export const TARGETS: FuzzTarget[] = [
  handover,
  requests,
  replies,
  imageTarget('inventory', 'inventory.img', (d) => readInventory(d)),
  imageTarget('pstree', 'pstree.img', (d) => readPstree(d)),
  imageTarget('mm', `mm-${FIXTURE_PID}.img`, (d) => readMm(d, FIXTURE_PID)),
  imageTarget('pagemap', `pagemap-${FIXTURE_PID}.img`, (d) => readPagemap(d, FIXTURE_PID)),
];
