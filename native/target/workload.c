/*
 * What a restored process does once released and past its steps, and how it reports: the
 * page-touching workload (--threads, --pattern, --fraction), verification of each page against its
 * expected content, first-touch latency, and the process's JSON line (plus --latency-file).  Runs
 * in the restored process; owns no global state (results go to the process's slot in shm).
 */
#include "target.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const uint8_t zero_page[PAGE];

/* Not thread-safe: the workload's threads keep their own latencies and the main thread logs them. */
static void log_lat(struct pctx *c, uint64_t ns)
{
	if (c->nlog == c->caplog) {
		c->caplog = c->caplog ? c->caplog * 2 : 1024;
		c->log = realloc(c->log, c->caplog * sizeof(*c->log));
		if (!c->log)
			die(EXIT_NOMEM, "pid %d: out of memory", c->p->pid);
	}
	c->log[c->nlog++] = ns;
}

static void report_bad(struct pctx *c, struct ent *e, const uint8_t *got, const uint8_t *want)
{
	/* A page already reported bad is not reported again. */
	if (e->state == 2)
		return;
	e->state = 2;
	if (atomic_fetch_add(&c->details, 1) < MAX_MISMATCH_DETAILS) {
		size_t k = 0;
		while (k < PAGE && got[k] == want[k])
			k++;
		/* The page may have changed under us between memcmp and the scan. */
		if (k == PAGE)
			k = 0;
		fprintf(stderr, "pid %d page 0x%" PRIxPTR ": byte %zu expected 0x%02x got 0x%02x\n", c->p->pid,
			(uintptr_t)got, k, want[k], got[k]);
	}
}

static void verify_ent(struct pctx *c, struct ent *e)
{
	const uint8_t *want = e->want ? e->want : zero_page;
	const uint8_t *got = (const uint8_t *)(uintptr_t)e->addr;

	if (memcmp(got, want, PAGE) == 0) {
		if (e->state == 0)
			e->state = 1;
		return;
	}
	report_bad(c, e, got, want);
}

/* A page a step read, ns after it asked: only a page's first touch can have faulted. */
void touch_page(struct pctx *c, struct ent *e, uint64_t ns)
{
	if (!e->touched)
		log_lat(c, ns);
	e->touched = 1;
	c->touched++;
	verify_ent(c, e);
}

void verify_all(struct pctx *c)
{
	for (size_t i = 0; i < c->t.n; i++)
		verify_ent(c, &c->t.e[i]);
}

/* ------------------------------------------------------------------------------------------------
 * The workload
 */

struct worker {
	struct pctx *c;
	size_t *pages; /* table indexes */
	size_t n;
	uint64_t *lat;
	uint8_t *first;
	int index;
	pthread_t th;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	if (opt.pattern == PAT_RANDOM && w->n > 1) {
		/* Each thread walks its share in its own deterministic order. */
		uint64_t s = opt.seed ^ ((uint64_t)w->c->p->pid * 0x100000001b3ull) ^ ((uint64_t)(w->index + 1) << 48);
		for (size_t i = w->n - 1; i > 0; i--) {
			size_t j = splitmix64(&s) % (i + 1);
			size_t t = w->pages[i];
			w->pages[i] = w->pages[j];
			w->pages[j] = t;
		}
	}
	for (size_t i = 0; i < w->n; i++) {
		struct ent *e = &w->c->t.e[w->pages[i]];
		volatile uint8_t *a = (volatile uint8_t *)(uintptr_t)e->addr;
		uint64_t t0 = now_ns();
		(void)*a;
		w->lat[i] = now_ns() - t0;
		w->first[i] = !e->touched;
		e->touched = 1;
		verify_ent(w->c, e);
	}
	return NULL;
}

/* Which table entries the workload touches, in touch order. */
static size_t *plan_touches(struct proc *p, size_t total, size_t *count)
{
	size_t t = 0;
	size_t *order;

	if (opt.fraction >= 1.0)
		t = total;
	else if (opt.fraction > 0)
		t = (size_t)((double)total * opt.fraction + 0.5);
	order = malloc((total ? total : 1) * sizeof(*order));
	if (!order)
		die(EXIT_NOMEM, "pid %d: out of memory", p->pid);
	switch (opt.pattern) {
	case PAT_SEQ:
		for (size_t i = 0; i < total; i++)
			order[i] = i;
		break;
	case PAT_STRIDE: {
		size_t n = 0;
		for (uint64_t off = 0; off < opt.stride && n < total; off++)
			for (size_t i = off; i < total; i += opt.stride)
				order[n++] = i;
		break;
	}
	case PAT_RANDOM: {
		uint64_t s = opt.seed ^ ((uint64_t)p->pid * 0x9e3779b97f4a7c15ull);
		for (size_t i = 0; i < total; i++)
			order[i] = i;
		for (size_t i = 0; i < t; i++) {
			size_t j = i + splitmix64(&s) % (total - i);
			size_t x = order[i];
			order[i] = order[j];
			order[j] = x;
		}
		break;
	}
	}
	*count = t;
	return order;
}

/* Touches the pages mapped now (the planned pages if no step ran), split among --threads threads. */
void run_workload(struct pctx *c)
{
	struct proc *p = c->p;
	size_t touched, *order = plan_touches(p, c->t.n, &touched);
	uint64_t *lat = malloc((touched ? touched : 1) * sizeof(*lat));
	uint8_t *first = malloc(touched ? touched : 1);
	struct worker *w = calloc(opt.threads, sizeof(*w));

	if (!lat || !first || !w)
		die(EXIT_NOMEM, "pid %d: out of memory", p->pid);
	for (int t = 0; t < opt.threads; t++) {
		size_t lo = touched * t / opt.threads, hi = touched * (t + 1) / opt.threads;
		w[t] = (struct worker){ .c = c, .pages = order + lo, .n = hi - lo, .lat = lat + lo, .first = first + lo, .index = t };
		if (pthread_create(&w[t].th, NULL, worker_main, &w[t]))
			die(EXIT_UFFD, "pid %d: pthread_create failed", p->pid);
	}
	for (int t = 0; t < opt.threads; t++)
		pthread_join(w[t].th, NULL);
	for (size_t i = 0; i < touched; i++)
		if (first[i])
			log_lat(c, lat[i]);
	c->touched += touched;
}

/* ------------------------------------------------------------------------------------------------
 * The process's report
 */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t percentile(const uint64_t *v, size_t n, unsigned pct)
{
	size_t rank;
	if (!n)
		return 0;
	rank = (n * pct + 99) / 100; /* nearest rank */
	return v[rank ? rank - 1 : 0];
}

static void write_latency_file(struct pctx *c, char *path, size_t cap)
{
	int fd;
	size_t off = 0, len = c->nlog * sizeof(uint64_t);
	snprintf(path, cap, "%s.%d.lat", opt.latency_prefix, (int)getpid());
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "faultline-target: pid %d: latency file %s: %s\n", c->p->pid, path, strerror(errno));
		return;
	}
	/* u64 little-endian: the host order on x86_64 and arm64. */
	while (off < len) {
		ssize_t n = write(fd, (const char *)c->log + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "faultline-target: pid %d: latency file %s: %s\n", c->p->pid, path, strerror(errno));
			break;
		}
		off += n;
	}
	close(fd);
}

static void json_escape(char *dst, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 < cap; s++) {
		unsigned char ch = *s;
		if (ch == '"' || ch == '\\') {
			dst[n++] = '\\';
			dst[n++] = ch;
		} else if (ch < 0x20) {
			n += snprintf(dst + n, cap - n, "\\u%04x", ch);
		} else {
			dst[n++] = ch;
		}
	}
	dst[n] = 0;
}

struct results {
	size_t verified, mismatches, holes;
};

/* Pages still mapped plus those that left the table along the way. */
static struct results count_results(const struct pctx *c)
{
	struct results r = { c->t.ret_verified, c->t.ret_mismatches, c->t.ret_holes };
	for (size_t i = 0; i < c->t.n; i++) {
		if (!c->t.e[i].state)
			continue;
		r.verified++;
		r.mismatches += c->t.e[i].state == 2;
		r.holes += !c->t.e[i].want;
	}
	return r;
}

/* The JSON line src/target/run.ts parses (TargetProcessReport), in one write(2). */
static void print_line(const struct pctx *c, const struct results *r, const char *latency_path)
{
	const struct proc *p = c->p;
	size_t count = c->nlog;
	uint64_t *lat = malloc((count ? count : 1) * sizeof(*lat));
	char line[8192], esc[2 * PATH_MAX];
	int n;

	if (!lat)
		die(EXIT_NOMEM, "pid %d: out of memory", p->pid);
	memcpy(lat, c->log, count * sizeof(*lat));
	qsort(lat, count, sizeof(*lat), cmp_u64);
	n = snprintf(line, sizeof(line),
		     "{\"pid\":%d,\"hostPid\":%d,\"pages\":%zu,\"touched\":%zu,\"verified\":%zu,\"mismatches\":%zu,"
		     "\"holes\":%zu,\"latencyNs\":{\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64
		     ",\"max\":%" PRIu64 ",\"count\":%zu}",
		     p->pid, (int)getpid(), c->t.n, c->touched, r->verified, r->mismatches, r->holes, percentile(lat, count, 50),
		     percentile(lat, count, 90), percentile(lat, count, 99), count ? lat[count - 1] : 0, count);
	if (c->depth > 0)
		n += snprintf(line + n, sizeof(line) - n, ",\"forkOf\":%d,\"parentHostPid\":%d", p->pid,
			      (int)shm->forked.s[c->fork_slot].parent_host);
	if (c->exited_early)
		n += snprintf(line + n, sizeof(line) - n, ",\"exitedEarly\":true");
	if (latency_path) {
		json_escape(esc, sizeof(esc), latency_path);
		n += snprintf(line + n, sizeof(line) - n, ",\"latencyFile\":\"%s\"", esc);
	}
	if (opt.scripting)
		n += snprintf(line + n, sizeof(line) - n,
			      ",\"events\":{\"fork\":%" PRIu64 ",\"mremap\":%" PRIu64 ",\"dontneed\":%" PRIu64
			      ",\"unmap\":%" PRIu64 ",\"exit\":%" PRIu64 ",\"touch\":%" PRIu64 ",\"threadsSame\":%" PRIu64
			      ",\"zombie\":%" PRIu64 ",\"grow\":%" PRIu64 ",\"shrink\":%" PRIu64 ",\"swap\":%" PRIu64 "}",
			      c->ev[S_FORK], c->ev[S_MREMAP], c->ev[S_DONTNEED], c->ev[S_UNMAP], c->ev[S_EXIT], c->ev[S_TOUCH],
			      c->ev[S_TSAME], c->ev[S_ZOMBIE], c->ev[S_GROW], c->ev[S_SHRINK], c->ev[S_SWAP]);
	n += snprintf(line + n, sizeof(line) - n, "}\n");
	if (write(1, line, n) != n) {
	}
}

/* Reports and exits; the totals also go to shared memory, for the main process's summary. */
void finish(struct pctx *c)
{
	struct results r = count_results(c);
	char path[PATH_MAX];

	if (opt.latency_prefix)
		write_latency_file(c, path, sizeof(path));
	print_line(c, &r, opt.latency_prefix ? path : NULL);
	if (c->depth > 0) {
		shm->forked.s[c->fork_slot].verified = r.verified;
		shm->forked.s[c->fork_slot].mismatches = r.mismatches;
	} else {
		shm->slot[c->idx].verified = r.verified;
		shm->slot[c->idx].mismatches = r.mismatches;
	}
	if (opt.hold_ms > 0)
		sleep_ms(opt.hold_ms);
	_exit(r.mismatches ? EXIT_MISMATCH : EXIT_OK);
}
