/*
 * faultline-copy-floor: the physical floor of a lazy restore's background fill on the machine at
 * hand — how fast UFFDIO_COPY can fill fresh anonymous memory from an mmap of a CRIU pages file when
 * nothing else happens: no faults to serve, no plan to walk, no events to read.  The bench reports
 * the daemons' idle drain as a fraction of this number, which says how much of the gap is left to
 * win (a ratio against the C baseline alone cannot say that).
 *
 * Usage: faultline-copy-floor --pages-file FILE [--pages N] [--threads 1,2] [--slice 256]
 *                             [--reps 3] [--json]
 *        variants that model a daemon's choices: [--fresh-source] [--map-populate] [--pretouch]
 *                             [--populate-source N] [--pread] [--interleave N]
 *
 * Per repetition: a fresh private anonymous region of N pages (default: all of the pages file) and a
 * fresh uffd (features 0, registered MISSING), as a restored process's memory would be; T threads
 * each copy a contiguous 1/T of the pages file into it in slices of --slice pages; the time is from
 * the start of the threads' copies to the last one done (CLOCK_MONOTONIC).  Every repetition is then
 * compared byte for byte with the pages file.  One warm-up repetition runs first and is reported
 * apart: on this VM guest memory the host has not backed yet costs ≈ 10 µs per page on first touch,
 * which is the host's cost, not the copy's.  Repetitions interleave the thread counts so that noise
 * on the shared VM spreads over all of them.
 *
 * Exit 0 on success, 1 on any error (one line on stderr naming what failed), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ULL
#define MAX_THREADS 64
#define MAX_REPS 1000
/* A slice is one ioctl; past 1 GiB it would not be a slice any more. */
#define MAX_SLICE (1ULL << 18)

static const char *prog = "faultline-copy-floor";

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One line, whatever the message carried (a file name may hold a newline). */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	fprintf(stderr, "%s: %s\n", prog, msg);
	exit(code);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
		die(2, "%s: expected an integer from %" PRIu64 " to %" PRIu64 ", got '%s'", opt, min, max, s);
	return v;
}

/* ------------------------------------------------------------------------------------------------
 * One repetition: fresh region, fresh uffd, T copying threads.
 */

struct copier {
	pthread_t tid;
	int uffd;
	const char *src;    /* pages file mmap, at this thread's first page */
	char *dst;          /* region, at this thread's first page */
	uint64_t pages;     /* this thread's share */
	uint64_t slice;     /* pages per UFFDIO_COPY */
	pthread_barrier_t *start;
	uint64_t present;   /* pages found already there (EEXIST): none expected in a fresh region */
	int err;            /* errno of a failed ioctl, 0 if all went well */
	uint64_t err_at;    /* page index (in this share) of the failure */
	double t_start, t_end;
	unsigned idx;
	char *buf;          /* --pread: this thread's slice buffer, reused */
};

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
/* --populate-source N: map the source's page tables N pages at a time before copying them. */
static uint64_t populate_src;
/*
 * --pread: read each slice from the pages file into one reused buffer per thread and copy from
 * there; the fd is the file's.  A buffer whose page tables stay warm against a fresh mapping of the
 * file that faults its source pages in, one fault-around at a time.
 */
static int pread_fd = -1;
/* --interleave N: thread t copies chunks t, t+T, ... of N pages of the whole file, not one 1/T share. */
static uint64_t interleave;
static unsigned nthreads_rep;
static const char *whole_src;
static char *whole_dst;
static uint64_t whole_pages;
static const char *pread_base;

static void copy_range(struct copier *c);
static void *copy_share(void *arg)
{
	struct copier *c = arg;
	if (pread_fd >= 0) {
		c->buf = mmap(NULL, c->slice * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (c->buf == MAP_FAILED) {
			c->buf = NULL;
			c->err = errno;
		}
	}
	pthread_barrier_wait(c->start);
	if (c->err)
		return NULL;
	/* Each copier stamps its own start and end: on 2 vCPUs the thread that released the barrier may
	 * not run again until the copiers are done, so its clock would miss the copy entirely. */
	if (interleave) {
		c->t_start = now_s();
		unsigned t = c->idx;
		for (uint64_t at = t * interleave; at < whole_pages && !c->err; at += nthreads_rep * interleave) {
			c->src = whole_src + at * PAGE;
			c->dst = whole_dst + at * PAGE;
			c->pages = at + interleave <= whole_pages ? interleave : whole_pages - at;
			copy_range(c);
		}
		c->t_end = now_s();
	} else {
		c->t_start = now_s();
		copy_range(c);
		c->t_end = now_s();
	}
	if (c->buf)
		munmap(c->buf, c->slice * PAGE);
	return NULL;
}

static void copy_range(struct copier *c)
{
	const uint64_t len = c->pages * PAGE;
	uint64_t done = 0;
	char *buf = c->buf;
	while (done < len) {
		uint64_t n = c->slice * PAGE;
		if (n > len - done)
			n = len - done;
		if (populate_src && done % (populate_src * PAGE) == 0) {
			uint64_t p = populate_src * PAGE < len - done ? populate_src * PAGE : len - done;
			madvise((void *)(c->src + done), p, MADV_POPULATE_READ);
		}
		const char *from = c->src + done;
		if (buf) {
			if (pread(pread_fd, buf, n, (off_t)(c->src - pread_base) + (off_t)done) != (ssize_t)n) {
				c->err = errno ? errno : EIO;
				c->err_at = done / PAGE;
				break;
			}
			from = buf;
		}
		struct uffdio_copy cp = {
			.dst = (uint64_t)(uintptr_t)(c->dst + done),
			.src = (uint64_t)(uintptr_t)from,
			.len = n,
			.mode = 0,
		};
		if (ioctl(c->uffd, UFFDIO_COPY, &cp) == 0) {
			done += n;
			continue;
		}
		int e = errno;
		/* A partial copy reports EAGAIN with the bytes it did copy in .copy: go on after them. */
		if (cp.copy > 0) {
			done += (uint64_t)cp.copy;
			continue;
		}
		if (e == EAGAIN || e == EINTR)
			continue; /* mm changing under us (nothing here does that, but it is the contract): retry */
		if (e == EEXIST) {
			/* The first page of the slice is already there: step over it, the memcmp judges it. */
			c->present++;
			done += PAGE;
			continue;
		}
		c->err = e;
		c->err_at = done / PAGE;
		break;
	}
	return;
}

static int open_uffd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
#ifdef UFFD_USER_MODE_ONLY
	/* Unprivileged users may still have user-mode-only uffds; the copy needs nothing more. */
	if (fd < 0 && errno == EPERM)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
#endif
	if (fd < 0) {
		int e = errno;
		if (e == EPERM)
			die(1, "userfaultfd not permitted (EPERM): run as root, with CAP_SYS_PTRACE, or set vm.unprivileged_userfaultfd=1");
		if (e == ENOSYS)
			die(1, "userfaultfd not available (ENOSYS): this kernel is built without CONFIG_USERFAULTFD");
		die(1, "userfaultfd: %s", strerror(e));
	}
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		die(1, "UFFDIO_API: %s", strerror(errno));
	return fd;
}

/* Returns the copy's seconds; dies on any failure or on a byte that differs from the pages file. */
static double one_rep(const char *file, const char *src, uint64_t pages, uint64_t slice, unsigned threads)
{
	const uint64_t len = pages * PAGE;
	char *region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		die(1, "mmap of a %" PRIu64 "-page region: %s", pages, strerror(errno));
	int uffd = open_uffd();
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)region, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		die(1, "UFFDIO_REGISTER of %" PRIu64 " pages: %s", pages, strerror(errno));

	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, threads + 1);
	nthreads_rep = threads;
	whole_src = src;
	whole_dst = region;
	whole_pages = pages;
	struct copier cs[MAX_THREADS];
	for (unsigned t = 0; t < threads; t++) {
		uint64_t from = pages * t / threads, to = pages * (t + 1) / threads;
		cs[t] = (struct copier){
			.uffd = uffd,
			.src = src + from * PAGE,
			.dst = region + from * PAGE,
			.pages = to - from,
			.slice = slice,
			.start = &start,
			.idx = t,
		};
		int e = pthread_create(&cs[t].tid, NULL, copy_share, &cs[t]);
		if (e)
			die(1, "pthread_create: %s", strerror(e));
	}
	/* Thread creation stays out of the time: the copiers start together once all of them exist. */
	pthread_barrier_wait(&start);
	double t0 = 0, t1 = 0;
	for (unsigned t = 0; t < threads; t++) {
		pthread_join(cs[t].tid, NULL);
		if (!t || cs[t].t_start < t0)
			t0 = cs[t].t_start;
		if (!t || cs[t].t_end > t1)
			t1 = cs[t].t_end;
	}
	double secs = t1 - t0;
	if (secs < 1e-9)
		secs = 1e-9; /* a clock too coarse for a tiny file must not print inf into the JSON */
	pthread_barrier_destroy(&start);

	for (unsigned t = 0; t < threads; t++) {
		if (cs[t].err)
			die(1, "UFFDIO_COPY from pages file %s at page %" PRIu64 ": %s", file,
			    (uint64_t)((cs[t].src - src) / PAGE) + cs[t].err_at, strerror(cs[t].err));
	}
	/* Verify: a floor that copied the wrong bytes would be no floor at all. */
	if (memcmp(region, src, len) != 0) {
		uint64_t p = 0;
		while (p < pages && memcmp(region + p * PAGE, src + p * PAGE, PAGE) == 0)
			p++;
		die(1, "verification failed: page %" PRIu64 " of the region differs from pages file %s", p, file);
	}
	close(uffd);
	munmap(region, len);
	return secs;
}

/* ------------------------------------------------------------------------------------------------
 * Reporting
 */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(const double *xs, unsigned n)
{
	double s[MAX_REPS];
	memcpy(s, xs, n * sizeof(*xs));
	qsort(s, n, sizeof(*s), cmp_double);
	return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void json_string(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static void usage(FILE *f)
{
	fprintf(f, "usage: %s --pages-file FILE [--pages N] [--threads 1,2] [--slice 256] [--reps 3] [--json]\n"
		   "       [--fresh-source] [--map-populate] [--pretouch] [--populate-source N] [--pread] [--interleave N]\n", prog);
}

int main(int argc, char **argv)
{
	const char *file = NULL;
	uint64_t pages = 0, slice = 256, reps = 3;
	unsigned threads[MAX_THREADS] = { 1, 2 }, nthreads = 2;
	bool json = false, fresh_source = false, pretouch = false, use_pread = false;
	int map_flags = MAP_SHARED;
	static const struct option opts[] = {
		{ "fresh-source", no_argument, NULL, 'F' },
		{ "map-populate", no_argument, NULL, 'M' },
		{ "pretouch", no_argument, NULL, 'T' },
		{ "pread", no_argument, NULL, 'R' },
		{ "interleave", required_argument, NULL, 'I' },
		{ "populate-source", required_argument, NULL, 'P' },
		{ "pages-file", required_argument, NULL, 'f' },
		{ "pages", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' },
		{ "slice", required_argument, NULL, 's' },
		{ "reps", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		switch (c) {
		case 'f': file = optarg; break;
		case 'n': pages = parse_u64("--pages", optarg, 1, UINT64_MAX / PAGE); break;
		case 's': slice = parse_u64("--slice", optarg, 1, MAX_SLICE); break;
		case 'r': reps = parse_u64("--reps", optarg, 1, MAX_REPS); break;
		case 'j': json = true; break;
		case 'F': fresh_source = true; break;
		case 'M': map_flags |= MAP_POPULATE; break;
		case 'T': pretouch = true; break;
		case 'R': use_pread = true; break;
		case 'I': interleave = parse_u64("--interleave", optarg, 1, UINT64_MAX / PAGE); break;
		case 'P': populate_src = parse_u64("--populate-source", optarg, 1, UINT64_MAX / PAGE); break;
		case 't': {
			char *list = strdup(optarg), *save = NULL;
			nthreads = 0;
			for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
				if (nthreads == MAX_THREADS)
					die(2, "--threads: at most %d thread counts", MAX_THREADS);
				threads[nthreads++] = (unsigned)parse_u64("--threads", tok, 1, MAX_THREADS);
			}
			free(list);
			if (!nthreads)
				die(2, "--threads: expected a comma-separated list such as 1,2, got '%s'", optarg);
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc)
		die(2, "unexpected argument '%s'", argv[optind]);
	if (!file)
		die(2, "--pages-file FILE is required");

	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(1, "cannot open pages file %s: %s", file, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		die(1, "cannot stat pages file %s: %s", file, strerror(errno));
	if (!S_ISREG(st.st_mode))
		die(1, "pages file %s is not a regular file", file);
	uint64_t file_pages = (uint64_t)st.st_size / PAGE;
	if (file_pages == 0)
		die(1, "pages file %s is empty (%lld bytes, not one whole page to copy)", file, (long long)st.st_size);
	if (!pages)
		pages = file_pages;
	if (pages > file_pages)
		die(1, "pages file %s holds %" PRIu64 " pages, --pages asked for %" PRIu64, file, file_pages, pages);
	for (unsigned i = 0; i < nthreads; i++)
		if (threads[i] > pages)
			die(2, "--threads %u: more threads than the %" PRIu64 " pages to copy", threads[i], pages);

	/* Read-only shared mmap, as faultline and the baseline map pages files: the copy's source. */
	const char *src = mmap(NULL, pages * PAGE, PROT_READ, map_flags, fd, 0);
	if (src == MAP_FAILED)
		die(1, "mmap of pages file %s: %s", file, strerror(errno));
	if (use_pread) {
		pread_fd = fd;
		pread_base = src;
	}

	/* The warm-up also brings the pages file into the page cache and the source mapping's page tables. */
	double warm_s = one_rep(file, src, pages, slice, threads[0]);
	const double gb = (double)(pages * PAGE) / 1e9;
	double *runs = calloc((size_t)nthreads * reps, sizeof(double)); /* GB/s, [thread count][rep] */
	if (!runs)
		die(1, "out of memory");
	for (uint64_t r = 0; r < reps; r++)
		for (unsigned i = 0; i < nthreads; i++) {
			if (fresh_source) {
				/* A daemon maps the pages file once per restore: its copies also pay the source
				 * mapping's page-table faults (page cache warm), which a reused mapping hides. */
				munmap((void *)src, pages * PAGE);
				src = mmap(NULL, pages * PAGE, PROT_READ, map_flags, fd, 0);
				if (src == MAP_FAILED)
					die(1, "mmap of pages file %s: %s", file, strerror(errno));
				pread_base = src;
				if (pretouch) {
					volatile char sink = 0;
					for (uint64_t p = 0; p < pages; p++)
						sink ^= src[p * PAGE];
					(void)sink;
				}
			}
			runs[i * reps + r] = gb / one_rep(file, src, pages, slice, threads[i]);
		}
	close(fd);

	if (json) {
		printf("{\"freshSource\":%s,\"pagesFile\":", fresh_source ? "true" : "false");
		json_string(file);
		printf(",\"pages\":%" PRIu64 ",\"slice\":%" PRIu64 ",\"reps\":%" PRIu64 ",\"verified\":true", pages, slice, reps);
		printf(",\"warmup\":{\"threads\":%u,\"gbps\":%.4f,\"pagesPerSec\":%.0f}", threads[0], gb / warm_s, (double)pages / warm_s);
		printf(",\"results\":[");
		for (unsigned i = 0; i < nthreads; i++) {
			double m = median(&runs[i * reps], (unsigned)reps);
			printf("%s{\"threads\":%u,\"gbps\":%.4f,\"pagesPerSec\":%.0f,\"runsGBps\":[", i ? "," : "", threads[i], m, m * 1e9 / PAGE);
			for (uint64_t r = 0; r < reps; r++)
				printf("%s%.4f", r ? "," : "", runs[i * reps + r]);
			printf("]}");
		}
		printf("]}\n");
	} else {
		printf("pages file %s: %" PRIu64 " pages (%.1f MiB), %" PRIu64 "-page slices, %" PRIu64 " reps after a warm-up, every copy verified\n",
		       file, pages, (double)(pages * PAGE) / (1 << 20), slice, reps);
		printf("warm-up (%u thread%s, memory the host may not have backed yet): %.2f GB/s, %.0f pages/s\n",
		       threads[0], threads[0] == 1 ? "" : "s", gb / warm_s, (double)pages / warm_s);
		for (unsigned i = 0; i < nthreads; i++) {
			double m = median(&runs[i * reps], (unsigned)reps);
			printf("%2u thread%s: %6.2f GB/s median, %9.0f pages/s; runs (GB/s):", threads[i], threads[i] == 1 ? " " : "s", m, m * 1e9 / PAGE);
			for (uint64_t r = 0; r < reps; r++)
				printf(" %.2f", runs[i * reps + r]);
			printf("\n");
		}
	}
	free(runs);
	return 0;
}
