/* The restore plan: what native/bin/faultline-target and faultline-baseline read instead of CRIU's
 * protobuf images. src/target/plan.ts writes it from the images; this is its one C reader.
 *
 *   faultline-plan 1
 *   socket <absolute socket path>
 *   file <idx> <absolute path of a pages file>           (idx from 0, in order)
 *   proc <pid> <ppid> <nvma> <nrun>
 *   vma <start-hex> <end-hex>                             (nvma lines)
 *   run <vaddr-hex> <npages> <lazy 0|1> <file-idx> <byte-offset>   (nrun lines)
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define PLAN_PAGE 4096

struct plan_file {
	char *path;
	const uint8_t *base; /* read-only mmap, set by plan_map_files */
	size_t size;
	int line;
};

struct plan_vma {
	uint64_t start, end;
	int line;
};

struct plan_run {
	uint64_t vaddr, npages, off;
	int lazy, file, line;
};

struct plan_proc {
	int pid, ppid, nvma, nrun, line;
	struct plan_vma *vmas;
	struct plan_run *runs;
};

struct plan {
	char *socket;
	struct plan_file *files;
	int nfiles;
	struct plan_proc *procs;
	int nprocs;
};

/* Called with the plan line at fault (0: the plan as a whole) and a one-line message; must not
 * return (each program exits with its own code). */
typedef void (*plan_fail_fn)(int line, const char *msg) __attribute__((noreturn));

/* Reads and checks a plan: its format, and that each proc's vmas are disjoint (sorted on return),
 * every page of a run lies in a vma and no page is in two runs. */
void plan_read(const char *path, struct plan *out, plan_fail_fn fail);
void plan_map_files(struct plan *pl, plan_fail_fn fail);
/* Frees what plan_read allocated and unmaps what plan_map_files mapped; *pl is zeroed. */
void plan_free(struct plan *pl);
