import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { expectedPage, PE_LAZY, PE_PARENT, PE_PRESENT, readPstree, writeImageSet } from '../../src/images';
import { writeTargetPlan } from '../../src/target/plan';
import { PAGE_SIZE } from '../../src/address';

const IMG = path.resolve(__dirname, '../../../test/fixtures/criu-4.2-two-procs/img');

interface Plan {
  socket: string;
  files: string[];
  procs: { pid: number; ppid: number; vmas: [number, number][]; runs: { vaddr: number; pages: number; lazy: boolean; file: number; offset: number }[] }[];
}

/** Strict parser of the plan format, as the C target reads it. */
function parsePlan(t: tap.Test, text: string): Plan {
  const lines = text.split('\n');
  t.equal(lines.pop(), '', 'ends with a newline');
  let i = 0;
  const next = () => lines[i++]!;
  t.equal(next(), 'faultline-plan 1');
  const sock = /^socket (\/\S+)$/.exec(next());
  t.ok(sock, 'socket line with an absolute path');
  const plan: Plan = { socket: sock ? sock[1]! : '', files: [], procs: [] };
  let m: RegExpExecArray | null;
  while (i < lines.length && (m = /^file (\d+) (\/\S+)$/.exec(lines[i]!))) {
    t.equal(Number(m[1]), plan.files.length, 'file indexes from 0');
    plan.files.push(m[2]!);
    i++;
  }
  const HEX = '([0-9a-f]+)';
  while (i < lines.length) {
    const p = /^proc (\d+) (\d+) (\d+) (\d+)$/.exec(next());
    t.ok(p, `proc line ${i}`);
    if (!p) break;
    const proc: Plan['procs'][0] = { pid: Number(p[1]), ppid: Number(p[2]), vmas: [], runs: [] };
    for (let k = 0; k < Number(p[3]); k++) {
      const v = new RegExp(`^vma ${HEX} ${HEX}$`).exec(next())!;
      proc.vmas.push([parseInt(v[1]!, 16), parseInt(v[2]!, 16)]);
    }
    for (let k = 0; k < Number(p[4]); k++) {
      const r = new RegExp(`^run ${HEX} (\\d+) ([01]) (\\d+) (\\d+)$`).exec(next())!;
      proc.runs.push({ vaddr: parseInt(r[1]!, 16), pages: Number(r[2]), lazy: r[3] === '1', file: Number(r[4]), offset: Number(r[5]) });
    }
    plan.procs.push(proc);
  }
  return plan;
}

t.test('plan for the real CRIU fixture', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-plan-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const planPath = path.join(dir, 'plan.txt');
  writeTargetPlan(IMG, planPath, 'rel/lazy.sock');
  const plan = parsePlan(t, fs.readFileSync(planPath, 'utf8'));
  t.equal(plan.socket, path.resolve('rel/lazy.sock'));
  t.same(plan.files, [path.join(IMG, 'pages-1.img'), path.join(IMG, 'pages-2.img')]);
  const tree = readPstree(IMG);
  t.same(
    plan.procs.map((p) => [p.pid, p.ppid]),
    tree.map((e) => [e.pid, e.ppid]),
    'one proc per pstree entry, in order',
  );
  const layout = JSON.parse(fs.readFileSync(path.resolve(IMG, '../parent-layout.json'), 'utf8')) as { dense: { start: number; pages: number; seed: number } };
  const pages = plan.files.map((f) => fs.readFileSync(f));
  for (const p of plan.procs) {
    t.ok(p.vmas.length > 0 && p.runs.length > 0);
    for (const r of p.runs) {
      t.ok(
        p.vmas.some(([s, e]) => s <= r.vaddr && r.vaddr + r.pages * PAGE_SIZE <= e),
        `run 0x${r.vaddr.toString(16)} inside one listed VMA`,
      );
      t.ok(r.offset + r.pages * PAGE_SIZE <= pages[r.file]!.length, 'run inside its file');
    }
    // Check the dense region through the plan's own indirection.
    let bad = 0;
    for (let i = 16; i < layout.dense.pages; i++) {
      const a = layout.dense.start + i * PAGE_SIZE;
      const r = p.runs.find((x) => x.vaddr <= a && a < x.vaddr + x.pages * PAGE_SIZE);
      const off = r ? r.offset + (a - r.vaddr) : -1;
      if (!r || !r.lazy || !pages[r.file]!.subarray(off, off + PAGE_SIZE).equals(expectedPage(a, i, layout.dense.seed))) bad++;
    }
    t.equal(bad, 0, `pid ${p.pid}: dense pages 16.. readable through the plan`);
  }
});

t.test('plan resolves the parent chain and cuts runs at VMA boundaries', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'fl-plan-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const A = 0x7f8800000000;
  const P = (n: number) => A + n * PAGE_SIZE;
  writeImageSet(path.join(root, 'pre'), {
    processes: [{ pid: 5, ppid: 0, vmas: [{ start: P(0), end: P(8) }], entries: [{ vaddr: P(0), nrPages: 4, flags: PE_PRESENT, data: Buffer.alloc(4 * PAGE_SIZE, 9) }] }],
  });
  writeImageSet(path.join(root, 'last'), {
    parent: '../pre',
    processes: [
      {
        pid: 5,
        ppid: 0,
        vmas: [
          { start: P(0), end: P(2) },
          { start: P(2), end: P(8) },
          { start: P(8), end: P(9), flags: 0x02, status: 0x41 },
        ],
        entries: [
          { vaddr: P(0), nrPages: 4, flags: PE_PARENT },
          { vaddr: P(4), nrPages: 2, flags: PE_LAZY | PE_PRESENT, data: Buffer.alloc(2 * PAGE_SIZE, 1) },
          { vaddr: P(8), nrPages: 1, flags: PE_PRESENT, data: Buffer.alloc(PAGE_SIZE, 2) },
        ],
      },
    ],
  });
  const planPath = path.join(root, 'plan');
  writeTargetPlan(path.join(root, 'last'), planPath, path.join(root, 'sock'));
  const text = fs.readFileSync(planPath, 'utf8');
  const h = (n: number) => n.toString(16);
  t.equal(
    text,
    [
      'faultline-plan 1',
      `socket ${path.join(root, 'sock')}`,
      `file 0 ${path.join(root, 'pre', 'pages-1.img')}`,
      `file 1 ${path.join(root, 'last', 'pages-1.img')}`,
      'proc 5 0 2 3',
      `vma ${h(P(0))} ${h(P(2))}`,
      `vma ${h(P(2))} ${h(P(8))}`,
      `run ${h(P(0))} 2 0 0 0`,
      `run ${h(P(2))} 2 0 0 ${2 * PAGE_SIZE}`,
      `run ${h(P(4))} 2 1 1 0`,
      '',
    ].join('\n'),
    'file-backed VMA and its run are left out; the parent run is cut at the VMA edge',
  );
});
