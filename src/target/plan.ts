import * as fs from 'fs';
import * as path from 'path';
import { ProcessImages, ProcessImagesOptions, readInventory, readPstree } from '../images';
import { PAGE_SIZE } from '../address';

export interface TargetPlanOptions {
  /** Passed to ProcessImages.open (page data itself is never read by the plan writer). */
  images?: ProcessImagesOptions;
}

/*
 * The plan is whitespace-separated text read by a C program with sscanf; paths containing
 * whitespace would shift its fields, so they are refused here instead of misread there.
 */
function checkPath(p: string, what: string): string {
  if (/\s/.test(p)) throw new Error(`target plan: ${what} path contains whitespace, which the plan format cannot carry: ${JSON.stringify(p)}`);
  return p;
}

const h = (n: number) => n.toString(16);

/** Renders the restore-target plan for the image set in imagesDir. */
export function renderTargetPlan(imagesDir: string, socketPath: string, opts: TargetPlanOptions = {}): string {
  const dir = path.resolve(imagesDir);
  const imgVersion = readInventory(dir).imgVersion;
  const tree = readPstree(dir, { imgVersion });
  const fileIdx = new Map<string, number>();
  const procLines: string[] = [];
  for (const p of tree) {
    let images: ProcessImages | null = null;
    if (fs.existsSync(path.join(dir, `mm-${p.pid}.img`))) {
      images = ProcessImages.open(dir, p.pid, { ...opts.images, openPagesFile: () => { throw new Error('plan writer does not read page data'); } });
    }
    // Zombies have a pstree entry but no memory images: they get an empty proc block.
    const vmas = images ? images.lazyVmas() : [];
    const runs: string[] = [];
    if (images) {
      const all = images.presentRuns();
      let v = 0;
      for (const r of all) {
        let start = r.vaddr;
        const end = r.vaddr + r.pages * PAGE_SIZE;
        let offset = r.offset;
        while (v < vmas.length && vmas[v]!.end <= start) v++;
        // Runs are cut at VMA edges and dropped outside lazy VMAs (criu restores those itself).
        for (let w = v; w < vmas.length && vmas[w]!.start < end; w++) {
          const s = Math.max(start, vmas[w]!.start);
          const e = Math.min(end, vmas[w]!.end);
          if (e <= s) continue;
          let idx = fileIdx.get(r.file);
          if (idx === undefined) {
            idx = fileIdx.size;
            fileIdx.set(checkPath(r.file, 'pages file'), idx);
          }
          runs.push(`run ${h(s)} ${(e - s) / PAGE_SIZE} ${r.lazy ? 1 : 0} ${idx} ${offset + (s - start)}`);
        }
        start = end;
        offset += r.pages * PAGE_SIZE;
      }
    }
    procLines.push(`proc ${p.pid} ${p.ppid} ${vmas.length} ${runs.length}`);
    for (const m of vmas) procLines.push(`vma ${h(m.start)} ${h(m.end)}`);
    procLines.push(...runs);
  }
  const lines = ['faultline-plan 1', `socket ${checkPath(path.resolve(socketPath), 'socket')}`];
  for (const [file, idx] of fileIdx) lines.push(`file ${idx} ${file}`);
  lines.push(...procLines);
  return lines.join('\n') + '\n';
}

/**
 * Writes the plan atomically (temp file + rename) so the C target never reads a half-written
 * plan. Format:
 *   faultline-plan 1
 *   socket <abs path>
 *   file <idx> <abs pages file>
 *   proc <pid> <ppid> <nvma> <nrun>
 *   vma <start-hex> <end-hex>
 *   run <vaddr-hex> <npages> <lazy 0|1> <file-idx> <byte-offset>
 */
export function writeTargetPlan(imagesDir: string, planPath: string, socketPath: string, opts: TargetPlanOptions = {}): void {
  const text = renderTargetPlan(imagesDir, socketPath, opts);
  const tmp = `${planPath}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, planPath);
}
