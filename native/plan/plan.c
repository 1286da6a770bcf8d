/* The one reader of the restore plan (plan.h), shared by the restore target and the baseline. */
#define _GNU_SOURCE
#include "plan.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static plan_fail_fn fail_fn;
static int lineno;

static void fail(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fail(int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fail_fn(line, msg);
}

static void *grow(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		fail(lineno, "out of memory");
	return p;
}

static uint64_t parse_u64(const char *tok, int base, const char *what)
{
	char *end;
	unsigned long long v;
	if (!tok)
		fail(lineno, "missing %s", what);
	/* a digit first: strtoull would also take a sign, after leading whitespace such as '\v' */
	if (!(base == 16 ? isxdigit((unsigned char)*tok) : isdigit((unsigned char)*tok)))
		fail(lineno, "bad %s '%s'", what, tok);
	errno = 0;
	v = strtoull(tok, &end, base);
	if (errno || end == tok || *end)
		fail(lineno, "bad %s '%s'", what, tok);
	return v;
}

static int parse_int(const char *tok, const char *what, long lo, long hi)
{
	char *end;
	long v;
	if (!tok)
		fail(lineno, "missing %s", what);
	errno = 0;
	v = strtol(tok, &end, 10);
	if (errno || end == tok || *end || v < lo || v > hi)
		fail(lineno, "bad %s '%s'", what, tok);
	return (int)v;
}

static void no_more(char **save)
{
	char *extra = strtok_r(NULL, " \t", save);
	if (extra)
		fail(lineno, "unexpected '%s' at end of line", extra);
}

/* The rest of the line after the keyword (and index): paths may contain spaces. */
static char *rest_path(char *s, const char *what)
{
	while (*s == ' ' || *s == '\t')
		s++;
	if (!*s)
		fail(lineno, "missing %s", what);
	if (*s != '/')
		fail(lineno, "%s '%s' is not absolute", what, s);
	return strdup(s);
}

static bool keyword(const char *s, const char *kw, size_t n)
{
	return !strncmp(s, kw, n) && (s[n] == ' ' || s[n] == '\t' || !s[n]);
}

/* vmas and runs seen so far for the last proc */
static int vmas_seen, runs_seen;

static void check_complete(const struct plan_proc *p)
{
	if (p && (vmas_seen < p->nvma || runs_seen < p->nrun))
		fail(p->line, "proc %d declared %d vma / %d run lines, got %d / %d", p->pid, p->nvma, p->nrun, vmas_seen,
		     runs_seen);
}

static struct plan_proc *current_proc(struct plan *pl, const char *kind)
{
	if (!pl->nprocs)
		fail(lineno, "'%s' line before any 'proc' line", kind);
	return &pl->procs[pl->nprocs - 1];
}

static int cmp_vma(const void *a, const void *b)
{
	const struct plan_vma *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

static int cmp_run(const void *a, const void *b)
{
	const struct plan_run *x = *(const struct plan_run *const *)a, *y = *(const struct plan_run *const *)b;
	return x->vaddr < y->vaddr ? -1 : x->vaddr > y->vaddr;
}

static const struct plan_vma *vma_at(const struct plan_proc *p, uint64_t a)
{
	int lo = 0, hi = p->nvma;
	while (lo < hi) {
		int mid = (lo + hi) / 2;
		if (a < p->vmas[mid].start)
			hi = mid;
		else if (a >= p->vmas[mid].end)
			lo = mid + 1;
		else
			return &p->vmas[mid];
	}
	return NULL;
}

/* The geometry both programs rely on: vmas sorted and disjoint, every page of a run inside a vma
 * (a run may span adjacent vmas), no page in two runs. */
static void check_layout(struct plan_proc *p)
{
	qsort(p->vmas, p->nvma, sizeof(*p->vmas), cmp_vma);
	for (int j = 1; j < p->nvma; j++)
		if (p->vmas[j].start < p->vmas[j - 1].end)
			fail(p->vmas[j].line, "vma overlaps the vma on line %d", p->vmas[j - 1].line);
	struct plan_run **runs = grow(NULL, (p->nrun ? p->nrun : 1) * sizeof(*runs));
	for (int j = 0; j < p->nrun; j++)
		runs[j] = &p->runs[j];
	qsort(runs, p->nrun, sizeof(*runs), cmp_run);
	for (int j = 0; j < p->nrun; j++) {
		const struct plan_run *r = runs[j];
		uint64_t end = r->vaddr + r->npages * PLAN_PAGE;
		if (j && r->vaddr < runs[j - 1]->vaddr + runs[j - 1]->npages * PLAN_PAGE)
			fail(r->line, "run overlaps the run on line %d", runs[j - 1]->line);
		for (uint64_t a = r->vaddr; a < end;) {
			const struct plan_vma *v = vma_at(p, a);
			if (!v)
				fail(r->line, "page %" PRIx64 " of the run lies in no vma of pid %d", a, p->pid);
			a = v->end;
		}
	}
	free(runs);
}

void plan_read(const char *path, struct plan *pl, plan_fail_fn f)
{
	FILE *file;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	bool header = false;

	fail_fn = f;
	lineno = 0;
	memset(pl, 0, sizeof(*pl));
	file = fopen(path, "r");
	if (!file)
		fail(0, "%s", strerror(errno));
	while ((len = getline(&line, &cap, file)) >= 0) {
		char *save, *kw;
		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = 0;
		for (kw = line; *kw == ' ' || *kw == '\t'; kw++)
			;
		if (!*kw || *kw == '#')
			continue;
		if (!header) {
			if (strcmp(kw, "faultline-plan 1"))
				fail(lineno, "expected 'faultline-plan 1', got '%s'", kw);
			header = true;
			continue;
		}
		if (keyword(kw, "socket", 6)) {
			if (pl->socket)
				fail(lineno, "second 'socket' line");
			pl->socket = rest_path(kw + 6, "socket path");
			continue;
		}
		if (keyword(kw, "file", 4)) {
			char *p = kw + 4, *end;
			long idx;
			while (*p == ' ' || *p == '\t')
				p++;
			idx = strtol(p, &end, 10);
			if (end == p || (*end != ' ' && *end != '\t'))
				fail(lineno, "bad file index");
			if (idx != pl->nfiles)
				fail(lineno, "file index %ld out of order (expected %d)", idx, pl->nfiles);
			pl->files = grow(pl->files, sizeof(*pl->files) * (pl->nfiles + 1));
			pl->files[pl->nfiles++] = (struct plan_file){ .path = rest_path(end, "pages file path"), .line = lineno };
			continue;
		}
		kw = strtok_r(kw, " \t", &save);
		if (!strcmp(kw, "proc")) {
			struct plan_proc *p;
			check_complete(pl->nprocs ? &pl->procs[pl->nprocs - 1] : NULL);
			pl->procs = grow(pl->procs, sizeof(*pl->procs) * (pl->nprocs + 1));
			p = &pl->procs[pl->nprocs];
			memset(p, 0, sizeof(*p));
			p->line = lineno;
			p->pid = parse_int(strtok_r(NULL, " \t", &save), "pid", 1, INT_MAX);
			p->ppid = parse_int(strtok_r(NULL, " \t", &save), "ppid", 0, INT_MAX);
			p->nvma = parse_int(strtok_r(NULL, " \t", &save), "nvma", 0, INT_MAX / 64);
			p->nrun = parse_int(strtok_r(NULL, " \t", &save), "nrun", 0, INT_MAX / 64);
			no_more(&save);
			for (int i = 0; i < pl->nprocs; i++)
				if (pl->procs[i].pid == p->pid)
					fail(lineno, "pid %d already declared on line %d", p->pid, pl->procs[i].line);
			p->vmas = calloc(p->nvma ? p->nvma : 1, sizeof(*p->vmas));
			p->runs = calloc(p->nrun ? p->nrun : 1, sizeof(*p->runs));
			if (!p->vmas || !p->runs)
				fail(lineno, "out of memory");
			vmas_seen = runs_seen = 0;
			pl->nprocs++;
		} else if (!strcmp(kw, "vma")) {
			struct plan_proc *p = current_proc(pl, "vma");
			struct plan_vma *v;
			if (vmas_seen == p->nvma)
				fail(lineno, "proc %d (line %d) declared only %d vma lines", p->pid, p->line, p->nvma);
			v = &p->vmas[vmas_seen++];
			v->line = lineno;
			v->start = parse_u64(strtok_r(NULL, " \t", &save), 16, "vma start");
			v->end = parse_u64(strtok_r(NULL, " \t", &save), 16, "vma end");
			no_more(&save);
			if (v->start % PLAN_PAGE || v->end % PLAN_PAGE)
				fail(lineno, "vma %" PRIx64 "-%" PRIx64 " is not page aligned", v->start, v->end);
			if (v->end <= v->start)
				fail(lineno, "vma %" PRIx64 "-%" PRIx64 " is empty", v->start, v->end);
		} else if (!strcmp(kw, "run")) {
			struct plan_proc *p = current_proc(pl, "run");
			struct plan_run *r;
			if (runs_seen == p->nrun)
				fail(lineno, "proc %d (line %d) declared only %d run lines", p->pid, p->line, p->nrun);
			r = &p->runs[runs_seen++];
			r->line = lineno;
			r->vaddr = parse_u64(strtok_r(NULL, " \t", &save), 16, "run address");
			r->npages = parse_u64(strtok_r(NULL, " \t", &save), 10, "run page count");
			r->lazy = parse_int(strtok_r(NULL, " \t", &save), "lazy flag", 0, 1);
			r->file = parse_int(strtok_r(NULL, " \t", &save), "file index", 0, INT_MAX);
			r->off = parse_u64(strtok_r(NULL, " \t", &save), 10, "byte offset");
			no_more(&save);
			if (r->vaddr % PLAN_PAGE)
				fail(lineno, "run address %" PRIx64 " is not page aligned", r->vaddr);
			if (r->npages == 0)
				fail(lineno, "run has 0 pages");
			/* so that vaddr + npages * PLAN_PAGE cannot wrap (it would skip the checks of check_layout) */
			if (r->npages > (UINT64_MAX - r->vaddr) / PLAN_PAGE)
				fail(lineno, "run %" PRIx64 " of %" PRIu64 " pages goes past the end of the address space", r->vaddr,
				     r->npages);
			if (r->file >= pl->nfiles)
				fail(lineno, "file index %d not declared", r->file);
		} else {
			fail(lineno, "unknown line '%s'", kw);
		}
	}
	if (ferror(file))
		fail(0, "%s", strerror(errno));
	free(line);
	fclose(file);
	lineno = 0;
	if (!header)
		fail(0, "empty plan (no 'faultline-plan 1' line)");
	if (!pl->socket)
		fail(0, "no 'socket' line");
	if (!pl->nprocs)
		fail(0, "no 'proc' line");
	check_complete(&pl->procs[pl->nprocs - 1]);
	for (int i = 0; i < pl->nprocs; i++)
		check_layout(&pl->procs[i]);
}

/* Maps every pages file read-only and checks that each run lies inside its file. */
void plan_map_files(struct plan *pl, plan_fail_fn f)
{
	fail_fn = f;
	for (int i = 0; i < pl->nfiles; i++) {
		struct plan_file *pf = &pl->files[i];
		struct stat st;
		int fd = open(pf->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0)
			fail(pf->line, "pages file %s: %s", pf->path, strerror(errno));
		pf->size = st.st_size;
		if (pf->size) {
			void *m = mmap(NULL, pf->size, PROT_READ, MAP_PRIVATE, fd, 0);
			if (m == MAP_FAILED)
				fail(pf->line, "mmap %s: %s", pf->path, strerror(errno));
			pf->base = m;
		}
		close(fd);
	}
	for (int i = 0; i < pl->nprocs; i++)
		for (int j = 0; j < pl->procs[i].nrun; j++) {
			const struct plan_run *r = &pl->procs[i].runs[j];
			const struct plan_file *pf = &pl->files[r->file];
			if (r->npages > pf->size / PLAN_PAGE || r->off > pf->size - r->npages * PLAN_PAGE)
				fail(r->line, "run reads past the end of %s (%zu bytes)", pl->files[r->file].path,
				     pl->files[r->file].size);
		}
}

void plan_free(struct plan *pl)
{
	for (int i = 0; i < pl->nfiles; i++) {
		if (pl->files[i].base)
			munmap((void *)pl->files[i].base, pl->files[i].size);
		free(pl->files[i].path);
	}
	for (int i = 0; i < pl->nprocs; i++) {
		free(pl->procs[i].vmas);
		free(pl->procs[i].runs);
	}
	free(pl->files);
	free(pl->procs);
	free(pl->socket);
	memset(pl, 0, sizeof(*pl));
}
