/*
 * Running a restored process's steps (the language is in script.c): each one makes the memory
 * change it names, counts itself in c->ev, and updates the expected-content table (expect.c) the
 * way the kernel changed the mappings.  A step that cannot run exits the process with EXIT_USAGE:
 * the script asked for something the layout does not allow.  Runs in the restored process; owns no
 * global state (forked processes register in shm->forked).
 */
#include "target.h"
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void step_fail(struct pctx *c, size_t i, const struct step *st, const char *fmt, ...)
	__attribute__((format(printf, 4, 5), noreturn));
static void step_fail(struct pctx *c, size_t i, const struct step *st, const char *fmt, ...)
{
	char sb[128], msg[256];
	va_list ap;
	fmt_step(sb, sizeof(sb), st);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	die(EXIT_USAGE, "pid %d (host %d): step %zu '%s': %s", c->p->pid, (int)getpid(), i + 1, sb, msg);
}

/* Is [a,b) inside the planned VMAs, the spare area or pages we map now (ours to map over)? */
static bool ours(struct pctx *c, uint64_t a, uint64_t b)
{
	while (a < b) {
		struct vma *v;
		size_t k;
		if (a >= c->spare && a < c->spare + c->spare_len) {
			a = c->spare + c->spare_len;
			continue;
		}
		v = find_vma(c->p, a);
		if (v) {
			a = v->end;
			continue;
		}
		k = tbl_lb(&c->t, a);
		if (k < c->t.n && c->t.e[k].addr == a) {
			a += PAGE;
			continue;
		}
		return false;
	}
	return true;
}

/* Keeps a hole we made in our own ranges from being handed to anyone else. */
static void rereserve(struct pctx *c, uint64_t a, uint64_t b)
{
	uint64_t x = a;
	while (x < b) {
		uint64_t y = x + PAGE;
		if (!ours(c, x, y) || !tbl_empty(&c->t, x, y)) {
			x = y;
			continue;
		}
		while (y < b && ours(c, y, y + PAGE) && tbl_empty(&c->t, y, y + PAGE))
			y += PAGE;
		if (mmap((void *)(uintptr_t)x, y - x, PROT_NONE, RESERVE_FLAGS | MAP_FIXED_NOREPLACE, -1, 0) == MAP_FAILED &&
		    errno != EEXIST) {
			/* Not fatal: the hole just stays open. */
		}
		x = y;
	}
}

/* mremap that must land exactly at `to`. */
static void do_move(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b, uint64_t to)
{
	void *r;
	if (!tbl_one_seg(&c->t, a, b))
		step_fail(c, i, st, "source 0x%" PRIx64 "-0x%" PRIx64 " is not mapped as one VMA", a, b);
	if (!ours(c, to, to + (b - a)))
		step_fail(c, i, st, "target 0x%" PRIx64 " is outside the VMAs and the spare area", to);
	if (to < b && a < to + (b - a))
		step_fail(c, i, st, "source and target overlap");
	r = mremap((void *)(uintptr_t)a, b - a, b - a, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(uintptr_t)to);
	if (r == MAP_FAILED)
		step_fail(c, i, st, "mremap 0x%" PRIx64 "-0x%" PRIx64 " to 0x%" PRIx64 ": %s", a, b, to, strerror(errno));
	c->ev[S_MREMAP]++;
	tbl_move(&c->t, a, b, to);
	rereserve(c, a, b);
}

static void do_swap(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	uint64_t x = paddr(c, st->c), y = paddr(c, st->d), tmp;
	if (x < b && a < y)
		step_fail(c, i, st, "the two ranges overlap");
	if (!tbl_one_seg(&c->t, a, b) || !tbl_one_seg(&c->t, x, y))
		step_fail(c, i, st, "a range is not mapped as one VMA");
	tmp = tbl_gap(&c->t, c->spare, c->spare + c->spare_len, b - a, c->spare);
	if (!tmp)
		step_fail(c, i, st, "no room in the spare area for the temporary copy");
	do_move(c, i, st, a, b, tmp);
	do_move(c, i, st, x, y, a);
	do_move(c, i, st, tmp, tmp + (b - a), x);
	c->ev[S_SWAP]++;
}

static void do_grow(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	uint64_t e = b + st->n * PAGE;
	if (!tbl_one_seg(&c->t, a, b))
		step_fail(c, i, st, "range is not mapped as one VMA");
	if (!tbl_empty(&c->t, b, e))
		step_fail(c, i, st, "the %" PRIu64 " pages after it are mapped", st->n);
	/* Drop our PROT_NONE reservations there; anything else there makes mremap fail. */
	for (uint64_t x = b; x < e; x += PAGE)
		if (ours(c, x, x + PAGE))
			munmap((void *)(uintptr_t)x, PAGE);
	if (mremap((void *)(uintptr_t)a, b - a, e - a, 0) == MAP_FAILED) {
		int err = errno;
		rereserve(c, b, e);
		step_fail(c, i, st, "mremap in place: %s (the range must end at its VMA's end)", strerror(err));
	}
	c->ev[S_MREMAP]++;
	c->ev[S_GROW]++;
	tbl_grow(&c->t, b, st->n);
}

static void do_shrink(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	uint64_t e = b - st->n * PAGE;
	if (!tbl_one_seg(&c->t, a, b))
		step_fail(c, i, st, "range is not mapped as one VMA");
	if (mremap((void *)(uintptr_t)a, b - a, e - a, 0) == MAP_FAILED)
		step_fail(c, i, st, "mremap: %s", strerror(errno));
	c->ev[S_MREMAP]++;
	c->ev[S_SHRINK]++;
	tbl_remove(&c->t, e, b);
	rereserve(c, e, b);
}

static void do_dontneed(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	if (!tbl_full(&c->t, a, b))
		step_fail(c, i, st, "range is not mapped");
	if (madvise((void *)(uintptr_t)a, b - a, MADV_DONTNEED) < 0)
		step_fail(c, i, st, "madvise: %s", strerror(errno));
	c->ev[S_DONTNEED]++;
	tbl_zap(&c->t, a, b);
}

static void do_unmap(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	if (!ours(c, a, b))
		step_fail(c, i, st, "range is outside the VMAs and the spare area");
	if (munmap((void *)(uintptr_t)a, b - a) < 0)
		step_fail(c, i, st, "munmap: %s", strerror(errno));
	c->ev[S_UNMAP]++;
	tbl_remove(&c->t, a, b);
	rereserve(c, a, b);
}

static void do_touch(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	if (!tbl_full(&c->t, a, b))
		step_fail(c, i, st, "range is not mapped");
	tbl_span(&c->t, a, b, &lo, &hi);
	for (size_t k = lo; k < hi; k++) {
		struct ent *e = &c->t.e[k];
		volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)e->addr;
		uint64_t t0 = now_ns(), dt;
		(void)*p;
		dt = now_ns() - t0;
		touch_page(c, e, dt);
	}
	c->ev[S_TOUCH]++;
}

/* ------------------------------------------------------------------------------------------------
 * threads-same: every thread reads the same pages, starting together, so that several threads
 * fault on one missing page at once.
 */

struct same_worker {
	struct pctx *c;
	size_t lo, n; /* table entries lo..lo+n-1 */
	pthread_barrier_t *bar;
	uint64_t *lat;
	uint8_t *bad;
	pthread_t th;
};

static void *same_main(void *arg)
{
	struct same_worker *w = arg;
	struct table *t = &w->c->t;
	pthread_barrier_wait(w->bar);
	for (size_t i = 0; i < w->n; i++) {
		struct ent *e = &t->e[w->lo + i];
		const volatile uint8_t *a = (const volatile uint8_t *)(uintptr_t)e->addr;
		uint64_t t0 = now_ns();
		(void)*a;
		w->lat[i] = now_ns() - t0;
		w->bad[i] = memcmp((const void *)(uintptr_t)e->addr, e->want ? e->want : zero_page, PAGE) != 0;
	}
	return NULL;
}

static void do_threads_same(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	int nt = opt.threads;
	size_t lo, hi, n;
	struct same_worker *w;
	pthread_barrier_t bar;

	if (!tbl_full(&c->t, a, b))
		step_fail(c, i, st, "range is not mapped");
	w = calloc(nt, sizeof(*w));
	tbl_span(&c->t, a, b, &lo, &hi);
	n = hi - lo;
	if (!w)
		die(EXIT_NOMEM, "pid %d: out of memory", c->p->pid);
	pthread_barrier_init(&bar, NULL, nt);
	for (int k = 0; k < nt; k++) {
		w[k] = (struct same_worker){ .c = c, .n = n, .lo = lo, .bar = &bar };
		w[k].lat = calloc(n ? n : 1, sizeof(uint64_t));
		w[k].bad = calloc(n ? n : 1, 1);
		if (!w[k].lat || !w[k].bad)
			die(EXIT_NOMEM, "pid %d: out of memory", c->p->pid);
		if (pthread_create(&w[k].th, NULL, same_main, &w[k]))
			step_fail(c, i, st, "pthread_create failed");
	}
	for (int k = 0; k < nt; k++)
		pthread_join(w[k].th, NULL);
	pthread_barrier_destroy(&bar);
	for (size_t j = 0; j < n; j++) {
		struct ent *e = &c->t.e[lo + j];
		uint64_t mx = 0;
		int bad = -1;
		for (int k = 0; k < nt; k++) {
			if (w[k].lat[j] > mx)
				mx = w[k].lat[j];
			if (w[k].bad[j] && bad < 0)
				bad = k;
		}
		/* One latency per page: the slowest thread waited for the whole fault. */
		touch_page(c, e, mx);
		if (bad >= 0 && e->state != 2) {
			e->state = 2;
			if (atomic_fetch_add(&c->details, 1) < MAX_MISMATCH_DETAILS)
				fprintf(stderr, "pid %d page 0x%" PRIx64 ": thread %d read wrong content (threads-same)\n", c->p->pid,
					e->addr, bad);
		}
	}
	for (int k = 0; k < nt; k++) {
		free(w[k].lat);
		free(w[k].bad);
	}
	free(w);
	c->ev[S_TSAME]++;
}

/* ------------------------------------------------------------------------------------------------
 * Processes
 */

static void do_fork(struct pctx *c, size_t i, const struct step *st)
{
	uint32_t slot;
	pid_t pid;
	if (c->depth > 0)
		return; /* forked children do not fork again (depth 1) */
	slot = __atomic_fetch_add(&shm->forked.n, 1, __ATOMIC_ACQ_REL);
	if (slot >= MAX_FORKED)
		step_fail(c, i, st, "more than %d forked processes", MAX_FORKED);
	shm->forked.s[slot].plan_idx = c->idx;
	shm->forked.s[slot].parent_host = getpid();
	pid = fork();
	if (pid < 0) {
		__atomic_store_n(&shm->forked.s[slot].host, -1, __ATOMIC_RELEASE);
		step_fail(c, i, st, "fork: %s", strerror(errno));
	}
	/* Both sides store the pid: the main process must know it whichever runs first. */
	if (pid == 0) {
		__atomic_store_n(&shm->forked.s[slot].host, (int32_t)getpid(), __ATOMIC_RELEASE);
		c->depth = 1;
		c->fork_slot = slot;
		/* The child reports on its own: its own touches, its own verification of all it inherited. */
		c->nlog = 0;
		c->touched = 0;
		atomic_store(&c->details, 0);
		memset(c->ev, 0, sizeof(c->ev));
		c->t.ret_verified = c->t.ret_mismatches = c->t.ret_holes = 0;
		for (size_t k = 0; k < c->t.n; k++)
			c->t.e[k].state = 0;
		return;
	}
	__atomic_store_n(&shm->forked.s[slot].host, (int32_t)pid, __ATOMIC_RELEASE);
	c->ev[S_FORK]++;
	c->nforks++;
}

/* The child stays a zombie while its parent lives; then the main process (subreaper) reaps it. */
static void do_zombie(struct pctx *c, size_t i, const struct step *st)
{
	pid_t z = fork();
	if (z < 0)
		step_fail(c, i, st, "fork: %s", strerror(errno));
	if (z == 0)
		_exit(0);
	c->ev[S_ZOMBIE]++;
}

void run_steps(struct pctx *c, const struct script *sc)
{
	for (size_t i = 0; i < sc->n; i++) {
		const struct step *st = &sc->s[i];
		uint64_t a = paddr(c, st->a), b = paddr(c, st->b);
		switch (st->k) {
		case S_TOUCH:
			do_touch(c, i, st, a, b);
			break;
		case S_TSAME:
			do_threads_same(c, i, st, a, b);
			break;
		case S_SLEEP:
			sleep_ms((long)st->n);
			break;
		case S_FORK:
			do_fork(c, i, st);
			break;
		case S_MREMAP:
			do_move(c, i, st, a, b, paddr(c, st->c));
			break;
		case S_SWAP:
			do_swap(c, i, st, a, b);
			break;
		case S_GROW:
			do_grow(c, i, st, a, b);
			break;
		case S_SHRINK:
			do_shrink(c, i, st, a, b);
			break;
		case S_DONTNEED:
			do_dontneed(c, i, st, a, b);
			break;
		case S_UNMAP:
			do_unmap(c, i, st, a, b);
			break;
		case S_EXIT:
			c->ev[S_EXIT]++;
			c->exited_early = true;
			finish(c);
		case S_ZOMBIE:
			do_zombie(c, i, st);
			break;
		case S_NKINDS:
			break;
		}
	}
}
