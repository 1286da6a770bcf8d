/*
 * Reading the plan: the text file the TypeScript planner (src/target/plan.ts) writes in place of
 * CRIU's images, turned into the table of planned processes.  Owns `plan`.
 *
 * Plan format (hex lower case, no 0x):
 *   faultline-plan 1
 *   socket <absolute socket path>
 *   file <idx> <absolute path of a pages file>
 *   proc <pid> <ppid> <nvma> <nrun>
 *   vma <start-hex> <end-hex>
 *   run <vaddr-hex> <npages> <lazy 0|1> <file-idx> <byte-offset>
 *
 * The plan's own checks (format, files, vmas and runs) are in native/plan/plan.c; its vmas come
 * sorted.  Everything here runs in the main process before any fork, so that plan mistakes surface
 * before anything is handed over.
 */
#include "target.h"
#include <stdlib.h>

struct target_plan plan;

static void plan_fail(int line, const char *msg) __attribute__((noreturn));
static void plan_fail(int line, const char *msg)
{
	if (line > 0)
		die(EXIT_USAGE, "plan %s:%d: %s", opt.plan, line, msg);
	die(EXIT_USAGE, "plan %s: %s", opt.plan, msg);
}

static void read_plan(void)
{
	struct plan pl;
	plan_read(opt.plan, &pl, plan_fail);
	plan_map_files(&pl, plan_fail);
	plan.socket = pl.socket;
	plan.files = pl.files;
	plan.nprocs = pl.nprocs;
	plan.procs = calloc(plan.nprocs, sizeof(*plan.procs));
	if (!plan.procs)
		die(EXIT_NOMEM, "out of memory reading the plan");
	for (int i = 0; i < plan.nprocs; i++) {
		const struct plan_proc *pp = &pl.procs[i];
		struct proc *p = &plan.procs[i];
		p->pid = pp->pid;
		p->ppid = pp->ppid;
		p->nvma = pp->nvma;
		p->nrun = pp->nrun;
		p->line = pp->line;
		p->runs = pp->runs;
		p->vmas = calloc(pp->nvma ? pp->nvma : 1, sizeof(*p->vmas));
		if (!p->vmas)
			die(EXIT_NOMEM, "out of memory reading the plan");
		for (int j = 0; j < pp->nvma; j++)
			p->vmas[j] = (struct vma){ .start = pp->vmas[j].start, .end = pp->vmas[j].end, .line = pp->vmas[j].line };
	}
}

struct vma *find_vma(const struct proc *p, uint64_t addr)
{
	int lo = 0, hi = p->nvma - 1;
	while (lo <= hi) {
		int mid = (lo + hi) / 2;
		if (addr < p->vmas[mid].start)
			hi = mid - 1;
		else if (addr >= p->vmas[mid].end)
			lo = mid + 1;
		else
			return &p->vmas[mid];
	}
	return NULL;
}

/* Numbers each process's pages and points each at its bytes in a pages file (NULL: a hole). */
static void index_pages(struct proc *p)
{
	for (int j = 0; j < p->nvma; j++) {
		p->vmas[j].first = p->npages;
		p->npages += (p->vmas[j].end - p->vmas[j].start) / PAGE;
	}
	p->expect = calloc(p->npages ? p->npages : 1, sizeof(*p->expect));
	if (!p->expect)
		die(EXIT_NOMEM, "out of memory indexing pid %d", p->pid);
	for (int j = 0; j < p->nrun; j++) {
		const struct plan_run *r = &p->runs[j];
		const struct plan_file *pf = &plan.files[r->file];
		for (uint64_t k = 0; k < r->npages; k++) {
			uint64_t a = r->vaddr + k * PAGE;
			const struct vma *v = find_vma(p, a);
			p->expect[v->first + (a - v->start) / PAGE] = pf->base + r->off + k * PAGE;
		}
	}
}

static void mark_zombies(void)
{
	for (int z = 0; z < opt.nzombies; z++) {
		bool found = false;
		for (int i = 0; i < plan.nprocs; i++)
			if (plan.procs[i].pid == opt.zombies[z]) {
				plan.procs[i].zombie = true;
				found = true;
			}
		if (!found)
			die(EXIT_USAGE, "--zombie %d: no such pid in the plan", opt.zombies[z]);
	}
}

void load_plan(void)
{
	read_plan();
	for (int i = 0; i < plan.nprocs; i++)
		index_pages(&plan.procs[i]);
	mark_zombies();
}
