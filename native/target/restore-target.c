/*
 * faultline-target: a stand-in for `criu restore --lazy-pages` used by faultline's tests, demo and
 * benchmark.
 *
 * It reads a text plan written by the TypeScript planner (not CRIU images), forks one process per
 * planned task, maps that task's lazy VMAs, fills the non-lazy pages eagerly, arms a userfaultfd on
 * the VMAs and hands it to the lazy-pages daemon over the daemon's UNIX socket exactly as CRIU's
 * restorer does (int32 pid, then 1 byte + SCM_RIGHTS; -pid for zombies; then RESTORE_FINISHED and
 * EOF).  Once released, every process runs a page-touching workload that measures first-touch
 * latency and checks each page against the pages file, then prints one JSON line; the main process
 * prints a summary line.  See usage() for options and exit codes.
 *
 * Plan format (hex lower case, no 0x):
 *   faultline-plan 1
 *   socket <absolute socket path>
 *   file <idx> <absolute path of a pages file>
 *   proc <pid> <ppid> <nvma> <nrun>
 *   vma <start-hex> <end-hex>
 *   run <vaddr-hex> <npages> <lazy 0|1> <file-idx> <byte-offset>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Debian bookworm ships 6.1 headers; the machine runs a newer kernel. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#endif

#define PAGE 4096UL
#define RESTORE_FINISHED 0x52535446u
#define MAX_MISMATCH_DETAILS 5

/* The features CRIU asks for; anything else would change what the daemon sees. */
#define WANTED_FEATURES                                                             \
	(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | \
	 UFFD_FEATURE_EVENT_UNMAP)

enum {
	EXIT_OK = 0,
	EXIT_MISMATCH = 1,
	EXIT_USAGE = 2, /* bad options, bad plan, unreadable pages file */
	EXIT_OVERLAP = 3, /* a VMA address is already taken: the caller may retry */
	EXIT_SOCKET = 4, /* connect or hand-over failed */
	EXIT_KILLED = 5, /* a restored process died of a signal */
	EXIT_UFFD = 6, /* the kernel refused the userfaultfd setup */
};

struct pfile {
	char *path;
	const uint8_t *base;
	size_t size;
	int line;
};

struct vma {
	uint64_t start, end;
	size_t first; /* index of its first page in the process's page numbering */
	int line;
};

struct run {
	uint64_t vaddr, npages, off;
	int lazy, file, line;
};

struct proc {
	int pid, ppid, nvma, nrun, line;
	int vmas_seen, runs_seen;
	struct vma *vmas;
	struct run *runs;
	size_t npages;
	const uint8_t **expect; /* per page: its bytes in a pages file, NULL for a hole */
	bool zombie;
	pid_t host;
	bool handed, reaped;
	bool killed_by_other; /* died of a signal we did not send (e.g. the daemon's fail-stop) */
	int wstatus;
};

/* Lives in MAP_SHARED memory created before the forks. */
struct shared {
	pthread_mutex_t send_lock; /* serialises hand-overs, like CRIU's task-entries mutex */
	uint32_t go; /* futex: set once RESTORE_FINISHED is sent */
	uint32_t usr1; /* futex: set when the main process got SIGUSR1 */
	struct {
		uint64_t verified, mismatches;
	} slot[];
};

enum handover { HO_SPLIT, HO_MERGED, HO_BYTEWISE };
enum pattern { PAT_SEQ, PAT_RANDOM, PAT_STRIDE };

static struct {
	const char *plan;
	long connect_timeout_ms;
	enum handover handover;
	int *zombies;
	int nzombies;
	int threads;
	enum pattern pattern;
	uint64_t stride;
	double fraction;
	uint64_t seed;
	bool verify_all, wait_signal;
	long hold_ms;
} opt = {
	.connect_timeout_ms = 5000,
	.handover = HO_SPLIT,
	.threads = 1,
	.pattern = PAT_SEQ,
	.stride = 4,
	.fraction = 1.0,
	.seed = 1,
};

static char *sock_path;
static struct pfile *files;
static int nfiles;
static struct proc *procs;
static int nprocs;
static struct shared *shm;
static int sock = -1;
static int ready_pipe[2] = { -1, -1 };
static int sigfd = -1;
static pid_t main_pid;

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n = snprintf(buf, sizeof(buf), "faultline-target: ");
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(2, buf, n) < 0) {
	}
	/* Children must not run the parent's atexit/stdio teardown. */
	if (getpid() != main_pid)
		_exit(code);
	exit(code);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

static void futex_wait_set(uint32_t *word)
{
	while (!__atomic_load_n(word, __ATOMIC_ACQUIRE))
		syscall(SYS_futex, word, FUTEX_WAIT, 0, NULL, NULL, 0);
}

static void futex_set_wake(uint32_t *word)
{
	__atomic_store_n(word, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------------------------------------
 * Plan
 */

static int plan_lineno;

static void plan_error(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void plan_error(int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		die(EXIT_USAGE, "plan %s:%d: %s", opt.plan, line, msg);
	die(EXIT_USAGE, "plan %s: %s", opt.plan, msg);
}

static uint64_t parse_u64(const char *tok, int base, const char *what)
{
	char *end;
	unsigned long long v;
	if (!tok)
		plan_error(plan_lineno, "missing %s", what);
	if (*tok == '-' || *tok == '+')
		plan_error(plan_lineno, "bad %s '%s'", what, tok);
	errno = 0;
	v = strtoull(tok, &end, base);
	if (errno || end == tok || *end)
		plan_error(plan_lineno, "bad %s '%s'", what, tok);
	return v;
}

static int parse_int(const char *tok, const char *what, long lo, long hi)
{
	char *end;
	long v;
	if (!tok)
		plan_error(plan_lineno, "missing %s", what);
	errno = 0;
	v = strtol(tok, &end, 10);
	if (errno || end == tok || *end || v < lo || v > hi)
		plan_error(plan_lineno, "bad %s '%s'", what, tok);
	return (int)v;
}

static void no_more(char **save)
{
	char *extra = strtok_r(NULL, " \t", save);
	if (extra)
		plan_error(plan_lineno, "unexpected '%s' at end of line", extra);
}

/* The rest of the line after the keyword (and index): paths may contain spaces. */
static char *rest_path(char *s, const char *what)
{
	while (*s == ' ' || *s == '\t')
		s++;
	if (!*s)
		plan_error(plan_lineno, "missing %s", what);
	if (*s != '/')
		plan_error(plan_lineno, "%s '%s' is not absolute", what, s);
	return strdup(s);
}

static struct proc *current_proc(const char *kind)
{
	struct proc *p = nprocs ? &procs[nprocs - 1] : NULL;
	if (!p)
		plan_error(plan_lineno, "'%s' line before any 'proc' line", kind);
	return p;
}

static void read_plan(void)
{
	FILE *f = fopen(opt.plan, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	bool header = false;

	if (!f)
		die(EXIT_USAGE, "plan %s: %s", opt.plan, strerror(errno));
	while ((len = getline(&line, &cap, f)) >= 0) {
		char *save, *kw;
		plan_lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = 0;
		kw = line;
		while (*kw == ' ' || *kw == '\t')
			kw++;
		if (!*kw || *kw == '#')
			continue;
		if (!header) {
			if (strcmp(kw, "faultline-plan 1"))
				plan_error(plan_lineno, "expected 'faultline-plan 1', got '%s'", kw);
			header = true;
			continue;
		}
		if (!strncmp(kw, "socket", 6) && (kw[6] == ' ' || kw[6] == '\t' || !kw[6])) {
			if (sock_path)
				plan_error(plan_lineno, "second 'socket' line");
			sock_path = rest_path(kw + 6, "socket path");
			continue;
		}
		if (!strncmp(kw, "file", 4) && (kw[4] == ' ' || kw[4] == '\t' || !kw[4])) {
			char *p = kw + 4, *end;
			long idx;
			while (*p == ' ' || *p == '\t')
				p++;
			idx = strtol(p, &end, 10);
			if (end == p || (*end != ' ' && *end != '\t'))
				plan_error(plan_lineno, "bad file index");
			if (idx != nfiles)
				plan_error(plan_lineno, "file index %ld out of order (expected %d)", idx, nfiles);
			files = realloc(files, sizeof(*files) * (nfiles + 1));
			files[nfiles] = (struct pfile){ .path = rest_path(end, "pages file path"), .line = plan_lineno };
			nfiles++;
			continue;
		}
		kw = strtok_r(kw, " \t", &save);
		if (!strcmp(kw, "proc")) {
			struct proc *p = nprocs ? &procs[nprocs - 1] : NULL;
			if (p && (p->vmas_seen < p->nvma || p->runs_seen < p->nrun))
				plan_error(plan_lineno, "proc %d (line %d) declared %d vma / %d run lines, got %d / %d",
					   p->pid, p->line, p->nvma, p->nrun, p->vmas_seen, p->runs_seen);
			procs = realloc(procs, sizeof(*procs) * (nprocs + 1));
			p = &procs[nprocs];
			memset(p, 0, sizeof(*p));
			p->line = plan_lineno;
			p->pid = parse_int(strtok_r(NULL, " \t", &save), "pid", 1, INT_MAX);
			p->ppid = parse_int(strtok_r(NULL, " \t", &save), "ppid", 0, INT_MAX);
			p->nvma = parse_int(strtok_r(NULL, " \t", &save), "nvma", 0, INT_MAX / 2);
			p->nrun = parse_int(strtok_r(NULL, " \t", &save), "nrun", 0, INT_MAX / 2);
			no_more(&save);
			for (int i = 0; i < nprocs; i++)
				if (procs[i].pid == p->pid)
					plan_error(plan_lineno, "pid %d already declared on line %d", p->pid, procs[i].line);
			p->vmas = calloc(p->nvma ? p->nvma : 1, sizeof(*p->vmas));
			p->runs = calloc(p->nrun ? p->nrun : 1, sizeof(*p->runs));
			nprocs++;
		} else if (!strcmp(kw, "vma")) {
			struct proc *p = current_proc("vma");
			struct vma *v;
			if (p->vmas_seen == p->nvma)
				plan_error(plan_lineno, "proc %d (line %d) declared only %d vma lines", p->pid, p->line, p->nvma);
			v = &p->vmas[p->vmas_seen++];
			v->line = plan_lineno;
			v->start = parse_u64(strtok_r(NULL, " \t", &save), 16, "vma start");
			v->end = parse_u64(strtok_r(NULL, " \t", &save), 16, "vma end");
			no_more(&save);
			if (v->start % PAGE || v->end % PAGE)
				plan_error(plan_lineno, "vma %" PRIx64 "-%" PRIx64 " is not page aligned", v->start, v->end);
			if (v->end <= v->start)
				plan_error(plan_lineno, "vma %" PRIx64 "-%" PRIx64 " is empty", v->start, v->end);
		} else if (!strcmp(kw, "run")) {
			struct proc *p = current_proc("run");
			struct run *r;
			if (p->runs_seen == p->nrun)
				plan_error(plan_lineno, "proc %d (line %d) declared only %d run lines", p->pid, p->line, p->nrun);
			r = &p->runs[p->runs_seen++];
			r->line = plan_lineno;
			r->vaddr = parse_u64(strtok_r(NULL, " \t", &save), 16, "run address");
			r->npages = parse_u64(strtok_r(NULL, " \t", &save), 10, "run page count");
			r->lazy = parse_int(strtok_r(NULL, " \t", &save), "lazy flag", 0, 1);
			r->file = parse_int(strtok_r(NULL, " \t", &save), "file index", 0, INT_MAX);
			r->off = parse_u64(strtok_r(NULL, " \t", &save), 10, "byte offset");
			no_more(&save);
			if (r->vaddr % PAGE)
				plan_error(plan_lineno, "run address %" PRIx64 " is not page aligned", r->vaddr);
			if (r->npages == 0)
				plan_error(plan_lineno, "run has 0 pages");
		} else {
			plan_error(plan_lineno, "unknown line '%s'", kw);
		}
	}
	if (ferror(f))
		die(EXIT_USAGE, "plan %s: %s", opt.plan, strerror(errno));
	free(line);
	fclose(f);
	plan_lineno = 0;
	if (!header)
		plan_error(0, "empty plan (no 'faultline-plan 1' line)");
	if (!sock_path)
		plan_error(0, "no 'socket' line");
	if (!nprocs)
		plan_error(0, "no 'proc' line");
	{
		struct proc *p = &procs[nprocs - 1];
		if (p->vmas_seen < p->nvma || p->runs_seen < p->nrun)
			plan_error(p->line, "proc %d declared %d vma / %d run lines, got %d / %d at end of plan",
				   p->pid, p->nvma, p->nrun, p->vmas_seen, p->runs_seen);
	}
}

static void map_files(void)
{
	for (int i = 0; i < nfiles; i++) {
		struct pfile *pf = &files[i];
		struct stat st;
		int fd = open(pf->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0)
			plan_error(pf->line, "pages file %s: %s", pf->path, strerror(errno));
		pf->size = st.st_size;
		if (pf->size) {
			void *m = mmap(NULL, pf->size, PROT_READ, MAP_PRIVATE, fd, 0);
			if (m == MAP_FAILED)
				plan_error(pf->line, "mmap %s: %s", pf->path, strerror(errno));
			pf->base = m;
		}
		close(fd);
	}
}

static int cmp_vma(const void *a, const void *b)
{
	const struct vma *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

static struct vma *find_vma(struct proc *p, uint64_t addr)
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

/* Checked in the main process so that plan mistakes surface before anything is handed over. */
static void index_plan(void)
{
	for (int i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		qsort(p->vmas, p->nvma, sizeof(*p->vmas), cmp_vma);
		for (int j = 0; j < p->nvma; j++) {
			if (j && p->vmas[j].start < p->vmas[j - 1].end)
				plan_error(p->vmas[j].line, "vma overlaps the vma on line %d", p->vmas[j - 1].line);
			p->vmas[j].first = p->npages;
			p->npages += (p->vmas[j].end - p->vmas[j].start) / PAGE;
		}
		p->expect = calloc(p->npages ? p->npages : 1, sizeof(*p->expect));
		if (!p->expect)
			die(EXIT_USAGE, "out of memory indexing pid %d", p->pid);
		for (int j = 0; j < p->nrun; j++) {
			struct run *r = &p->runs[j];
			struct pfile *pf;
			if (r->file >= nfiles)
				plan_error(r->line, "file index %d not declared", r->file);
			pf = &files[r->file];
			if (r->npages > pf->size / PAGE || r->off > pf->size - r->npages * PAGE)
				plan_error(r->line, "run reads past the end of %s (%zu bytes)", pf->path, pf->size);
			for (uint64_t k = 0; k < r->npages; k++) {
				uint64_t a = r->vaddr + k * PAGE;
				struct vma *v = find_vma(p, a);
				size_t idx;
				if (!v)
					plan_error(r->line, "page %" PRIx64 " of the run lies in no vma of pid %d", a, p->pid);
				idx = v->first + (a - v->start) / PAGE;
				if (p->expect[idx])
					plan_error(r->line, "page %" PRIx64 " is covered by an earlier run", a);
				p->expect[idx] = pf->base + r->off + k * PAGE;
			}
		}
	}
	for (int z = 0; z < opt.nzombies; z++) {
		bool found = false;
		for (int i = 0; i < nprocs; i++)
			if (procs[i].pid == opt.zombies[z]) {
				procs[i].zombie = true;
				found = true;
			}
		if (!found)
			die(EXIT_USAGE, "--zombie %d: no such pid in the plan", opt.zombies[z]);
	}
}

/* ------------------------------------------------------------------------------------------------
 * Socket
 */

static void connect_daemon(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t deadline = now_ns() + (uint64_t)opt.connect_timeout_ms * 1000000ull;

	if (strlen(sock_path) >= sizeof(sa.sun_path))
		die(EXIT_SOCKET, "connect to %s: %s", sock_path, strerror(ENAMETOOLONG));
	strcpy(sa.sun_path, sock_path);
	for (;;) {
		int err;
		sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (sock < 0)
			die(EXIT_SOCKET, "socket: %s", strerror(errno));
		if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return;
		err = errno;
		close(sock);
		sock = -1;
		/* The daemon may not have bound its socket yet. */
		if ((err != ENOENT && err != ECONNREFUSED) || now_ns() >= deadline)
			die(EXIT_SOCKET, "connect to %s: %s", sock_path, strerror(err));
		sleep_ms(10);
	}
}

static int send_all(const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = send(sock, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

static int send_with_fd(const void *buf, size_t len, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *c;
	ssize_t n;

	memset(ctl.buf, 0, sizeof(ctl.buf));
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	/* The fd travels with the first byte; any short remainder is plain data. */
	return send_all((const char *)buf + n, len - n);
}

static int send_pid(int32_t v)
{
	if (opt.handover != HO_BYTEWISE)
		return send_all(&v, sizeof(v));
	for (size_t i = 0; i < sizeof(v); i++) {
		if (send_all((char *)&v + i, 1) < 0)
			return -1;
		sleep_ms(1);
	}
	return 0;
}

static void lock_send(void)
{
	int rc = pthread_mutex_lock(&shm->send_lock);
	/* A sibling died holding the lock; its half-sent message is the daemon's problem to report. */
	if (rc == EOWNERDEAD)
		pthread_mutex_consistent(&shm->send_lock);
	else if (rc)
		die(EXIT_SOCKET, "send lock: %s", strerror(rc));
}

/* ------------------------------------------------------------------------------------------------
 * Restored process
 */

struct child {
	struct proc *p;
	uint8_t *state; /* per page: 0 not verified, 1 ok, 2 mismatch */
	atomic_int details;
};

struct worker {
	struct child *c;
	size_t *pages;
	size_t n;
	uint64_t *lat;
	int index;
	pthread_t th;
};

static const uint8_t zero_page[PAGE];

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint8_t *page_addr(struct proc *p, size_t idx)
{
	int lo = 0, hi = p->nvma - 1;
	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;
		if (p->vmas[mid].first <= idx)
			lo = mid;
		else
			hi = mid - 1;
	}
	return (uint8_t *)(uintptr_t)(p->vmas[lo].start + (idx - p->vmas[lo].first) * PAGE);
}

static void verify_page(struct child *c, size_t idx)
{
	const uint8_t *want = c->p->expect[idx] ? c->p->expect[idx] : zero_page;
	const uint8_t *got = page_addr(c->p, idx);

	if (memcmp(got, want, PAGE) == 0) {
		if (c->state[idx] == 0)
			c->state[idx] = 1;
		return;
	}
	/* A page already reported bad in the workload is not reported again by --verify-all. */
	if (c->state[idx] == 2)
		return;
	c->state[idx] = 2;
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
		volatile uint8_t *a = page_addr(w->c->p, w->pages[i]);
		uint64_t t0 = now_ns();
		(void)*a;
		w->lat[i] = now_ns() - t0;
		verify_page(w->c, w->pages[i]);
	}
	return NULL;
}

/* Which pages the workload touches, in touch order. */
static size_t *plan_touches(struct proc *p, size_t *count)
{
	size_t total = p->npages, t = 0;
	size_t *order;

	if (opt.fraction >= 1.0)
		t = total;
	else if (opt.fraction > 0)
		t = (size_t)((double)total * opt.fraction + 0.5);
	order = malloc((total ? total : 1) * sizeof(*order));
	if (!order)
		die(EXIT_UFFD, "pid %d: out of memory", p->pid);
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

static void map_vmas(struct proc *p)
{
	for (int i = 0; i < p->nvma; i++) {
		struct vma *v = &p->vmas[i];
		size_t len = v->end - v->start;
		void *m = mmap((void *)(uintptr_t)v->start, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (m == MAP_FAILED && errno != EEXIST)
			die(EXIT_OVERLAP, "pid %d: mmap vma %" PRIx64 "-%" PRIx64 ": %s", p->pid, v->start, v->end,
			    strerror(errno));
		/* Kernels before 4.17 treat the flag as a hint and map elsewhere. */
		if (m != MAP_FAILED && m != (void *)(uintptr_t)v->start)
			munmap(m, len);
		if (m != (void *)(uintptr_t)v->start)
			die(EXIT_OVERLAP, "pid %d: vma %" PRIx64 "-%" PRIx64 " overlaps an existing mapping", p->pid, v->start,
			    v->end);
	}
	for (int i = 0; i < p->nrun; i++) {
		struct run *r = &p->runs[i];
		if (!r->lazy)
			memcpy((void *)(uintptr_t)r->vaddr, files[r->file].base + r->off, r->npages * PAGE);
	}
}

static int make_uffd(struct proc *p)
{
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	uint64_t offered;
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);

	if (fd < 0)
		die(EXIT_UFFD, "pid %d: userfaultfd: %s", p->pid, strerror(errno));
	/* UFFDIO_API may be done once per uffd, so the probe needs a throwaway one. */
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		die(EXIT_UFFD, "pid %d: UFFDIO_API probe: %s", p->pid, strerror(errno));
	offered = api.features;
	close(fd);

	fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		die(EXIT_UFFD, "pid %d: userfaultfd: %s", p->pid, strerror(errno));
	api = (struct uffdio_api){ .api = UFFD_API, .features = offered & WANTED_FEATURES };
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		die(EXIT_UFFD, "pid %d: UFFDIO_API features 0x%llx: %s", p->pid, (unsigned long long)(offered & WANTED_FEATURES),
		    strerror(errno));
	for (int i = 0; i < p->nvma; i++) {
		struct vma *v = &p->vmas[i];
		const uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) | (1ull << _UFFDIO_WAKE);
		struct uffdio_register reg = {
			.range = { .start = v->start, .len = v->end - v->start },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
			die(EXIT_UFFD, "pid %d: UFFDIO_REGISTER %" PRIx64 "-%" PRIx64 ": %s", p->pid, v->start, v->end,
			    strerror(errno));
		if ((reg.ioctls & need) != need)
			die(EXIT_UFFD, "pid %d: vma %" PRIx64 "-%" PRIx64 " lacks COPY/ZEROPAGE/WAKE (ioctls 0x%llx)", p->pid,
			    v->start, v->end, (unsigned long long)reg.ioctls);
	}
	return fd;
}

static void report_handed(int idx)
{
	int32_t v = idx;
	if (write(ready_pipe[1], &v, sizeof(v)) != sizeof(v))
		die(EXIT_SOCKET, "ready pipe: %s", strerror(errno));
}

static void child_main(int idx, const sigset_t *oldmask)
{
	struct proc *p = &procs[idx];
	struct child c = { .p = p };
	struct worker *w;
	uint64_t *lat;
	size_t total, touched, *order, verified = 0, mismatches = 0, holes = 0;
	char line[512];
	int uffd, n;

	/* An orphaned target would keep its uffd-armed memory (and the daemon) waiting forever. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != main_pid)
		_exit(EXIT_KILLED);
	close(sigfd);
	close(ready_pipe[0]);
	signal(SIGUSR1, SIG_IGN); /* a harness signalling the whole group must not kill us */
	sigprocmask(SIG_SETMASK, oldmask, NULL);

	if (p->zombie) {
		lock_send();
		if (send_pid(-p->pid) < 0)
			die(EXIT_SOCKET, "pid %d: send zombie pid: %s", p->pid, strerror(errno));
		pthread_mutex_unlock(&shm->send_lock);
		report_handed(idx);
		_exit(0);
	}

	/* Like CRIU: khugepaged must not collapse eager pages together with still-missing ones. */
	prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
	map_vmas(p);
	c.state = calloc(p->npages ? p->npages : 1, 1);
	order = plan_touches(p, &touched);
	total = p->npages;
	lat = malloc((touched ? touched : 1) * sizeof(*lat));
	w = calloc(opt.threads, sizeof(*w));
	if (!c.state || !lat || !w)
		die(EXIT_UFFD, "pid %d: out of memory", p->pid);
	uffd = make_uffd(p);

	lock_send();
	{
		int32_t pid = p->pid;
		uint8_t merged[5];
		int rc;
		if (opt.handover == HO_MERGED) {
			memcpy(merged, &pid, 4);
			merged[4] = 0;
			rc = send_with_fd(merged, 5, uffd);
		} else {
			rc = send_pid(pid);
			if (rc == 0)
				rc = send_with_fd("", 1, uffd);
		}
		if (rc < 0)
			die(EXIT_SOCKET, "pid %d: hand-over to %s: %s", p->pid, sock_path, strerror(errno));
	}
	pthread_mutex_unlock(&shm->send_lock);
	/* The daemon's copy must be the only one: its close is what disarms the ranges. */
	close(uffd);
	close(sock);
	report_handed(idx);
	close(ready_pipe[1]);

	futex_wait_set(&shm->go);

	for (int t = 0; t < opt.threads; t++) {
		size_t lo = touched * t / opt.threads, hi = touched * (t + 1) / opt.threads;
		w[t] = (struct worker){ .c = &c, .pages = order + lo, .n = hi - lo, .lat = lat + lo, .index = t };
		if (pthread_create(&w[t].th, NULL, worker_main, &w[t]))
			die(EXIT_UFFD, "pid %d: pthread_create failed", p->pid);
	}
	for (int t = 0; t < opt.threads; t++)
		pthread_join(w[t].th, NULL);

	if (opt.wait_signal)
		futex_wait_set(&shm->usr1);
	if (opt.verify_all)
		for (size_t i = 0; i < total; i++)
			verify_page(&c, i);

	for (size_t i = 0; i < total; i++) {
		if (!c.state[i])
			continue;
		verified++;
		mismatches += c.state[i] == 2;
		holes += !p->expect[i];
	}
	qsort(lat, touched, sizeof(*lat), cmp_u64);
	n = snprintf(line, sizeof(line),
		     "{\"pid\":%d,\"hostPid\":%d,\"pages\":%zu,\"touched\":%zu,\"verified\":%zu,\"mismatches\":%zu,"
		     "\"holes\":%zu,\"latencyNs\":{\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64
		     ",\"max\":%" PRIu64 ",\"count\":%zu}}\n",
		     p->pid, (int)getpid(), total, touched, verified, mismatches, holes, percentile(lat, touched, 50),
		     percentile(lat, touched, 90), percentile(lat, touched, 99), touched ? lat[touched - 1] : 0, touched);
	if (write(1, line, n) != n) {
	}
	shm->slot[idx].verified = verified;
	shm->slot[idx].mismatches = mismatches;
	if (opt.hold_ms > 0)
		sleep_ms(opt.hold_ms);
	_exit(mismatches ? EXIT_MISMATCH : EXIT_OK);
}

/* ------------------------------------------------------------------------------------------------
 * Main process
 */

static void kill_children(void)
{
	for (int i = 0; i < nprocs; i++)
		if (procs[i].host > 0 && !procs[i].reaped)
			kill(procs[i].host, SIGKILL);
}

static int reap_all_blocking(void)
{
	int left = 0;
	for (int i = 0; i < nprocs; i++)
		if (procs[i].host > 0 && !procs[i].reaped) {
			while (waitpid(procs[i].host, &procs[i].wstatus, 0) < 0 && errno == EINTR) {
			}
			procs[i].reaped = true;
			left++;
		}
	return left;
}

/* Returns how many children were reaped. */
static int reap_some(uint64_t *last_exit)
{
	int n = 0, st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (int i = 0; i < nprocs; i++)
			if (procs[i].host == pid) {
				procs[i].wstatus = st;
				procs[i].reaped = true;
				n++;
			}
		*last_exit = now_ns();
	}
	return n;
}

static void drain_ready(int *handed)
{
	int32_t buf[64];
	ssize_t n;
	while ((n = read(ready_pipe[0], buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(int32_t); i++)
			if (buf[i] >= 0 && buf[i] < nprocs && !procs[buf[i]].handed) {
				procs[buf[i]].handed = true;
				(*handed)++;
			}
}

/* Handles pending signals; returns the number of a terminating signal, else 0. */
static int handle_signals(uint64_t *last_exit, int *reaped)
{
	struct signalfd_siginfo si;
	while (read(sigfd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			*reaped += reap_some(last_exit);
			break;
		case SIGUSR1:
			futex_set_wake(&shm->usr1);
			break;
		default:
			return si.ssi_signo;
		}
	}
	return 0;
}

static void print_summary(bool released, uint64_t release_ns, uint64_t last_exit, bool we_killed)
{
	size_t cap = 4096 + (size_t)nprocs * 64, len = 0;
	char *buf = malloc(cap);
	uint64_t verified = 0, mismatches = 0;
	bool first;

	for (int i = 0; i < nprocs; i++) {
		verified += shm->slot[i].verified;
		mismatches += shm->slot[i].mismatches;
	}
	len += snprintf(buf + len, cap - len,
			"{\"summary\":true,\"processes\":%d,\"verified\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"killed\":[",
			nprocs, verified, mismatches);
	first = true;
	for (int i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (p->reaped && WIFSIGNALED(p->wstatus) && (!we_killed || p->killed_by_other)) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"signal\":%d}", first ? "" : ",", p->pid,
					WTERMSIG(p->wstatus));
			first = false;
		}
	}
	len += snprintf(buf + len, cap - len, "],\"failed\":[");
	first = true;
	for (int i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (p->reaped && WIFEXITED(p->wstatus) && WEXITSTATUS(p->wstatus)) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"status\":%d}", first ? "" : ",", p->pid,
					WEXITSTATUS(p->wstatus));
			first = false;
		}
	}
	len += snprintf(buf + len, cap - len, "],\"zombies\":[");
	first = true;
	for (int i = 0; i < nprocs; i++)
		if (procs[i].zombie) {
			len += snprintf(buf + len, cap - len, "%s%d", first ? "" : ",", procs[i].pid);
			first = false;
		}
	if (released)
		len += snprintf(buf + len, cap - len, "],\"releaseToExitMs\":%.3f}\n",
				last_exit > release_ns ? (last_exit - release_ns) / 1e6 : 0.0);
	else
		len += snprintf(buf + len, cap - len, "],\"releaseToExitMs\":null}\n");
	if (write(1, buf, len) < 0) {
	}
	free(buf);
}

/* A setup failure in one child: nothing may run, the daemon sees EOF before RESTORE_FINISHED. */
static int abort_restore(int code)
{
	kill_children();
	reap_all_blocking();
	print_summary(false, 0, 0, true);
	return code;
}

static int child_failure_code(void)
{
	int code = 0;
	for (int i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (!p->reaped)
			continue;
		if (WIFSIGNALED(p->wstatus)) {
			p->killed_by_other = true;
			fprintf(stderr, "faultline-target: pid %d (host %d) killed by signal %d before hand-over\n", p->pid,
				(int)p->host, WTERMSIG(p->wstatus));
			if (!code)
				code = EXIT_KILLED;
		} else if (WEXITSTATUS(p->wstatus) && (!code || WEXITSTATUS(p->wstatus) == EXIT_OVERLAP)) {
			code = WEXITSTATUS(p->wstatus);
		}
	}
	return code;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: faultline-target --plan FILE [options]\n"
		"Stand-in for `criu restore --lazy-pages`: maps the plan's lazy VMAs in one process per task,\n"
		"hands each process's userfaultfd to the lazy-pages daemon, then touches and verifies pages.\n"
		"  --plan FILE               plan written by the faultline planner (required)\n"
		"  --connect-timeout-ms N    retry ENOENT/ECONNREFUSED on connect for N ms (5000)\n"
		"  --handover split|merged|bytewise  how pid and uffd are sent (split)\n"
		"  --zombie PID              hand PID over as a zombie (-pid, no fd); repeatable\n"
		"  --threads N               workload threads per process (1)\n"
		"  --pattern seq|random|stride  touch order (seq)\n"
		"  --stride K                page stride for --pattern stride (4)\n"
		"  --fraction F              fraction of each process's pages to touch, 0..1 (1)\n"
		"  --seed S                  seed for --pattern random (1)\n"
		"  --verify-all              afterwards verify every page of every VMA\n"
		"  --wait-signal             before that, wait until the main process gets SIGUSR1\n"
		"  --hold-ms N               sleep N ms before each process exits\n"
		"Exit: 0 ok, 1 mismatches, 2 usage/plan error, 3 VMA address taken (retry), 4 connect/hand-over\n"
		"failed, 5 a process was killed by a signal, 6 userfaultfd setup refused.\n");
}

static long opt_long(const char *name, const char *s, long lo, long hi)
{
	char *end;
	long v;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		die(EXIT_USAGE, "%s: bad value '%s'", name, s);
	return v;
}

static void parse_options(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "plan", required_argument, 0, 'p' },	{ "connect-timeout-ms", required_argument, 0, 'c' },
		{ "handover", required_argument, 0, 'H' }, { "zombie", required_argument, 0, 'z' },
		{ "threads", required_argument, 0, 't' }, { "pattern", required_argument, 0, 'P' },
		{ "stride", required_argument, 0, 's' },   { "fraction", required_argument, 0, 'f' },
		{ "seed", required_argument, 0, 'S' },	   { "verify-all", no_argument, 0, 'v' },
		{ "wait-signal", no_argument, 0, 'w' },	   { "hold-ms", required_argument, 0, 'h' },
		{ "help", no_argument, 0, '?' + 256 },	   { 0, 0, 0, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'p':
			opt.plan = optarg;
			break;
		case 'c':
			opt.connect_timeout_ms = opt_long("--connect-timeout-ms", optarg, 0, LONG_MAX / 1000000);
			break;
		case 'H':
			if (!strcmp(optarg, "split"))
				opt.handover = HO_SPLIT;
			else if (!strcmp(optarg, "merged"))
				opt.handover = HO_MERGED;
			else if (!strcmp(optarg, "bytewise"))
				opt.handover = HO_BYTEWISE;
			else
				die(EXIT_USAGE, "--handover: expected split, merged or bytewise, got '%s'", optarg);
			break;
		case 'z':
			opt.zombies = realloc(opt.zombies, sizeof(int) * (opt.nzombies + 1));
			opt.zombies[opt.nzombies++] = opt_long("--zombie", optarg, 1, INT_MAX);
			break;
		case 't':
			opt.threads = opt_long("--threads", optarg, 1, 1024);
			break;
		case 'P':
			if (!strcmp(optarg, "seq"))
				opt.pattern = PAT_SEQ;
			else if (!strcmp(optarg, "random"))
				opt.pattern = PAT_RANDOM;
			else if (!strcmp(optarg, "stride"))
				opt.pattern = PAT_STRIDE;
			else
				die(EXIT_USAGE, "--pattern: expected seq, random or stride, got '%s'", optarg);
			break;
		case 's':
			opt.stride = opt_long("--stride", optarg, 1, LONG_MAX);
			break;
		case 'f': {
			char *end;
			opt.fraction = strtod(optarg, &end);
			if (end == optarg || *end || !(opt.fraction >= 0 && opt.fraction <= 1))
				die(EXIT_USAGE, "--fraction: expected a number in 0..1, got '%s'", optarg);
			break;
		}
		case 'S': {
			char *end;
			errno = 0;
			opt.seed = strtoull(optarg, &end, 0);
			if (errno || end == optarg || *end)
				die(EXIT_USAGE, "--seed: bad value '%s'", optarg);
			break;
		}
		case 'v':
			opt.verify_all = true;
			break;
		case 'w':
			opt.wait_signal = true;
			break;
		case 'h':
			opt.hold_ms = opt_long("--hold-ms", optarg, 0, LONG_MAX / 1000);
			break;
		case '?' + 256:
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(EXIT_USAGE);
		}
	}
	if (optind < argc)
		die(EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
	if (!opt.plan) {
		usage(stderr);
		exit(EXIT_USAGE);
	}
}

int main(int argc, char **argv)
{
	pthread_mutexattr_t ma;
	sigset_t block, oldmask;
	size_t shm_len;
	int handed = 0, reaped = 0, sig, code;
	uint64_t release_ns = 0, last_exit = 0;

	main_pid = getpid();
	parse_options(argc, argv);
	read_plan();
	map_files();
	index_plan();

	shm_len = sizeof(*shm) + sizeof(shm->slot[0]) * nprocs;
	shm = mmap(NULL, shm_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		die(EXIT_UFFD, "mmap shared area: %s", strerror(errno));
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&shm->send_lock, &ma);
	if (pipe2(ready_pipe, O_CLOEXEC) < 0)
		die(EXIT_UFFD, "pipe: %s", strerror(errno));

	connect_daemon();

	/* From here on signals arrive through signalfd so the main loop can react to all of them. */
	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	sigprocmask(SIG_BLOCK, &block, &oldmask);
	sigfd = signalfd(-1, &block, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigfd < 0)
		die(EXIT_UFFD, "signalfd: %s", strerror(errno));

	for (int i = 0; i < nprocs; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "faultline-target: fork: %s\n", strerror(errno));
			return abort_restore(EXIT_UFFD);
		}
		if (pid == 0)
			child_main(i, &oldmask);
		procs[i].host = pid;
	}
	close(ready_pipe[1]);
	fcntl(ready_pipe[0], F_SETFL, O_NONBLOCK);

	/* Phase 1: wait for every hand-over, or for a child to fail before its own. */
	while (handed < nprocs) {
		struct pollfd pf[2] = { { .fd = ready_pipe[0], .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };
		if (poll(pf, 2, -1) < 0 && errno != EINTR)
			die(EXIT_UFFD, "poll: %s", strerror(errno));
		drain_ready(&handed);
		sig = handle_signals(&last_exit, &reaped);
		if (sig) {
			kill_children();
			reap_all_blocking();
			fprintf(stderr, "faultline-target: %s during restore, children killed\n", strsignal(sig));
			return 128 + sig;
		}
		/* A child's ready message is written before it exits, so drain again before judging. */
		drain_ready(&handed);
		for (int i = 0; i < nprocs; i++)
			if (procs[i].reaped && !procs[i].handed) {
				code = child_failure_code();
				return abort_restore(code ? code : EXIT_SOCKET);
			}
	}

	{
		uint32_t fin = RESTORE_FINISHED;
		if (send_all(&fin, sizeof(fin)) < 0) {
			fprintf(stderr, "faultline-target: send RESTORE_FINISHED to %s: %s\n", sock_path, strerror(errno));
			return abort_restore(EXIT_SOCKET);
		}
		close(sock);
	}
	release_ns = now_ns();
	futex_set_wake(&shm->go);

	/* Phase 2: the restored processes run. */
	while (reaped < nprocs) {
		struct pollfd pf = { .fd = sigfd, .events = POLLIN };
		if (poll(&pf, 1, -1) < 0 && errno != EINTR)
			die(EXIT_UFFD, "poll: %s", strerror(errno));
		sig = handle_signals(&last_exit, &reaped);
		if (sig) {
			kill_children();
			reap_all_blocking();
			fprintf(stderr, "faultline-target: %s, children killed\n", strsignal(sig));
			return 128 + sig;
		}
	}

	code = EXIT_OK;
	for (int i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (WIFSIGNALED(p->wstatus)) {
			fprintf(stderr, "faultline-target: pid %d (host %d) killed by signal %d\n", p->pid, (int)p->host,
				WTERMSIG(p->wstatus));
			code = EXIT_KILLED;
		} else if (WEXITSTATUS(p->wstatus) == EXIT_MISMATCH || shm->slot[i].mismatches) {
			if (code == EXIT_OK)
				code = EXIT_MISMATCH;
		} else if (WEXITSTATUS(p->wstatus) && code != EXIT_KILLED) {
			code = WEXITSTATUS(p->wstatus);
		}
	}
	print_summary(true, release_ns, last_exit, false);
	return code;
}
