// The pagemap entry fast path (proto.ts) against protobufjs itself: the same fields for every entry
// protobufjs can write, and the general path (with its exact errors) for anything it does not take.
import t from 'tap';
import * as fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import { decodeMessage, messages } from '../../src/images/proto';

/** protobufjs' own encoder, which takes 64-bit values as decimal strings too. */
const encode = (obj: Record<string, unknown>) => messages.pagemapEntry.encode(messages.pagemapEntry.fromObject(obj)).finish();

const u64 = fc.oneof(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map((b) => b.toString()));

function reference(body: Uint8Array): Record<string, unknown> {
  const m = messages.pagemapEntry.decode(body);
  const o = messages.pagemapEntry.toObject(m, { longs: String, defaults: false }) as Record<string, unknown>;
  // The reference view: numbers where exact, decimal strings past 2^53.
  for (const k of Object.keys(o)) if (typeof o[k] === 'string' && BigInt(o[k] as string) <= BigInt(Number.MAX_SAFE_INTEGER)) o[k] = Number(o[k]);
  return o;
}

t.test('every entry protobufjs writes decodes to the same fields', async (t) => {
  fc.assert(
    fc.property(
      fc.record({ vaddr: u64, compat_nr_pages: fc.nat({ max: 0xffff_ffff }), in_parent: fc.option(fc.boolean(), { nil: undefined }), flags: fc.option(fc.nat({ max: 0xffff_ffff }), { nil: undefined }), nr_pages: fc.option(u64, { nil: undefined }) }),
      (e) => {
        const obj = Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined));
        const body = encode(obj);
        return isDeepStrictEqual(decodeMessage('pagemapEntry', body), reference(body));
      },
    ),
    { numRuns: 2000 },
  );
  t.pass('2,000 random entries decode as protobufjs decodes them');
});

t.test('malformed or foreign entries take the general path and its errors', async (t) => {
  // compat_nr_pages (required) missing
  t.throws(() => decodeMessage('pagemapEntry', Uint8Array.from([0x08, 0x80, 0x20])), /compat_nr_pages/);
  // a truncated varint
  t.throws(() => decodeMessage('pagemapEntry', Uint8Array.from([0x08, 0x80])));
  // an unknown field (length-delimited, number 9) is skipped as protobuf does
  const withUnknown = Uint8Array.from([0x08, 0x80, 0x20, 0x10, 0x01, 0x4a, 0x02, 0xaa, 0xbb]);
  t.same(decodeMessage('pagemapEntry', withUnknown), { vaddr: 4096, compat_nr_pages: 1 });
  // a vaddr past 2^53 comes back exact, as a string, for the reader to refuse
  const big = encode({ vaddr: '18446744073709547520', compat_nr_pages: 1 });
  t.same(decodeMessage('pagemapEntry', big), { vaddr: '18446744073709547520', compat_nr_pages: 1 });
});
