// A small coverage-guided mutational fuzzer for the parsers that read outside input. Coverage is
// V8's own block coverage (node:inspector, Profiler.takePreciseCoverage, which also resets the
// counts), so each input's feature set is the blocks of the target's scripts it executed, with a
// hit-count bucket. An input that reaches a feature no earlier input reached joins the corpus.
//
// Why not @jazzer.js/core: its prebuilt libFuzzer binding needs glibc 2.38, and the Debian 12
// machines here have 2.36; building it needs toolchain downloads this network does not allow.
import { Session } from 'node:inspector';
import { createHash } from 'node:crypto';

export interface FuzzTarget {
  name: string;
  /** Where its seeds come from (real CRIU 4.2 images, captured or encoded wire bytes). */
  seeds(): Buffer[];
  /** Runs one input; returns normally or throws. */
  run(data: Buffer): void;
  /** Errors the parser is meant to throw on bad input (its one-line errors); anything else is a bug. */
  expected(e: unknown): boolean;
  /** Scripts whose coverage guides this target (compiled paths under dist/). */
  covers: RegExp;
}

export interface Crash {
  input: Buffer;
  error: string;
  id: string;
}

export interface FuzzResult {
  execs: number;
  seconds: number;
  features: number;
  corpus: Buffer[];
  crashes: Crash[];
}

interface ScriptCoverage {
  url: string;
  functions: { ranges: { startOffset: number; endOffset: number; count: number }[] }[];
}

/** Deterministic PRNG (xorshift32): a run is replayed from its seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const INTERESTING_32 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x1000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 0x52535446, 0x58313116, 0x54564319];

export function mutate(input: Buffer, corpus: Buffer[], rand: () => number): Buffer {
  const pick = (n: number) => Math.floor(rand() * n);
  let out = Buffer.from(input);
  const rounds = 1 + pick(4);
  for (let r = 0; r < rounds; r++) {
    const op = pick(9);
    if (out.length === 0 && op < 7) {
      out = Buffer.from([pick(256)]);
      continue;
    }
    const at = pick(Math.max(1, out.length));
    switch (op) {
      case 0: // flip a bit
        out[at] ^= 1 << pick(8);
        break;
      case 1: // a random byte
        out[at] = pick(256);
        break;
      case 2: // an interesting byte
        out[at] = [0, 0xff, 0x7f, 0x80, 1][pick(5)]!;
        break;
      case 3: {
        // an interesting 32-bit word, either endianness
        if (out.length < 4) break;
        const o = pick(out.length - 3);
        const v = INTERESTING_32[pick(INTERESTING_32.length)]!;
        if (rand() < 0.5) out.writeUInt32LE(v >>> 0, o);
        else out.writeUInt32BE(v >>> 0, o);
        break;
      }
      case 4: {
        // delete a range
        const len = 1 + pick(Math.min(16, out.length - at));
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + len)]);
        break;
      }
      case 5: {
        // insert random bytes
        const ins = Buffer.alloc(1 + pick(8));
        for (let i = 0; i < ins.length; i++) ins[i] = pick(256);
        out = Buffer.concat([out.subarray(0, at), ins, out.subarray(at)]);
        break;
      }
      case 6: {
        // duplicate a range
        const len = 1 + pick(Math.min(32, out.length - at));
        out = Buffer.concat([out.subarray(0, at + len), out.subarray(at, at + len), out.subarray(at + len)]);
        break;
      }
      case 7: {
        // splice with another corpus entry
        const other = corpus[pick(corpus.length)]!;
        const cut = pick(other.length + 1);
        out = Buffer.concat([out.subarray(0, at), other.subarray(cut)]);
        break;
      }
      default:
        // truncate
        out = out.subarray(0, at);
    }
  }
  return out.length > 1 << 16 ? out.subarray(0, 1 << 16) : out;
}

/** Runs `target` for `seconds` from its seeds (plus `extraCorpus`); crashes are collected, not thrown. */
export function fuzz(target: FuzzTarget, opts: { seconds: number; seed: number; extraCorpus?: Buffer[] }): FuzzResult {
  const session = new Session();
  session.connect();
  const post = <T>(method: string, params?: object): T => {
    let out: T | undefined;
    let err: Error | null = null;
    // In-process sessions answer synchronously.
    session.post(method, params ?? {}, (e, r) => {
      err = e;
      out = r as T;
    });
    if (err) throw err;
    return out!;
  };
  post('Profiler.enable');
  post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
  const seen = new Set<string>();
  const crashes = new Map<string, Crash>();
  const rand = rng(opts.seed);

  const execute = (input: Buffer): boolean => {
    post('Profiler.takePreciseCoverage'); // reset
    try {
      target.run(input);
    } catch (e) {
      if (!target.expected(e)) {
        const msg = (e as Error)?.stack ?? String(e);
        // one crash per distinct top of stack
        const key = msg.split('\n').slice(0, 3).join('|');
        if (!crashes.has(key)) crashes.set(key, { input, error: msg, id: createHash('sha1').update(input).digest('hex').slice(0, 12) });
      }
    }
    const { result } = post<{ result: ScriptCoverage[] }>('Profiler.takePreciseCoverage');
    let fresh = false;
    for (const script of result) {
      if (!target.covers.test(script.url)) continue;
      for (const fn of script.functions) {
        for (const r of fn.ranges) {
          if (r.count === 0) continue;
          const bucket = r.count < 4 ? r.count : r.count < 16 ? 4 : r.count < 128 ? 5 : 6;
          const key = `${script.url}:${r.startOffset}:${r.endOffset}:${bucket}`;
          if (!seen.has(key)) {
            seen.add(key);
            fresh = true;
          }
        }
      }
    }
    return fresh;
  };

  const corpus: Buffer[] = [];
  for (const s of [...target.seeds(), ...(opts.extraCorpus ?? [])]) if (execute(s) || corpus.length === 0) corpus.push(s);
  const started = Date.now();
  let execs = corpus.length;
  while (Date.now() - started < opts.seconds * 1000) {
    for (let i = 0; i < 50; i++) {
      const parent = corpus[Math.floor(rand() * corpus.length)]!;
      const child = mutate(parent, corpus, rand);
      execs++;
      if (execute(child)) corpus.push(child);
    }
  }
  post('Profiler.stopPreciseCoverage');
  session.disconnect();
  return { execs, seconds: (Date.now() - started) / 1000, features: seen.size, corpus, crashes: [...crashes.values()] };
}
