// No folder under src/ imports from a folder that imports it back (issue 12): the shared vocabulary
// lives in src/protocol/, and the layers import one way (docs/DESIGN.md, module map). Read from the
// TypeScript sources, static and dynamic imports and requires alike, so that a lazy `await
// import()` cannot hide a cycle.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

const SRC = path.resolve(__dirname, '../../../src');
const IMPORT = /(?:\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g;

/** src/engine/x.ts → 'engine'; src/native.ts → '.' (the leaves at the top). */
function folderOf(file: string): string {
  const rel = path.relative(SRC, file);
  return rel.includes(path.sep) ? rel.split(path.sep)[0]! : '.';
}

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
}

/** folder → folder → one file that makes the edge (for the message). */
export function folderGraph(files: string[], read: (f: string) => string): Map<string, Map<string, string>> {
  const g = new Map<string, Map<string, string>>();
  for (const f of files) {
    const from = folderOf(f);
    for (const m of read(f).matchAll(IMPORT)) {
      const target = path.resolve(path.dirname(f), m[1]!);
      if (!target.startsWith(SRC + path.sep)) continue;
      const to = folderOf(target);
      if (to === from) continue;
      if (!g.has(from)) g.set(from, new Map());
      if (!g.get(from)!.has(to)) g.get(from)!.set(to, path.relative(SRC, f));
    }
  }
  return g;
}

/** Every cycle's folders, as the strongly connected components of more than one folder (Tarjan). */
export function cycles(g: Map<string, Map<string, string>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    on.add(v);
    for (const w of g.get(v)?.keys() ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return out;
}

t.test('no folder of src/ imports a folder that imports it back', async (t) => {
  const g = folderGraph(sources(SRC), (f) => fs.readFileSync(f, 'utf8'));
  t.ok(g.size >= 8, `${g.size} folders import others`);
  const found = cycles(g).map((c) => c.map((a) => c.filter((b) => g.get(a)?.has(b)).map((b) => `${a} → ${b} (${g.get(a)!.get(b)})`).join(', ')).join('; '));
  t.same(found, [], 'no cycle between folders');
  t.same([...(g.get('protocol')?.keys() ?? [])].filter((f) => f !== '.'), [], 'protocol/ imports only the top-level leaves (native.ts, address.ts)');
});

t.test('the check finds a cycle when there is one', async (t) => {
  const files = [path.join(SRC, 'a/x.ts'), path.join(SRC, 'b/y.ts'), path.join(SRC, 'c/z.ts')];
  const text: Record<string, string> = { [files[0]!]: "import { y } from '../b/y';", [files[1]!]: "const z = await import('../c/z');", [files[2]!]: "const x = require('../a/x');" };
  t.same(cycles(folderGraph(files, (f) => text[f]!)), [['a', 'b', 'c']]);
  text[files[2]!] = "import * as path from 'node:path';";
  t.same(cycles(folderGraph(files, (f) => text[f]!)), []);
});
