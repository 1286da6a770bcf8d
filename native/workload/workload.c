// faultline-workload: a process tree for real-CRIU tests and benchmarks. It fills its memory with a
// pattern it can recompute (pattern.h), is dumped by `criu dump`, restored lazily, and on SIGUSR1
// checks every word of what the restore gave it.
//
//   faultline-workload --out DIR [--procs N] [--mib M] [--threads T] [--action A] [--seed S]
//
//   --out DIR      results directory; must exist. The root writes DIR/ready ({"procs":N}) once the
//                  whole tree is set up, or DIR/failed (one line) if it could not be.
//   --procs N      processes in the tree (default 4): process i > 0 is a child of (i-1)/2, so a
//                  tree of 4 is root -> {1, 2}, 1 -> {3}.
//   --mib M        private memory per process in MiB (default 32, at least 1): dense 1/2,
//                  sparse 1/4, zero 1/16, read-only 1/16, inherited 1/8 (separate VMAs).
//   --threads T    worker threads per process (default 2), created before the dump; they wait on
//                  a condition variable and do the verification in parallel after restore
//                  (0: the main thread verifies alone).
//   --action A     what each process does on SIGUSR1 (default verify):
//                    verify    write probe words into still-lazy pages, then verify every word;
//                    events    fork (the child, index "<i>.f", verifies what it inherited), mremap
//                              move, grow and shrink, swap two regions, MADV_DONTNEED and munmap
//                              ranges, all while pages are still lazy; then verify what remains;
//                    touch:P   verify P % of its pages in random order (a server after restore).
//   --seed S       pattern seed (default 1).
//
// Stdio should be /dev/null: nothing that changes after the dump may be open at dump time. Each
// process writes DIR/result-<index>.json (tmp + rename) after its action and then idles until
// killed:
//   {"index":"1","pid":2,"action":"verify","words":N,"pages":N,"mismatches":0,
//    "first_mismatch":null|"dense+0x1008","events":["..."],"error":null|"...",
//    "t_signal_ns":..,"t_first_verified_ns":..,"t_done_ns":..,"ok":true}
// times are CLOCK_REALTIME; "words"/"pages" count what was verified (holes and zeros included).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "pattern.h"

const char *const wl_region_names[WL_NREGIONS] = { "dense", "sparse", "zero", "ro", "inherit" };

struct region {
	uint64_t *base; /* where it is mapped now (events move regions) */
	size_t pages;   /* length now */
};

/* A run of pages to verify: a region's pages [first_page, first_page + pages) at addr. */
struct seg {
	unsigned region;
	uint64_t first_page;
	uint64_t pages;
	uint64_t *addr;
	int zero; /* must read 0 whatever the pattern says (DONTNEED, a grown tail) */
};

#define MAX_SEGS 16
#define MAX_EVENTS 16

static struct {
	const char *out;
	unsigned procs;
	unsigned mib;
	unsigned threads;
	const char *action;
	unsigned touch_pct;
	uint64_t seed;
} opt = { .procs = 4, .mib = 32, .threads = 2, .action = "verify", .seed = 1 };

static unsigned my_index;
static char index_str[32];
static uint8_t *on_path;
static struct region regions[WL_NREGIONS];
static struct wl_expect expect;

static char events[MAX_EVENTS][160];
static unsigned nevents;
static char error_msg[256];
static pid_t main_tid; /* the thread that waits for SIGUSR1 */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- startup failures: one line to stderr and to DIR/failed, for the driver to show ---- */

static void write_file_atomic(const char *name, const char *text)
{
	char tmp[PATH_MAX], dst[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s/.%s.%d.tmp", opt.out, name, (int)getpid());
	snprintf(dst, sizeof dst, "%s/%s", opt.out, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	size_t len = strlen(text), done = 0;
	while (done < len) {
		ssize_t n = write(fd, text + done, len - done);
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	rename(tmp, dst);
}

static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...)
{
	char msg[512], line[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(line, sizeof line, "faultline-workload[%s]: %s\n", index_str[0] ? index_str : "?", msg);
	fputs(line, stderr);
	if (opt.out)
		write_file_atomic("failed", line);
	_exit(2);
}

/* ---- the pattern in memory ---- */

static uint64_t *map_region(size_t pages, const char *what)
{
	/* One guard page after each region keeps every region its own VMA (equal neighbours merge). */
	size_t len = (pages + 1) * WL_PAGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap of %zu pages for %s: %s", pages, what, strerror(errno));
	if (mprotect(p + pages * WL_PAGE, WL_PAGE, PROT_NONE))
		die("mprotect guard of %s: %s", what, strerror(errno));
	return (uint64_t *)p;
}

static void fill_page(uint64_t *page, unsigned region, uint64_t rp, unsigned writer, unsigned gen)
{
	uint64_t w0 = rp * WL_WORDS_PER_PAGE;
	for (uint64_t i = 0; i < WL_WORDS_PER_PAGE; i++)
		page[i] = wl_pattern(opt.seed, writer, region, w0 + i, gen);
}

static void fill_own_regions(void)
{
	size_t total = (size_t)opt.mib * 256;
	size_t npages[WL_NREGIONS] = { total / 2, total / 4, total / 16, total / 16, 0 };
	for (unsigned r = WL_DENSE; r <= WL_RO; r++) {
		regions[r].pages = npages[r];
		regions[r].base = map_region(npages[r], wl_region_names[r]);
	}
	for (uint64_t p = 0; p < npages[WL_DENSE]; p++)
		fill_page(regions[WL_DENSE].base + p * WL_WORDS_PER_PAGE, WL_DENSE, p, my_index, WL_GEN_FIRST);
	/* The second generation, so the image must hold the last write, not the first. */
	for (uint64_t p = 3; p < npages[WL_DENSE]; p += 8)
		fill_page(regions[WL_DENSE].base + p * WL_WORDS_PER_PAGE, WL_DENSE, p, my_index, WL_GEN_REWRITE);
	for (uint64_t p = 0; p < npages[WL_SPARSE]; p += 4)
		fill_page(regions[WL_SPARSE].base + p * WL_WORDS_PER_PAGE, WL_SPARSE, p, my_index, WL_GEN_FIRST);
	memset(regions[WL_ZERO].base, 0, npages[WL_ZERO] * WL_PAGE);
	for (uint64_t p = 0; p < npages[WL_RO]; p++)
		fill_page(regions[WL_RO].base + p * WL_WORDS_PER_PAGE, WL_RO, p, my_index, WL_GEN_FIRST);
	if (mprotect(regions[WL_RO].base, npages[WL_RO] * WL_PAGE, PROT_READ))
		die("mprotect PROT_READ of ro: %s", strerror(errno));
}

/* ---- verification, shared by a pool of threads ---- */

struct stats {
	uint64_t words, pages, mismatches;
	/* the earliest mismatch in segment order, as "region+byte offset" */
	unsigned first_seg;
	uint64_t first_word; /* word offset within its region */
	int have_first;
};

static struct {
	const struct seg *segs;
	unsigned nsegs;
	uint64_t total_pages;
	const uint64_t *page_list; /* if set: verify these global page numbers (touch), else all */
	atomic_uint_fast64_t next;
	pthread_mutex_t mu;
	struct stats sum;
} job = { .mu = PTHREAD_MUTEX_INITIALIZER };

static _Atomic uint64_t t_first_verified;

static void verify_page(const struct seg *s, unsigned seg_no, uint64_t k, struct stats *st)
{
	uint64_t rp = s->first_page + k;
	const volatile uint64_t *w = s->addr + k * WL_WORDS_PER_PAGE;
	int hole;
	unsigned writer, gen;
	wl_page_expect(&expect, s->region, rp, &hole, &writer, &gen);
	hole |= s->zero;
	int probe = !s->zero && wl_probe_page(&expect, s->region, rp);
	uint64_t w0 = rp * WL_WORDS_PER_PAGE;
	for (uint64_t i = 0; i < WL_WORDS_PER_PAGE; i++) {
		uint64_t want;
		if (probe && i == WL_PROBE_WORD)
			want = wl_pattern(opt.seed, expect.proc, s->region, w0 + i, WL_GEN_PROBE);
		else
			want = hole ? 0 : wl_pattern(opt.seed, writer, s->region, w0 + i, gen);
		if (w[i] != want) {
			st->mismatches++;
			if (!st->have_first || seg_no < st->first_seg || (seg_no == st->first_seg && w0 + i < st->first_word)) {
				st->have_first = 1;
				st->first_seg = seg_no;
				st->first_word = w0 + i;
			}
		}
	}
	st->words += WL_WORDS_PER_PAGE;
	st->pages++;
	if (st->pages == 1) {
		uint64_t zero = 0;
		atomic_compare_exchange_strong(&t_first_verified, &zero, now_ns());
	}
}

static void verify_global_page(uint64_t g, struct stats *st)
{
	for (unsigned i = 0; i < job.nsegs; i++) {
		if (g < job.segs[i].pages) {
			verify_page(&job.segs[i], i, g, st);
			return;
		}
		g -= job.segs[i].pages;
	}
}

static void merge_stats(const struct stats *st)
{
	pthread_mutex_lock(&job.mu);
	job.sum.words += st->words;
	job.sum.pages += st->pages;
	job.sum.mismatches += st->mismatches;
	if (st->have_first && (!job.sum.have_first || st->first_seg < job.sum.first_seg ||
			       (st->first_seg == job.sum.first_seg && st->first_word < job.sum.first_word))) {
		job.sum.have_first = 1;
		job.sum.first_seg = st->first_seg;
		job.sum.first_word = st->first_word;
	}
	pthread_mutex_unlock(&job.mu);
}

#define CHUNK_PAGES 64

static void run_job(void)
{
	struct stats st = { 0 };
	for (;;) {
		uint64_t c = atomic_fetch_add(&job.next, CHUNK_PAGES);
		if (c >= job.total_pages)
			break;
		uint64_t end = c + CHUNK_PAGES < job.total_pages ? c + CHUNK_PAGES : job.total_pages;
		for (uint64_t g = c; g < end; g++)
			verify_global_page(job.page_list ? job.page_list[g] : g, &st);
	}
	merge_stats(&st);
}

/* Worker threads exist from before the dump; they sleep here until the action hands them a job. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	unsigned generation, finished;
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };
static unsigned pool_started;

static void *worker(void *arg)
{
	(void)arg;
	unsigned seen = 0;
	pthread_mutex_lock(&pool.mu);
	pool_started++;
	pthread_cond_broadcast(&pool.done);
	for (;;) {
		while (pool.generation == seen)
			pthread_cond_wait(&pool.go, &pool.mu);
		seen = pool.generation;
		pthread_mutex_unlock(&pool.mu);
		run_job();
		pthread_mutex_lock(&pool.mu);
		pool.finished++;
		pthread_cond_broadcast(&pool.done);
	}
	return NULL;
}

static void start_pool(void)
{
	for (unsigned i = 0; i < opt.threads; i++) {
		pthread_t t;
		int e = pthread_create(&t, NULL, worker, NULL);
		if (e)
			die("pthread_create: %s", strerror(e));
	}
	pthread_mutex_lock(&pool.mu);
	while (pool_started < opt.threads)
		pthread_cond_wait(&pool.done, &pool.mu);
	pthread_mutex_unlock(&pool.mu);
}

/* Verifies segs (or only the listed global pages) with the pool, or alone where there is none. */
static void verify(const struct seg *segs, unsigned nsegs, const uint64_t *page_list, uint64_t list_len, int use_pool)
{
	job.segs = segs;
	job.nsegs = nsegs;
	job.page_list = page_list;
	job.total_pages = 0;
	if (page_list)
		job.total_pages = list_len;
	else
		for (unsigned i = 0; i < nsegs; i++)
			job.total_pages += segs[i].pages;
	atomic_store(&job.next, 0);
	if (!use_pool || opt.threads == 0) {
		run_job();
		return;
	}
	pthread_mutex_lock(&pool.mu);
	pool.finished = 0;
	pool.generation++;
	pthread_cond_broadcast(&pool.go);
	while (pool.finished < opt.threads)
		pthread_cond_wait(&pool.done, &pool.mu);
	pthread_mutex_unlock(&pool.mu);
}

/* ---- the actions ---- */

static void add_event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void add_event(const char *fmt, ...)
{
	if (nevents == MAX_EVENTS)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(events[nevents++], sizeof events[0], fmt, ap);
	va_end(ap);
}

static void fail_event(const char *what)
{
	if (!error_msg[0])
		snprintf(error_msg, sizeof error_msg, "%s: %s", what, strerror(errno));
}

static unsigned whole_regions(struct seg *segs)
{
	unsigned n = 0;
	for (unsigned r = 0; r < WL_NREGIONS; r++)
		segs[n++] = (struct seg){ .region = r, .first_page = 0, .pages = regions[r].pages, .addr = regions[r].base };
	return n;
}

static void write_probes(void)
{
	const unsigned writable[] = { WL_DENSE, WL_SPARSE, WL_ZERO };
	expect.probes = 1;
	unsigned n = 0;
	for (unsigned i = 0; i < 3; i++) {
		unsigned r = writable[i];
		for (uint64_t p = WL_PROBE_REM; p < regions[r].pages; p += WL_PROBE_MOD, n++) {
			uint64_t w = p * WL_WORDS_PER_PAGE + WL_PROBE_WORD;
			regions[r].base[w] = wl_pattern(opt.seed, my_index, r, w, WL_GEN_PROBE);
		}
	}
	add_event("probes:%u", n);
}

static void write_result(const char *action, const struct stats *st, uint64_t t_signal, uint64_t t_done)
{
	char first[96] = "null";
	if (st->have_first)
		snprintf(first, sizeof first, "\"%s+0x%llx\"", wl_region_names[job.segs[st->first_seg].region],
			 (unsigned long long)(st->first_word * sizeof(uint64_t)));
	char ev[MAX_EVENTS * 170 + 8] = "";
	size_t off = 0;
	for (unsigned i = 0; i < nevents; i++)
		off += (size_t)snprintf(ev + off, sizeof ev - off, "%s\"%s\"", i ? "," : "", events[i]);
	char err[300] = "null";
	if (error_msg[0])
		snprintf(err, sizeof err, "\"%s\"", error_msg);
	char body[4096];
	snprintf(body, sizeof body,
		 "{\"index\":\"%s\",\"pid\":%d,\"action\":\"%s\",\"words\":%llu,\"pages\":%llu,\"mismatches\":%llu,"
		 "\"first_mismatch\":%s,\"events\":[%s],\"error\":%s,\"t_signal_ns\":%llu,\"t_first_verified_ns\":%llu,"
		 "\"t_done_ns\":%llu,\"ok\":%s}\n",
		 index_str, (int)getpid(), action, (unsigned long long)st->words, (unsigned long long)st->pages,
		 (unsigned long long)st->mismatches, first, ev, err, (unsigned long long)t_signal,
		 (unsigned long long)atomic_load(&t_first_verified), (unsigned long long)t_done,
		 st->mismatches == 0 && !error_msg[0] && st->pages > 0 ? "true" : "false");
	char name[64];
	snprintf(name, sizeof name, "result-%s.json", index_str);
	write_file_atomic(name, body);
}

static void idle_forever(void)
{
	sigset_t none;
	sigemptyset(&none);
	for (;;)
		sigsuspend(&none);
}

static void action_verify(uint64_t t_signal)
{
	write_probes();
	struct seg segs[MAX_SEGS];
	unsigned n = whole_regions(segs);
	verify(segs, n, NULL, 0, 1);
	write_result("verify", &job.sum, t_signal, now_ns());
}

static void action_touch(uint64_t t_signal)
{
	struct seg segs[MAX_SEGS];
	unsigned n = whole_regions(segs);
	uint64_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += segs[i].pages;
	uint64_t *order = malloc(total * sizeof *order);
	if (!order) {
		fail_event("malloc");
		write_result(opt.action, &job.sum, t_signal, now_ns());
		return;
	}
	for (uint64_t i = 0; i < total; i++)
		order[i] = i;
	uint64_t x = wl_mix64(opt.seed ^ (my_index + 1));
	for (uint64_t i = total - 1; i > 0; i--) {
		x = wl_mix64(x + 0x9e3779b97f4a7c15ULL);
		uint64_t j = x % (i + 1), t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	uint64_t count = (total * opt.touch_pct + 99) / 100;
	/* One thread, in random order: requests arriving at a restored server. */
	verify(segs, n, order, count, 0);
	write_result(opt.action, &job.sum, t_signal, now_ns());
	free(order);
}

/* Moves a region to a fresh address range (MREMAP_FIXED over a reservation). */
static uint64_t *move_to_new_address(uint64_t *from, size_t len, const char *what)
{
	void *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (to == MAP_FAILED) {
		fail_event(what);
		return NULL;
	}
	void *r = mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	if (r == MAP_FAILED) {
		fail_event(what);
		munmap(to, len);
		return NULL;
	}
	return r;
}

static void action_events(uint64_t t_signal)
{
	struct seg segs[MAX_SEGS];
	unsigned n = 0;

	/* fork first, while everything is still lazy: the child gets its own uffd (UFFD_EVENT_FORK) */
	pid_t child = fork();
	if (child == 0) {
		main_tid = (pid_t)syscall(SYS_gettid);
		snprintf(index_str + strlen(index_str), sizeof index_str - strlen(index_str), ".f");
		nevents = 0;
		add_event("forked-child");
		atomic_store(&t_first_verified, 0);
		n = whole_regions(segs);
		verify(segs, n, NULL, 0, 0); /* a forked child has only this thread */
		write_result("events", &job.sum, t_signal, now_ns());
		idle_forever();
	}
	if (child < 0)
		fail_event("fork");
	else
		add_event("fork:%d", (int)child);

	/* mremap move: sparse to a new address */
	struct region *sp = &regions[WL_SPARSE];
	uint64_t *moved = move_to_new_address(sp->base, sp->pages * WL_PAGE, "mremap move sparse");
	if (moved) {
		add_event("move:sparse %p>%p", (void *)sp->base, (void *)moved);
		sp->base = moved;
	}

	/* mremap grow: dense gains a tail (in place or moved) that must read 0 */
	struct region *de = &regions[WL_DENSE];
	size_t grow = de->pages / 16 ? de->pages / 16 : 1;
	void *grown = mremap(de->base, de->pages * WL_PAGE, (de->pages + grow) * WL_PAGE, MREMAP_MAYMOVE);
	size_t tail = 0;
	if (grown == MAP_FAILED)
		fail_event("mremap grow dense");
	else {
		add_event("grow:dense +%zu pages %p>%p", grow, (void *)de->base, grown);
		de->base = grown;
		tail = grow;
	}

	/* mremap shrink: inherit loses its last quarter */
	struct region *in = &regions[WL_INHERIT];
	size_t keep = in->pages - in->pages / 4;
	if (keep < in->pages) {
		if (mremap(in->base, in->pages * WL_PAGE, keep * WL_PAGE, 0) == MAP_FAILED)
			fail_event("mremap shrink inherit");
		else {
			add_event("shrink:inherit -%zu pages", in->pages - keep);
			in->pages = keep;
		}
	}

	/* swap zero and ro through a temporary address */
	struct region *ze = &regions[WL_ZERO], *ro = &regions[WL_RO];
	size_t len = ze->pages * WL_PAGE;
	uint64_t *tmp = move_to_new_address(ze->base, len, "mremap swap zero>tmp");
	if (tmp) {
		if (mremap(ro->base, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, ze->base) == MAP_FAILED)
			fail_event("mremap swap ro>zero");
		else if (mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, ro->base) == MAP_FAILED)
			fail_event("mremap swap tmp>ro");
		else {
			uint64_t *old_zero = ze->base;
			ze->base = ro->base;
			ro->base = old_zero;
			add_event("swap:zero<->ro");
		}
	}

	/* MADV_DONTNEED: a dense range reads 0 afterwards */
	size_t dn_first = de->pages / 4, dn_pages = de->pages / 16 ? de->pages / 16 : 1;
	if (madvise(de->base + dn_first * WL_WORDS_PER_PAGE, dn_pages * WL_PAGE, MADV_DONTNEED))
		fail_event("madvise DONTNEED dense"), dn_pages = 0;
	else
		add_event("dontneed:dense+0x%zx %zu pages", dn_first * WL_PAGE, dn_pages);

	/* munmap: a range in the middle of (the moved) sparse */
	size_t um_first = sp->pages / 2, um_pages = sp->pages / 8 ? sp->pages / 8 : 1;
	if (um_first + um_pages > sp->pages || munmap(sp->base + um_first * WL_WORDS_PER_PAGE, um_pages * WL_PAGE))
		fail_event("munmap sparse"), um_pages = 0;
	else
		add_event("munmap:sparse+0x%zx %zu pages", um_first * WL_PAGE, um_pages);

	/* what remains, at its new addresses */
	segs[n++] = (struct seg){ WL_DENSE, 0, dn_first, de->base, 0 };
	segs[n++] = (struct seg){ WL_DENSE, dn_first, dn_pages, de->base + dn_first * WL_WORDS_PER_PAGE, 1 };
	segs[n++] = (struct seg){ WL_DENSE, dn_first + dn_pages, de->pages - dn_first - dn_pages,
				  de->base + (dn_first + dn_pages) * WL_WORDS_PER_PAGE, 0 };
	segs[n++] = (struct seg){ WL_DENSE, de->pages, tail, de->base + de->pages * WL_WORDS_PER_PAGE, 1 };
	segs[n++] = (struct seg){ WL_SPARSE, 0, um_first, sp->base, 0 };
	segs[n++] = (struct seg){ WL_SPARSE, um_first + um_pages, sp->pages - um_first - um_pages,
				  sp->base + (um_first + um_pages) * WL_WORDS_PER_PAGE, 0 };
	segs[n++] = (struct seg){ WL_ZERO, 0, ze->pages, ze->base, 0 };
	segs[n++] = (struct seg){ WL_RO, 0, ro->pages, ro->base, 0 };
	segs[n++] = (struct seg){ WL_INHERIT, 0, in->pages, in->base, 0 };
	verify(segs, n, NULL, 0, 1);
	write_result("events", &job.sum, t_signal, now_ns());
}

/* ---- setup and the signal ---- */

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
	/* only the main thread waits for the signal; hand it on if a worker caught it */
	if (syscall(SYS_gettid) != main_tid)
		syscall(SYS_tgkill, getpid(), main_tid, SIGUSR1);
}

static unsigned parse_uint(const char *name, const char *v, unsigned min, unsigned max)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, 10);
	if (errno || end == v || *end || x < min || x > max)
		die("%s: '%s' is not a number in %u..%u", name, v, min, max);
	return (unsigned)x;
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			die("%s: missing value (usage: --out DIR [--procs N] [--mib M] [--threads T] [--action verify|events|touch:PCT] [--seed S])", a);
		const char *v = argv[++i];
		if (!strcmp(a, "--out"))
			opt.out = v;
		else if (!strcmp(a, "--procs"))
			opt.procs = parse_uint(a, v, 1, 4096);
		else if (!strcmp(a, "--mib"))
			opt.mib = parse_uint(a, v, 1, 1 << 20);
		else if (!strcmp(a, "--threads"))
			opt.threads = parse_uint(a, v, 0, 256);
		else if (!strcmp(a, "--seed"))
			opt.seed = strtoull(v, NULL, 0);
		else if (!strcmp(a, "--action")) {
			opt.action = v;
			if (!strncmp(v, "touch:", 6))
				opt.touch_pct = parse_uint("--action touch:PCT", v + 6, 1, 100);
			else if (strcmp(v, "verify") && strcmp(v, "events"))
				die("--action: '%s' is not verify, events or touch:PCT", v);
		} else
			die("unknown option '%s'", a);
	}
	if (!opt.out)
		die("--out DIR is required");
	if (access(opt.out, W_OK))
		die("--out %s: %s", opt.out, strerror(errno));
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	if (getsid(0) != getpid())
		setsid(); /* the driver signals the tree as one process group */

	sigset_t usr1, waitmask;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	/* blocked from here on, so that threads created later block it too */
	pthread_sigmask(SIG_BLOCK, &usr1, &waitmask);
	sigdelset(&waitmask, SIGUSR1);

	/* the root's region, inherited copy-on-write by the whole tree */
	size_t inherit_pages = (size_t)opt.mib * 256 / 8;
	regions[WL_INHERIT].pages = inherit_pages;
	regions[WL_INHERIT].base = map_region(inherit_pages, "inherit");
	for (uint64_t p = 0; p < inherit_pages; p++)
		fill_page(regions[WL_INHERIT].base + p * WL_WORDS_PER_PAGE, WL_INHERIT, p, 0, WL_GEN_FIRST);

	int ready_pipe[2];
	if (pipe2(ready_pipe, O_CLOEXEC))
		die("pipe: %s", strerror(errno));
	snprintf(index_str, sizeof index_str, "0");

	/* process i forks 2i+1 and 2i+2; each child overwrites its inherit slice before forking its own */
	unsigned idx = 0;
again:
	for (unsigned c = 2 * idx + 1; c <= 2 * idx + 2 && c < opt.procs; c++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork of process %u: %s", c, strerror(errno));
		if (pid == 0) {
			idx = c;
			snprintf(index_str, sizeof index_str, "%u", idx);
			close(ready_pipe[0]); /* only the root reads; EBADF for grandchildren is fine */
			for (uint64_t p = c; p < inherit_pages; p += opt.procs)
				fill_page(regions[WL_INHERIT].base + p * WL_WORDS_PER_PAGE, WL_INHERIT, p, c, WL_GEN_FIRST);
			goto again;
		}
	}
	my_index = idx;
	main_tid = (pid_t)syscall(SYS_gettid);

	on_path = calloc(opt.procs, 1);
	if (!on_path)
		die("calloc");
	for (unsigned i = idx;; i = (i - 1) / 2) {
		on_path[i] = 1;
		if (i == 0)
			break;
	}
	expect = (struct wl_expect){ .seed = opt.seed, .proc = idx, .nprocs = opt.procs, .on_path = on_path };

	fill_own_regions();
	start_pool();

	if (idx != 0) {
		/* reported only once everything is set up; closing the pipe leaves nothing open to dump */
		if (write(ready_pipe[1], "r", 1) != 1)
			die("ready pipe: %s", strerror(errno));
		close(ready_pipe[1]);
	} else {
		close(ready_pipe[1]);
		unsigned ready = 1;
		char buf[64];
		ssize_t got;
		/* EOF once every descendant has closed its end: none holds the pipe at dump time */
		while ((got = read(ready_pipe[0], buf, sizeof buf)) != 0) {
			if (got < 0 && errno == EINTR)
				continue;
			if (got < 0)
				die("ready pipe: %s", strerror(errno));
			ready += (unsigned)got;
		}
		close(ready_pipe[0]);
		if (ready != opt.procs)
			die("only %u of %u processes got ready (see their DIR/failed)", ready, opt.procs);
		char text[64];
		snprintf(text, sizeof text, "{\"procs\":%u}\n", opt.procs);
		write_file_atomic("ready", text);
	}

	while (!got_usr1)
		sigsuspend(&waitmask);
	uint64_t t_signal = now_ns();

	if (!strcmp(opt.action, "verify"))
		action_verify(t_signal);
	else if (!strcmp(opt.action, "events"))
		action_events(t_signal);
	else
		action_touch(t_signal);
	idle_forever();
}
