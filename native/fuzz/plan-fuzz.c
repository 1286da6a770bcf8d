/* Coverage-guided fuzzer for plan_read (native/plan/plan.c), the C reader of the restore plan.
 *
 *   faultline-plan-fuzz [--seconds S] [--seed N] [--seeds DIR] [--corpus DIR] [--regressions DIR]
 *                       [--crashes DIR] [--max-len N] [--timeout S] [--json]
 *   faultline-plan-fuzz --run FILE...      (runs each input once and says how plan_read took it)
 *
 * Built by native/Makefile: plan.c is compiled on its own with gcc's -fsanitize-coverage=trace-pc,
 * trace-cmp (only it calls the hooks below) and everything with ASan+UBSan, no recovery. Coverage is
 * AFL-style: each basic block's return address is hashed, (previous block, block) indexes a 64 KiB
 * map of hit counts, and a feature is an edge with a hit-count bucket (as test/fuzz/engine.ts does
 * with V8 block coverage). An input reaching a feature no earlier input reached joins the corpus.
 *
 * Mutations: bytes (flips, inserts, deletes, duplicates, splices) and the format's own: lines moved,
 * duplicated or taken from another input, keywords, synthetic lines, numbers rewritten (arithmetic,
 * interesting values such as 0xfffffffffffff000 or INT_MAX, odd spellings, and the operands plan.c
 * compared, from trace-cmp).
 *
 * plan_read opens each input itself, by a path that the --wrap'ed fopen answers with fmemopen over the
 * input (a memfd read through /proc/self/fd/N costs 6 syscalls an input, 1.7 times slower on a VM
 * where syscalls are dear). Its fail callback longjmps back here: a one-line error is the reader's
 * expected answer to bad input. Anything else is a crash, saved to --crashes DIR as crash-<id>: a
 * sanitizer report (the death callback saves the input and prints the summary), an input running
 * longer than --timeout, a plan accepted although it breaks what plan.h promises (check_plan), or
 * allocations of an accepted plan that plan_free leaves. plan.o's allocation calls go through the
 * --wrap'ed functions below, which track them: what a rejected input leaked (by design: the real
 * programs exit on a bad plan) is freed after it, with its open FILE.
 *
 * Regression inputs (test/fuzz/regressions/plan/) are replayed first and must now be rejected or
 * parse into a valid plan. The last line of output is the summary (JSON with --json), shaped like
 * test/fuzz/run.ts's; exit status 1 when anything crashed, 2 on a usage error.
 */
#define _GNU_SOURCE
#include "../plan/plan.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NO_SAN __attribute__((no_sanitize("address", "undefined")))

/* ---- sanitizer settings and hooks ---- */

const char *__asan_default_options(void);
const char *__ubsan_default_options(void);
void __sanitizer_set_death_callback(void (*callback)(void));
void __sanitizer_report_error_summary(const char *summary);

/* No leak check: rejected inputs leak by design (tracked and freed below). */
const char *__asan_default_options(void)
{
	return "detect_leaks=0:quarantine_size_mb=32:handle_abort=1:print_summary=1";
}

/* gcc links UBSan's own runtime beside ASan's: it stops by abort(), which ASan reports (handle_abort),
 * so that the one death callback below sees UBSan's findings too. */
const char *__ubsan_default_options(void)
{
	return "halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1";
}

/* ---- coverage (only plan.o is compiled with -fsanitize-coverage) ---- */

#define MAP_BITS 16
#define MAP_SIZE (1u << MAP_BITS)
static uint8_t cov_map[MAP_SIZE] __attribute__((aligned(64)));
static uint8_t cov_seen[MAP_SIZE]; /* per edge: bit b set = hit-count bucket b seen */
static uintptr_t cov_prev;
static uintptr_t cov_base; /* &plan_read: PCs are hashed as offsets, so features repeat across runs */
static size_t nfeatures;

NO_SAN void __sanitizer_cov_trace_pc(void)
{
	uintptr_t pc = (uintptr_t)__builtin_return_address(0) - cov_base;
	uintptr_t cur = (uintptr_t)((pc * 0x9E3779B97F4A7C15ull) >> (64 - MAP_BITS));
	uint8_t *c = &cov_map[(cur ^ cov_prev) & (MAP_SIZE - 1)];
	*c += *c != 255;
	cov_prev = cur >> 1;
}

/* Comparison operands (trace-cmp) of the current input: numbers plan.c compared a value with. The
 * inputs that join the corpus hand theirs to `learned`, which a mutation writes into a number field. */
#define CMP_RING 64
static uint64_t cmp_ring[CMP_RING];
static unsigned cmp_n;
#define LEARNED_MAX 512
static uint64_t learned[LEARNED_MAX];
static unsigned nlearned;

NO_SAN static inline void cmp_note(uint64_t a, uint64_t b)
{
	if (a == b)
		return;
	cmp_ring[cmp_n++ % CMP_RING] = a;
	cmp_ring[cmp_n++ % CMP_RING] = b;
}
NO_SAN void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { (void)a, (void)b; }
NO_SAN void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { (void)a, (void)b; }
NO_SAN void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { cmp_note(a, b); }
NO_SAN void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { cmp_note(a, b); }
NO_SAN void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { cmp_note(a, b); }
NO_SAN void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { cmp_note(a, b); }
NO_SAN void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { cmp_note(a, b); }
NO_SAN void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { cmp_note(a, b); }
NO_SAN void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a, (void)b; }
NO_SAN void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a, (void)b; }
NO_SAN void __sanitizer_cov_trace_switch(uint64_t v, void *table)
{
	const uint64_t *cases = table; /* count, bit width, values */
	for (uint64_t i = 0; i < cases[0]; i++)
		cmp_note(v, cases[2 + i]);
}

static void learn_cmps(void)
{
	unsigned n = cmp_n < CMP_RING ? cmp_n : CMP_RING;
	for (unsigned i = 0; i < n; i++) {
		uint64_t v = cmp_ring[i];
		unsigned j;
		for (j = 0; j < nlearned && learned[j] != v; j++)
			;
		if (j == nlearned)
			learned[nlearned < LEARNED_MAX ? nlearned++ : (unsigned)(v % LEARNED_MAX)] = v;
	}
}

static uint8_t bucket_bit[256];

static void cov_init(void)
{
	cov_base = (uintptr_t)&plan_read;
	for (int c = 1; c < 256; c++) {
		int b = c <= 3 ? c - 1 : c < 8 ? 3 : c < 16 ? 4 : c < 32 ? 5 : c < 128 ? 6 : 7;
		bucket_bit[c] = (uint8_t)(1u << b);
	}
}

/* Folds the map of the input just run into cov_seen (and clears it); true if it had a new feature. */
NO_SAN static bool cov_collect(void)
{
	bool fresh = false;
	for (size_t i = 0; i < MAP_SIZE; i += 32) {
		uint64_t w[4];
		memcpy(w, &cov_map[i], 32);
		if (!(w[0] | w[1] | w[2] | w[3]))
			continue;
		for (size_t k = i; k < i + 32; k++) {
			uint8_t bit = bucket_bit[cov_map[k]];
			if (bit && !(cov_seen[k] & bit)) {
				cov_seen[k] |= bit;
				nfeatures++;
				fresh = true;
			}
		}
		memset(&cov_map[i], 0, 32);
	}
	return fresh;
}

/* ---- what plan.o allocates: --wrap'ed, tracked while `tracking` ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
char *__real_strdup(const char *s);
ssize_t __real_getline(char **line, size_t *cap, FILE *f);
ssize_t __real___getdelim(char **line, size_t *cap, int delim, FILE *f);
FILE *__real_fopen(const char *path, const char *mode);
int __real_fclose(FILE *f);

#define LIVE_MAX 65536
static void *live[LIVE_MAX];
static size_t nlive;
static bool tracking, live_overflow;
static FILE *live_file;

static void track(void *p)
{
	if (!p)
		return;
	if (nlive < LIVE_MAX)
		live[nlive++] = p;
	else
		live_overflow = true;
}

static void untrack(void *p)
{
	for (size_t i = nlive; i-- > 0;)
		if (live[i] == p) {
			live[i] = live[--nlive];
			return;
		}
}

/* plan.o's allocations past 16 MiB fail as out of memory, which plan.c reports as an error: a proc
 * may declare 33 million vmas, and mapping that much per input would slow the fuzzer down. */
#define ALLOC_LIMIT (16u << 20)

static bool too_big(size_t n, size_t size)
{
	size_t bytes;
	if (!tracking || (!__builtin_mul_overflow(n, size, &bytes) && bytes <= ALLOC_LIMIT))
		return false;
	errno = ENOMEM;
	return true;
}

void *__wrap_malloc(size_t n)
{
	if (too_big(n, 1))
		return NULL;
	void *p = __real_malloc(n);
	if (tracking)
		track(p);
	return p;
}

void *__wrap_calloc(size_t n, size_t size)
{
	if (too_big(n, size))
		return NULL;
	void *p = __real_calloc(n, size);
	if (tracking)
		track(p);
	return p;
}

void *__wrap_realloc(void *p, size_t n)
{
	if (too_big(n, 1))
		return NULL;
	void *q = __real_realloc(p, n);
	if (tracking && q) {
		if (p)
			untrack(p);
		track(q);
	}
	return q;
}

void __wrap_free(void *p)
{
	if (tracking && p)
		untrack(p);
	__real_free(p);
}

char *__wrap_strdup(const char *s)
{
	char *p = __real_strdup(s);
	if (tracking)
		track(p);
	return p;
}

ssize_t __wrap_getline(char **line, size_t *cap, FILE *f)
{
	char *before = *line;
	ssize_t n = __real_getline(line, cap, f);
	if (tracking && *line != before) {
		if (before)
			untrack(before);
		track(*line);
	}
	return n;
}

/* glibc's getline is an inline call of __getdelim when optimizing */
ssize_t __wrap___getdelim(char **line, size_t *cap, int delim, FILE *f)
{
	char *before = *line;
	ssize_t n = __real___getdelim(line, cap, delim, f);
	if (tracking && *line != before) {
		if (before)
			untrack(before);
		track(*line);
	}
	return n;
}

/* The fuzzer's plan_read calls name INPUT_PATH: it reads the current input from memory. */
static const char INPUT_PATH[] = "/dev/faultline-plan-fuzz-input";
static const uint8_t *cur_input;
static size_t cur_len;

FILE *__wrap_fopen(const char *path, const char *mode)
{
	FILE *f;
	if (path == INPUT_PATH)
		f = fmemopen((void *)(cur_len ? cur_input : (const uint8_t *)""), cur_len, mode);
	else
		f = __real_fopen(path, mode);
	if (tracking)
		live_file = f;
	return f;
}

int __wrap_fclose(FILE *f)
{
	if (f == live_file)
		live_file = NULL;
	return __real_fclose(f);
}

/* After a rejected input: what plan_read had allocated, and its open plan file. */
static void release_all(void)
{
	for (size_t i = 0; i < nlive; i++)
		__real_free(live[i]);
	nlive = 0;
	if (live_file)
		__real_fclose(live_file);
	live_file = NULL;
}

/* ---- utilities ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("faultline-plan-fuzz: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		die("out of memory");
	return p;
}

static uint64_t hash64(const uint8_t *d, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void mkdirs(const char *dir)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s", dir);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			mkdir(tmp, 0777);
			*p = '/';
		}
	if (mkdir(tmp, 0777) && errno != EEXIST)
		die("mkdir %s: %s", dir, strerror(errno));
}

static bool write_file(const char *dir, const char *name, const uint8_t *d, size_t n)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0)
		return false;
	bool ok = write(fd, d, n) == (ssize_t)n;
	return close(fd) == 0 && ok;
}

struct input {
	uint8_t *data;
	size_t len;
	char name[256]; /* file name, for regressions */
};

static size_t max_len = 8192;

static size_t read_dir(const char *dir, struct input **out, bool missing_ok)
{
	struct dirent **ents;
	int n = scandir(dir, &ents, NULL, alphasort);
	size_t count = 0;
	if (n < 0) {
		if (missing_ok && errno == ENOENT)
			return 0;
		die("%s: %s", dir, strerror(errno));
	}
	*out = xmalloc(sizeof(**out) * (n + 1));
	for (int i = 0; i < n; i++) {
		char path[PATH_MAX];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
		if (ents[i]->d_name[0] != '.' && !stat(path, &st) && S_ISREG(st.st_mode)) {
			struct input *in = &(*out)[count];
			FILE *f = fopen(path, "rb");
			if (!f)
				die("%s: %s", path, strerror(errno));
			in->len = st.st_size < (off_t)max_len ? (size_t)st.st_size : max_len;
			in->data = xmalloc(in->len);
			if (fread(in->data, 1, in->len, f) != in->len)
				die("%s: short read", path);
			fclose(f);
			snprintf(in->name, sizeof(in->name), "%s", ents[i]->d_name);
			count++;
		}
		free(ents[i]);
	}
	free(ents);
	return count;
}

/* ---- running one input ---- */

static jmp_buf fail_jmp;
static int fail_line;
static char fail_msg[600];

static void on_fail(int line, const char *msg) __attribute__((noreturn));
static void on_fail(int line, const char *msg)
{
	fail_line = line;
	snprintf(fail_msg, sizeof(fail_msg), "%s", msg);
	longjmp(fail_jmp, 1);
}

static char violation[512];

static bool violated(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool violated(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(violation, sizeof(violation), fmt, ap);
	va_end(ap);
	return false;
}

struct span {
	uint64_t start, end;
	int line;
};

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* What plan.h promises of a plan plan_read returned; false (with `violation` set) if broken. */
static bool check_plan(const struct plan *pl)
{
	if (!pl->socket || pl->socket[0] != '/')
		return violated("socket path missing or not absolute");
	if (pl->nfiles < 0 || (pl->nfiles && !pl->files))
		return violated("bad file table (%d files)", pl->nfiles);
	for (int i = 0; i < pl->nfiles; i++)
		if (!pl->files[i].path || pl->files[i].path[0] != '/' || pl->files[i].base || pl->files[i].size)
			return violated("file %d: path missing, not absolute, or already mapped", i);
	if (pl->nprocs < 1 || !pl->procs)
		return violated("plan accepted with %d procs", pl->nprocs);
	for (int i = 0; i < pl->nprocs; i++) {
		const struct plan_proc *p = &pl->procs[i];
		if (p->pid < 1 || p->ppid < 0 || p->nvma < 0 || p->nrun < 0 || !p->vmas || !p->runs)
			return violated("proc (line %d): pid %d ppid %d nvma %d nrun %d", p->line, p->pid, p->ppid, p->nvma,
					p->nrun);
		for (int j = 0; j < i; j++)
			if (pl->procs[j].pid == p->pid)
				return violated("pid %d declared twice (lines %d and %d)", p->pid, pl->procs[j].line, p->line);
		for (int j = 0; j < p->nvma; j++) {
			const struct plan_vma *v = &p->vmas[j];
			if (v->start % PLAN_PAGE || v->end % PLAN_PAGE || v->end <= v->start)
				return violated("vma %" PRIx64 "-%" PRIx64 " (line %d) unaligned or empty", v->start, v->end,
						v->line);
			if (j && v->start < p->vmas[j - 1].end)
				return violated("vmas of pid %d not sorted and disjoint: %" PRIx64 "-%" PRIx64
						" (line %d) after %" PRIx64 "-%" PRIx64 " (line %d)",
						p->pid, v->start, v->end, v->line, p->vmas[j - 1].start, p->vmas[j - 1].end,
						p->vmas[j - 1].line);
		}
		struct span *runs = xmalloc(sizeof(*runs) * (p->nrun + 1));
		bool ok = true;
		for (int j = 0; ok && j < p->nrun; j++) {
			const struct plan_run *r = &p->runs[j];
			uint64_t bytes, end;
			if (r->vaddr % PLAN_PAGE || r->npages == 0 || (r->lazy != 0 && r->lazy != 1) || r->file < 0 ||
			    r->file >= pl->nfiles) {
				ok = violated("run (line %d): vaddr %" PRIx64 " npages %" PRIu64 " lazy %d file %d", r->line,
					      r->vaddr, r->npages, r->lazy, r->file);
				break;
			}
			if (__builtin_mul_overflow(r->npages, (uint64_t)PLAN_PAGE, &bytes) ||
			    __builtin_add_overflow(r->vaddr, bytes, &end)) {
				ok = violated("run %" PRIx64 " of %" PRIu64 " pages (line %d) wraps past the end of the address "
					      "space, so lies in no vma",
					      r->vaddr, r->npages, r->line);
				break;
			}
			runs[j] = (struct span){ r->vaddr, end, r->line };
			/* every page in a vma (vmas checked sorted above) */
			for (uint64_t a = r->vaddr; a < end;) {
				int k;
				for (k = 0; k < p->nvma && !(p->vmas[k].start <= a && a < p->vmas[k].end); k++)
					;
				if (k == p->nvma) {
					ok = violated("page %" PRIx64 " of the run on line %d lies in no vma of pid %d", a, r->line,
						      p->pid);
					break;
				}
				a = p->vmas[k].end;
			}
		}
		if (ok) {
			qsort(runs, p->nrun, sizeof(*runs), cmp_span);
			for (int j = 1; ok && j < p->nrun; j++)
				if (runs[j].start < runs[j - 1].end)
					ok = violated("runs on lines %d and %d of pid %d overlap", runs[j - 1].line, runs[j].line,
						      p->pid);
		}
		free(runs);
		if (!ok)
			return false;
	}
	return true;
}

enum outcome { ACCEPTED, REJECTED, BROKEN };

static volatile sig_atomic_t in_input;

/* Runs plan_read on one input. BROKEN: `violation` says what is wrong. */
static enum outcome run_input(const uint8_t *d, size_t n)
{
	struct plan pl;
	cur_input = d;
	cur_len = n;
	cov_prev = 0;
	cmp_n = 0;
	live_overflow = false;
	in_input = 1;
	if (setjmp(fail_jmp)) {
		tracking = false;
		release_all();
		in_input = 0;
		return REJECTED;
	}
	tracking = true;
	plan_read(INPUT_PATH, &pl, on_fail);
	tracking = false;
	bool ok = check_plan(&pl);
	tracking = true;
	plan_free(&pl);
	tracking = false;
	if (ok && (nlive || live_file))
		ok = violated("plan_free left %zu allocation(s)%s of an accepted plan", nlive,
			      live_file ? " and the plan file open" : "");
	release_all();
	in_input = 0;
	return ok ? ACCEPTED : BROKEN;
}

/* ---- crashes, summary ---- */

#define CRASH_MAX 64
struct crash {
	char id[17];
	uint8_t *data;
	size_t len;
	char error[600];
};
static struct crash crashes[CRASH_MAX];
static int ncrashes;
static char *replay_failures[CRASH_MAX];
static int nreplay_failures;
static const char *crash_dir;
static bool json;
static uint64_t seed;
static unsigned long long execs;
static double started, finished;
static size_t corpus_n, nregressions;
static int phase; /* 0: loading, 1: replaying regressions, 2: fuzzing */
static const char *cur_name; /* the regression being replayed */

static void id_of(const uint8_t *d, size_t n, char *out, int hex)
{
	snprintf(out, 17, "%016" PRIx64, hash64(d, n));
	out[hex] = 0;
}

/* One crash per distinct error (numbers stripped: the same check failing on other values is one). */
static void record_crash(const uint8_t *d, size_t n, const char *error)
{
	char key[600], other[600];
	int k = 0;
	for (const char *s = error; *s && k < 599; s++)
		if (!(*s >= '0' && *s <= '9') && !(*s >= 'a' && *s <= 'f'))
			key[k++] = *s;
	key[k] = 0;
	for (int i = 0; i < ncrashes; i++) {
		k = 0;
		for (const char *s = crashes[i].error; *s && k < 599; s++)
			if (!(*s >= '0' && *s <= '9') && !(*s >= 'a' && *s <= 'f'))
				other[k++] = *s;
		other[k] = 0;
		if (!strcmp(key, other))
			return;
	}
	if (ncrashes == CRASH_MAX)
		return;
	struct crash *c = &crashes[ncrashes++];
	id_of(d, n, c->id, 12);
	c->data = xmalloc(n);
	memcpy(c->data, d, n);
	c->len = n;
	snprintf(c->error, sizeof(c->error), "%s", error);
	if (crash_dir) {
		char name[32];
		mkdirs(crash_dir);
		snprintf(name, sizeof(name), "crash-%s", c->id);
		if (!write_file(crash_dir, name, d, n))
			fprintf(stderr, "faultline-plan-fuzz: cannot save %s/%s: %s\n", crash_dir, name, strerror(errno));
	}
}

static void record_replay_failure(const char *name, const char *error)
{
	if (nreplay_failures == CRASH_MAX)
		return;
	size_t n = strlen(name) + strlen(error) + 8;
	replay_failures[nreplay_failures] = xmalloc(n);
	snprintf(replay_failures[nreplay_failures++], n, "%s: %s", name, error);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = *s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void print_summary(void)
{
	double secs = (finished ? finished : now()) - started;
	if (secs <= 0)
		secs = 1e-9;
	unsigned long long eps = (unsigned long long)(execs / secs + 0.5);
	if (json) {
		printf("{\"target\":\"plan\",\"seed\":%" PRIu64 ",\"execs\":%llu,\"seconds\":%.3f,\"execsPerSecond\":%llu,"
		       "\"features\":%zu,\"corpus\":%zu,\"regressions\":%zu,\"replayFailures\":[",
		       seed, execs, secs, eps, nfeatures, corpus_n, nregressions);
		for (int i = 0; i < nreplay_failures; i++) {
			if (i)
				putchar(',');
			json_string(stdout, replay_failures[i]);
		}
		printf("],\"crashes\":[");
		for (int i = 0; i < ncrashes; i++) {
			const struct crash *c = &crashes[i];
			printf("%s{\"id\":\"%s\",\"bytes\":%zu,\"hex\":\"", i ? "," : "", c->id, c->len);
			for (size_t j = 0; j < c->len && j < 256; j++)
				printf("%02x", c->data[j]);
			printf("\",\"error\":");
			json_string(stdout, c->error);
			putchar('}');
		}
		printf("]}\n");
	} else {
		printf("plan: %llu execs in %.1f s (%llu/s), %zu coverage features, corpus %zu, %zu regressions replayed, "
		       "%d crashes\n",
		       execs, secs, eps, nfeatures, corpus_n, nregressions, ncrashes);
		for (int i = 0; i < nreplay_failures; i++)
			printf("  replay failure %s\n", replay_failures[i]);
		for (int i = 0; i < ncrashes; i++)
			printf("  crash %s (%zu bytes): %s\n", crashes[i].id, crashes[i].len, crashes[i].error);
	}
	fflush(stdout);
}

/* Called by the sanitizer runtime after its report, before it exits: the input was a crash. */
static char san_summary[512];

void __sanitizer_report_error_summary(const char *summary)
{
	if (!san_summary[0]) /* the first: UBSan's, not ASan's report of the abort() that follows it */
		snprintf(san_summary, sizeof(san_summary), "%s", summary);
	fprintf(stderr, "%s\n", summary);
}

static void on_death(void)
{
	tracking = false;
	const char *what = san_summary[0] ? san_summary : "sanitizer report (see stderr)";
	if (in_input && phase == 1)
		record_replay_failure(cur_name, what);
	else if (in_input)
		record_crash(cur_input, cur_len, what);
	finished = now();
	print_summary();
}

static unsigned timeout_s = 10;

/* SIGALRM each second: an input still running after timeout_s is a hang, reported like a crash. */
static void on_alarm(int sig)
{
	static unsigned long long last = ~0ull;
	static unsigned ticks;
	(void)sig;
	if (!in_input || execs != last) {
		last = execs;
		ticks = 0;
		return;
	}
	if (++ticks < timeout_s)
		return;
	tracking = false;
	char msg[64];
	snprintf(msg, sizeof(msg), "timeout: one input ran for more than %u s", timeout_s);
	if (phase == 1)
		record_replay_failure(cur_name, msg);
	else
		record_crash(cur_input, cur_len, msg);
	finished = now();
	print_summary();
	_exit(1);
}

/* ---- mutation ---- */

static uint64_t rs;

static inline uint64_t rnd(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}

static inline size_t pick(size_t n)
{
	return n ? (size_t)(rnd() % n) : 0;
}

static const char *const DICT[] = {
	"faultline-plan 1", "faultline-plan", "faultline-plan 2", "socket", "file", "proc", "vma", "run", "#", "/",
	" ", "\t", "\n", "\r\n", "\r", "\v", "\f", "-", "+", "0x", "0X", "/tmp/x.sock", "/p", "socket /s\n",
	"file 0 /f\n", "proc 1 0 0 0\n", "vma 1000 2000\n", "run 1000 1 1 0 0\n", "faultline-plan 1\n",
};
#define NDICT (sizeof(DICT) / sizeof(DICT[0]))

static const uint64_t INTERESTING[] = {
	0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024, 4095, 4096, 4097, 8191, 8192,
	65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ull, 33554431, 33554432, 0x7ffffffff000ull,
	0x800000000000ull, 0xffffffffffffull, 1ull << 52, (1ull << 52) - 1, (1ull << 52) + 1, 0x7fffffffffffffffull,
	0x8000000000000000ull, 0xfffffffffffff000ull, 0xffffffffffffe000ull, 0xffffffffffffffffull,
	-(uint64_t)INT_MAX, -(uint64_t)1 << 31,
};
#define NINTERESTING (sizeof(INTERESTING) / sizeof(INTERESTING[0]))

static const char *const ODD_NUMBERS[] = {
	"-1", "-0", "+1", "-2147483648", "2147483648", "18446744073709551615", "18446744073709551616",
	"0x10000000000000000", "99999999999999999999", "0x", "00000000000000000001", "1e3", "0x1000", "1 2", "",
	"-fffffffffffff000", "+1000", " 1", "\v1", "\f-1", "1\v",
};
#define NODD (sizeof(ODD_NUMBERS) / sizeof(ODD_NUMBERS[0]))

static uint8_t *buf; /* the input being mutated, max_len bytes */
static size_t blen;

static struct input *corpus;
static size_t corpus_cap;

static void buf_insert(size_t at, const void *src, size_t n)
{
	if (at > blen)
		at = blen;
	if (n > max_len - blen)
		n = max_len - blen;
	memmove(buf + at + n, buf + at, blen - at);
	memcpy(buf + at, src, n);
	blen += n;
}

static void buf_delete(size_t at, size_t n)
{
	if (at >= blen)
		return;
	if (n > blen - at)
		n = blen - at;
	memmove(buf + at, buf + at + n, blen - at - n);
	blen -= n;
}

static void buf_replace(size_t at, size_t n, const void *src, size_t m)
{
	buf_delete(at, n);
	buf_insert(at, src, m);
}

static bool is_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A random whitespace-separated token: [*s, *e). False if there is none. */
static bool find_token(size_t *s, size_t *e)
{
	if (!blen)
		return false;
	size_t at = pick(blen), i;
	for (i = at; i < blen && is_space(buf[i]); i++)
		;
	if (i == blen) {
		for (i = at; i > 0 && is_space(buf[i - 1]); i--)
			;
		if (i == 0)
			return false;
		i--;
	}
	*s = *e = i;
	while (*s > 0 && !is_space(buf[*s - 1]))
		(*s)--;
	while (*e < blen && !is_space(buf[*e]))
		(*e)++;
	return true;
}

/* The line around a random position: [*s, *e) including its '\n' if any. */
static void find_line(size_t *s, size_t *e)
{
	size_t at = pick(blen + 1);
	*s = at;
	while (*s > 0 && buf[*s - 1] != '\n')
		(*s)--;
	*e = at;
	while (*e < blen && buf[*e] != '\n')
		(*e)++;
	if (*e < blen)
		(*e)++;
}

static size_t line_start_at(size_t at)
{
	while (at > 0 && buf[at - 1] != '\n')
		at--;
	return at;
}

static uint64_t some_number(void)
{
	switch (pick(4)) {
	case 0:
		return INTERESTING[pick(NINTERESTING)];
	case 1:
		if (nlearned)
			return learned[pick(nlearned)];
		return pick(16);
	case 2:
		return pick(8) * PLAN_PAGE + (pick(4) ? 0x7f0000000000ull : 0);
	default:
		return pick(64);
	}
}

static int format_number(char *out, size_t cap, uint64_t v, int hex)
{
	switch (hex) {
	case 1:
		return snprintf(out, cap, "%" PRIx64, v);
	case 2:
		return snprintf(out, cap, "0x%" PRIX64, v);
	case 3:
		return snprintf(out, cap, "%" PRId64, (int64_t)v);
	default:
		return snprintf(out, cap, "%" PRIu64, v);
	}
}

/* Rewrites a number token: arithmetic on its value, an interesting or learned value, or an odd one. */
static void mutate_number(void)
{
	size_t s, e;
	char tok[32], out[40];
	if (!find_token(&s, &e) || e - s >= sizeof(tok))
		return;
	memcpy(tok, buf + s, e - s);
	tok[e - s] = 0;
	bool hex = false;
	for (size_t i = 0; tok[i]; i++)
		if ((tok[i] >= 'a' && tok[i] <= 'f') || (tok[i] >= 'A' && tok[i] <= 'F') || tok[i] == 'x')
			hex = true;
	if (!hex && blen - line_start_at(s) >= 3 &&
	    (!memcmp(buf + line_start_at(s), "vma", 3) || !memcmp(buf + line_start_at(s), "run", 3)))
		hex = pick(2); /* addresses are hex without a prefix */
	uint64_t v = strtoull(tok, NULL, hex ? 16 : 10);
	int n;
	switch (pick(5)) {
	case 0: {
		static const int64_t deltas[] = { 1, -1, 2, -2, 16, -16, 4096, -4096, 8192, -8192 };
		v += (uint64_t)deltas[pick(10)];
		n = format_number(out, sizeof(out), v, hex);
		break;
	}
	case 1:
		v = pick(2) ? v * 2 : v / 2;
		n = format_number(out, sizeof(out), v, hex);
		break;
	case 2:
		n = snprintf(out, sizeof(out), "%s", ODD_NUMBERS[pick(NODD)]);
		break;
	default:
		n = format_number(out, sizeof(out), some_number(), pick(4) ? hex : (int)pick(4));
	}
	buf_replace(s, e - s, out, n);
}

/* A whole line of the format with random fields. */
static void insert_synthetic_line(void)
{
	char line[160];
	char a[40], b[40], c[40], d[40];
	int n;
	format_number(a, sizeof(a), some_number(), 0);
	format_number(b, sizeof(b), some_number(), 0);
	format_number(c, sizeof(c), pick(4) ? pick(6) : some_number(), 0);
	format_number(d, sizeof(d), pick(4) ? pick(6) : some_number(), 0);
	switch (pick(5)) {
	case 0:
		n = snprintf(line, sizeof(line), "proc %s %s %s %s\n", pick(2) ? a : "2", pick(2) ? b : "1", c, d);
		break;
	case 1: {
		uint64_t s = some_number() & ~(uint64_t)(PLAN_PAGE - 1);
		n = snprintf(line, sizeof(line), "vma %" PRIx64 " %" PRIx64 "\n", s, pick(2) ? s + (1 + pick(8)) * PLAN_PAGE : some_number());
		break;
	}
	case 2:
		n = snprintf(line, sizeof(line), "run %" PRIx64 " %s %d %s %s\n", some_number() & ~(uint64_t)(PLAN_PAGE - 1),
			     pick(2) ? "1" : a, (int)pick(2), c, pick(2) ? "0" : b);
		break;
	case 3:
		n = snprintf(line, sizeof(line), "file %s /p%s\n", c, pick(2) ? "" : " q");
		break;
	default:
		n = snprintf(line, sizeof(line), "socket /s%s\n", a);
	}
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	buf_insert(line_start_at(pick(blen + 1)), line, n);
}

static void mutate_once(void)
{
	static const uint8_t BYTES[] = { 0, 0xff, 0x7f, 0x80, '\n', '\r', ' ', '\t', '#', '-', '+', '/', '0', '1',
					 '9', 'f', 'x', '\v' };
	size_t at = pick(blen ? blen : 1), n, s, e;
	uint8_t tmp[64];
	int op = (int)pick(17);
	if (!blen && op < 9) {
		op = 9;
	}
	switch (op) {
	case 0: /* flip a bit */
		buf[at] ^= 1u << pick(8);
		break;
	case 1: /* a random byte */
		buf[at] = (uint8_t)rnd();
		break;
	case 2: /* an interesting byte */
		buf[at] = BYTES[pick(sizeof(BYTES))];
		break;
	case 3: /* delete a range */
		buf_delete(at, 1 + pick(16));
		break;
	case 4: /* duplicate a range */
		n = 1 + pick(blen - at < 64 ? blen - at : 64);
		memcpy(tmp, buf + at, n);
		buf_insert(at + n, tmp, n);
		break;
	case 5: /* delete, duplicate or move a line */
	case 6:
		find_line(&s, &e);
		n = e - s;
		if (n > 0 && n <= 512) {
			uint8_t line[512];
			memcpy(line, buf + s, n);
			int how = (int)pick(3);
			if (how != 1)
				buf_delete(s, n);
			if (how != 0)
				buf_insert(line_start_at(pick(blen + 1)), line, n);
		}
		break;
	case 7: /* replace a token with a dictionary word */
		if (find_token(&s, &e)) {
			const char *w = DICT[pick(NDICT)];
			buf_replace(s, e - s, w, strlen(w));
		}
		break;
	case 8: /* rewrite a number */
	case 12:
	case 13:
		mutate_number();
		break;
	case 9: { /* insert a dictionary word */
		const char *w = DICT[pick(NDICT)];
		buf_insert(pick(blen + 1), w, strlen(w));
		break;
	}
	case 10: /* insert random bytes */
		n = 1 + pick(8);
		for (size_t i = 0; i < n; i++)
			tmp[i] = (uint8_t)rnd();
		buf_insert(pick(blen + 1), tmp, n);
		break;
	case 11: /* a synthetic line */
		insert_synthetic_line();
		break;
	case 14: { /* splice: this input up to a point, another from a point */
		const struct input *o = &corpus[pick(corpus_n)];
		size_t cut = pick(o->len + 1);
		blen = pick(blen + 1);
		buf_insert(blen, o->data + cut, o->len - cut);
		break;
	}
	case 15: { /* a line of another input */
		const struct input *o = &corpus[pick(corpus_n)];
		size_t os = pick(o->len + 1), oe;
		while (os > 0 && o->data[os - 1] != '\n')
			os--;
		for (oe = os; oe < o->len && o->data[oe] != '\n'; oe++)
			;
		if (oe < o->len)
			oe++;
		buf_insert(line_start_at(pick(blen + 1)), o->data + os, oe - os);
		break;
	}
	default: /* truncate (rarely) or change a separator */
		if (!pick(8)) {
			blen = at;
		} else {
			static const char *const SEP[] = { " ", "\t", "\n", "\r\n", "", "  ", " \r" };
			for (size_t i = at; i < blen; i++)
				if (is_space(buf[i])) {
					const char *w = SEP[pick(7)];
					buf_replace(i, 1, w, strlen(w));
					break;
				}
		}
	}
}

static void mutate(const struct input *parent)
{
	blen = parent->len;
	memcpy(buf, parent->data, blen);
	for (int r = 1 + (int)pick(pick(4) ? 4 : 12); r > 0; r--)
		mutate_once();
}

static void corpus_add(const uint8_t *d, size_t n, const char *name)
{
	if (corpus_n == corpus_cap) {
		corpus_cap = corpus_cap ? 2 * corpus_cap : 256;
		corpus = realloc(corpus, corpus_cap * sizeof(*corpus));
		if (!corpus)
			die("out of memory");
	}
	struct input *in = &corpus[corpus_n++];
	in->data = xmalloc(n);
	memcpy(in->data, d, n);
	in->len = n;
	snprintf(in->name, sizeof(in->name), "%s", name ? name : "");
}

/* Runs an input of the loading or fuzzing phase; true if it had a new feature. */
static bool execute(const uint8_t *d, size_t n)
{
	enum outcome o = run_input(d, n);
	execs++;
	bool fresh = cov_collect();
	if (fresh)
		learn_cmps();
	if (o == BROKEN)
		record_crash(d, n, violation);
	return fresh;
}

/* ---- main ---- */

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
	fprintf(stderr, "usage: faultline-plan-fuzz [--seconds S] [--seed N] [--seeds DIR] [--corpus DIR] "
			"[--regressions DIR] [--crashes DIR] [--max-len N] [--timeout S] [--json]\n"
			"       faultline-plan-fuzz --run FILE...\n");
	exit(2);
}

static const char MINIMAL_SEED[] = "faultline-plan 1\nsocket /s\nfile 0 /f\nproc 1 0 1 1\nvma 1000 3000\n"
				   "run 2000 1 1 0 0\n";

int main(int argc, char **argv)
{
	double seconds = 60;
	const char *seeds_dir = NULL, *corpus_dir = NULL, *regressions_dir = NULL;
	bool seeded = false;
	int run_from = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--json")) {
			json = true;
			continue;
		}
		if (!strcmp(a, "--run")) {
			run_from = i + 1;
			break;
		}
		if (!v)
			usage();
		i++;
		char *end;
		if (!strcmp(a, "--seconds")) {
			seconds = strtod(v, &end);
			if (*end || !(seconds >= 0))
				usage();
		} else if (!strcmp(a, "--seed")) {
			seed = strtoull(v, &end, 10);
			seeded = true;
			if (*end)
				usage();
		} else if (!strcmp(a, "--max-len")) {
			max_len = strtoul(v, &end, 10);
			if (*end || max_len < 64 || max_len > (1u << 20))
				usage();
		} else if (!strcmp(a, "--timeout")) {
			timeout_s = (unsigned)strtoul(v, &end, 10);
			if (*end || !timeout_s)
				usage();
		} else if (!strcmp(a, "--seeds"))
			seeds_dir = v;
		else if (!strcmp(a, "--corpus"))
			corpus_dir = v;
		else if (!strcmp(a, "--regressions"))
			regressions_dir = v;
		else if (!strcmp(a, "--crashes"))
			crash_dir = v;
		else
			usage();
	}

	cov_init();
	__sanitizer_set_death_callback(on_death);

	if (run_from) {
		int bad = 0;
		if (run_from >= argc)
			usage();
		for (int i = run_from; i < argc; i++) {
			FILE *f = fopen(argv[i], "rb");
			uint8_t *d = NULL;
			size_t n = 0, cap = 0, got;
			if (!f)
				die("%s: %s", argv[i], strerror(errno));
			do {
				if (n == cap) {
					cap = cap ? 2 * cap : 4096;
					d = realloc(d, cap);
					if (!d)
						die("out of memory");
				}
				got = fread(d + n, 1, cap - n, f);
				n += got;
			} while (got);
			fclose(f);
			cur_name = argv[i];
			phase = 1;
			switch (run_input(d, n)) {
			case ACCEPTED:
				printf("%s: accepted\n", argv[i]);
				break;
			case REJECTED:
				printf("%s: rejected: line %d: %s\n", argv[i], fail_line, fail_msg);
				break;
			default:
				printf("%s: BROKEN: %s\n", argv[i], violation);
				bad = 1;
			}
			free(d);
		}
		return bad;
	}

	if (!seeded)
		seed = (uint64_t)time(NULL) % 1000000;
	rs = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
	if (!rs)
		rs = 1;
	buf = xmalloc(max_len);

	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = { .it_interval = { 1, 0 }, .it_value = { 1, 0 } };
	setitimer(ITIMER_REAL, &it, NULL);

	started = now();
	/* regressions first: each must be rejected, or accepted as a valid plan */
	struct input *regs = NULL;
	if (regressions_dir) {
		nregressions = read_dir(regressions_dir, &regs, true);
		phase = 1;
		for (size_t i = 0; i < nregressions; i++) {
			cur_name = regs[i].name;
			if (run_input(regs[i].data, regs[i].len) == BROKEN)
				record_replay_failure(regs[i].name, violation);
			execs++;
			cov_collect();
		}
	}
	phase = 0;
	struct input *loaded[2] = { NULL, NULL };
	size_t nloaded[2] = { 0, 0 };
	if (seeds_dir)
		nloaded[0] = read_dir(seeds_dir, &loaded[0], false);
	if (corpus_dir)
		nloaded[1] = read_dir(corpus_dir, &loaded[1], true);
	if (!nloaded[0] && execute((const uint8_t *)MINIMAL_SEED, strlen(MINIMAL_SEED)))
		corpus_add((const uint8_t *)MINIMAL_SEED, strlen(MINIMAL_SEED), NULL);
	for (int k = 0; k < 2; k++)
		for (size_t i = 0; i < nloaded[k]; i++)
			if (execute(loaded[k][i].data, loaded[k][i].len) || !corpus_n)
				corpus_add(loaded[k][i].data, loaded[k][i].len, NULL);
	for (size_t i = 0; i < nregressions; i++)
		corpus_add(regs[i].data, regs[i].len, NULL);
	if (!corpus_n)
		corpus_add((const uint8_t *)MINIMAL_SEED, strlen(MINIMAL_SEED), NULL);

	phase = 2;
	double deadline = now() + seconds;
	while (now() < deadline) {
		for (int i = 0; i < 64; i++) {
			mutate(&corpus[pick(corpus_n)]);
			if (execute(buf, blen))
				corpus_add(buf, blen, NULL);
		}
	}
	finished = now();
	it = (struct itimerval){ 0 };
	setitimer(ITIMER_REAL, &it, NULL);

	if (corpus_dir) {
		mkdirs(corpus_dir);
		for (size_t i = 0; i < corpus_n; i++) {
			char name[17];
			id_of(corpus[i].data, corpus[i].len, name, 16);
			if (!write_file(corpus_dir, name, corpus[i].data, corpus[i].len))
				die("cannot write %s/%s: %s", corpus_dir, name, strerror(errno));
		}
	}
	print_summary();
	return ncrashes || nreplay_failures ? 1 : 0;
}
