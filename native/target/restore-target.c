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
 * With --script/--script-pid/--chaos each process first runs a list of steps (touch, fork, mremap,
 * grow, shrink, swap, dontneed, unmap, exit, zombie, threads-same) that make the kernel send the
 * daemon UFFD_EVENT_FORK/REMAP/REMOVE/UNMAP.  Verification follows the steps: every process keeps
 * an expected-content table keyed by current address (pages-file bytes, zeros, or absent), updated
 * by each step.  Processes forked by a `fork` step report their own line ("forkOf"); the main
 * process is their child subreaper and waits for them.
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
#include "../plan/plan.h"
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

struct vma {
	uint64_t start, end;
	size_t first; /* index of its first page in the process's page numbering */
	int line;
};

struct proc {
	int pid, ppid, nvma, nrun, line;
	struct vma *vmas;
	struct plan_run *runs; /* as read from the plan */
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
static struct plan_file *files;
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

static void plan_fail(int line, const char *msg) __attribute__((noreturn));
static void plan_fail(int line, const char *msg)
{
	if (line > 0)
		die(EXIT_USAGE, "plan %s:%d: %s", opt.plan, line, msg);
	die(EXIT_USAGE, "plan %s: %s", opt.plan, msg);
}

/* The plan's own checks (format, files, vmas and runs) are in native/plan/plan.c; its vmas come sorted. */
static void read_plan(void)
{
	struct plan pl;
	plan_read(opt.plan, &pl, plan_fail);
	plan_map_files(&pl, plan_fail);
	sock_path = pl.socket;
	files = pl.files;
	nfiles = pl.nfiles;
	nprocs = pl.nprocs;
	procs = calloc(nprocs, sizeof(*procs));
	if (!procs)
		die(EXIT_USAGE, "out of memory reading the plan");
	for (int i = 0; i < nprocs; i++) {
		const struct plan_proc *pp = &pl.procs[i];
		struct proc *p = &procs[i];
		p->pid = pp->pid;
		p->ppid = pp->ppid;
		p->nvma = pp->nvma;
		p->nrun = pp->nrun;
		p->line = pp->line;
		p->runs = pp->runs;
		p->vmas = calloc(pp->nvma ? pp->nvma : 1, sizeof(*p->vmas));
		if (!p->vmas)
			die(EXIT_USAGE, "out of memory reading the plan");
		for (int j = 0; j < pp->nvma; j++)
			p->vmas[j] = (struct vma){ .start = pp->vmas[j].start, .end = pp->vmas[j].end, .line = pp->vmas[j].line };
	}
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
		for (int j = 0; j < p->nvma; j++) {
			p->vmas[j].first = p->npages;
			p->npages += (p->vmas[j].end - p->vmas[j].start) / PAGE;
		}
		p->expect = calloc(p->npages ? p->npages : 1, sizeof(*p->expect));
		if (!p->expect)
			die(EXIT_USAGE, "out of memory indexing pid %d", p->pid);
		for (int j = 0; j < p->nrun; j++) {
			const struct plan_run *r = &p->runs[j];
			const struct plan_file *pf = &files[r->file];
			for (uint64_t k = 0; k < r->npages; k++) {
				uint64_t a = r->vaddr + k * PAGE;
				const struct vma *v = find_vma(p, a);
				p->expect[v->first + (a - v->start) / PAGE] = pf->base + r->off + k * PAGE;
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

/* ------------------------------------------------------------------------------------------------
 * Scripted steps (--script, --script-pid, --chaos)
 *
 * A page index I means the address <first VMA start> + I*4096 (so it may name pages of later VMAs);
 * sI means page I of the process's spare area: an unregistered PROT_NONE reservation of
 * max(pages, 256) pages placed right after the last VMA (or where the kernel puts it if that is
 * taken), made only when steps are given.  Holes that steps leave inside the VMAs or the spare area
 * are reserved again with PROT_NONE, so nothing else ever lands there.
 */

enum skind { S_TOUCH, S_FORK, S_MREMAP, S_GROW, S_SHRINK, S_SWAP, S_DONTNEED, S_UNMAP, S_EXIT, S_ZOMBIE, S_TSAME, S_NKINDS };
static const char *const skind_name[S_NKINDS] = { "touch", "fork",   "mremap", "grow", "shrink",      "swap",
						  "dontneed", "unmap", "exit", "zombie", "threads-same" };

struct pidx {
	uint64_t v;
	bool spare;
};

struct step {
	enum skind k;
	struct pidx a, b, c, d; /* ranges [a,b) and (swap) [c,d); mremap target in c */
	uint64_t n; /* grow/shrink page count */
};

struct script {
	struct step *s;
	size_t n, cap;
};

static struct script all_script;
static struct {
	int pid;
	struct script sc;
} *pid_scripts;
static int npid_scripts;
static bool chaos_on;
static uint64_t chaos_seed, chaos_n;
static const char *latency_prefix;
static bool scripting; /* any of --script, --script-pid, --chaos */

/* Forked children (step `fork`) register here so that the main process can wait for them. */
#define MAX_FORKED 4096
struct fslot {
	int32_t host, plan_idx, parent_host, pad;
	uint64_t verified, mismatches;
};
static struct fshared {
	uint32_t n;
	struct fslot s[MAX_FORKED];
} *fsh;

static void script_push(struct script *sc, const struct step *st)
{
	if (sc->n == sc->cap) {
		sc->cap = sc->cap ? sc->cap * 2 : 16;
		sc->s = realloc(sc->s, sc->cap * sizeof(*sc->s));
		if (!sc->s)
			die(EXIT_USAGE, "out of memory");
	}
	sc->s[sc->n++] = *st;
}

static bool parse_pidx(const char **s, struct pidx *out)
{
	char *end;
	const char *p = *s;
	out->spare = false;
	if (*p == 's') {
		out->spare = true;
		p++;
	}
	if (*p < '0' || *p > '9')
		return false;
	errno = 0;
	out->v = strtoull(p, &end, 10);
	if (errno || out->v > (1ull << 40))
		return false;
	*s = end;
	return true;
}

static bool parse_range(const char **s, struct pidx *a, struct pidx *b)
{
	if (!parse_pidx(s, a) || **s != '-')
		return false;
	(*s)++;
	if (!parse_pidx(s, b))
		return false;
	return a->spare == b->spare && a->v < b->v;
}

static bool parse_count(const char **s, uint64_t *n)
{
	char *end;
	if (**s < '0' || **s > '9')
		return false;
	errno = 0;
	*n = strtoull(*s, &end, 10);
	if (errno || *n == 0 || *n > (1ull << 40))
		return false;
	*s = end;
	return true;
}

static void parse_script(const char *what, const char *text, struct script *sc)
{
	const char *s = text;
	if (!*s)
		die(EXIT_USAGE, "%s: empty step list", what);
	for (;;) {
		struct step st;
		const char *start = s;
		size_t len = strcspn(s, ":,");
		int k;
		bool ok = true;
		memset(&st, 0, sizeof(st));
		for (k = 0; k < S_NKINDS; k++)
			if (strlen(skind_name[k]) == len && !strncmp(s, skind_name[k], len))
				break;
		if (k == S_NKINDS)
			die(EXIT_USAGE, "%s: unknown step '%.*s' (see --help)", what, (int)len, s);
		st.k = k;
		s += len;
		switch (st.k) {
		case S_FORK:
		case S_EXIT:
		case S_ZOMBIE:
			break;
		default:
			if (*s++ != ':') {
				ok = false;
				break;
			}
			ok = parse_range(&s, &st.a, &st.b);
			if (!ok)
				break;
			if (st.k == S_MREMAP)
				ok = *s++ == '>' && parse_pidx(&s, &st.c);
			else if (st.k == S_GROW)
				ok = *s++ == '+' && parse_count(&s, &st.n);
			else if (st.k == S_SHRINK)
				ok = *s++ == '-' && parse_count(&s, &st.n) && st.n < st.b.v - st.a.v;
			else if (st.k == S_SWAP)
				ok = *s++ == ',' && parse_range(&s, &st.c, &st.d) && st.d.v - st.c.v == st.b.v - st.a.v;
		}
		if (!ok || (*s && *s != ','))
			die(EXIT_USAGE, "%s: bad step '%.*s' (see --help)", what, (int)strcspn(start + len + 1, ",") + (int)len + 1,
			    start);
		script_push(sc, &st);
		if (!*s)
			break;
		s++;
	}
}

static int fmt_pidx(char *buf, size_t cap, struct pidx x)
{
	return snprintf(buf, cap, "%s%" PRIu64, x.spare ? "s" : "", x.v);
}

static size_t fmt_step(char *buf, size_t cap, const struct step *st)
{
	size_t n = snprintf(buf, cap, "%s", skind_name[st->k]);
	if (st->k == S_FORK || st->k == S_EXIT || st->k == S_ZOMBIE)
		return n;
	n += snprintf(buf + n, cap - n, ":");
	n += fmt_pidx(buf + n, cap - n, st->a);
	n += snprintf(buf + n, cap - n, "-");
	n += fmt_pidx(buf + n, cap - n, st->b);
	if (st->k == S_MREMAP) {
		n += snprintf(buf + n, cap - n, ">");
		n += fmt_pidx(buf + n, cap - n, st->c);
	} else if (st->k == S_GROW) {
		n += snprintf(buf + n, cap - n, "+%" PRIu64, st->n);
	} else if (st->k == S_SHRINK) {
		n += snprintf(buf + n, cap - n, "-%" PRIu64, st->n);
	} else if (st->k == S_SWAP) {
		n += snprintf(buf + n, cap - n, ",");
		n += fmt_pidx(buf + n, cap - n, st->c);
		n += snprintf(buf + n, cap - n, "-");
		n += fmt_pidx(buf + n, cap - n, st->d);
	}
	return n;
}

/* ------------------------------------------------------------------------------------------------
 * Expected-content table, keyed by current address
 */

struct ent {
	uint64_t addr;
	const uint8_t *want; /* its bytes in a pages file, NULL: must read as zeros */
	uint32_t seg; /* pages of one seg that are address-contiguous lie in one kernel VMA */
	uint8_t state; /* 0 not verified, 1 ok, 2 mismatch */
	uint8_t touched; /* first touch already measured */
};

struct table {
	struct ent *e;
	size_t n, cap;
	uint32_t next_seg;
	/* Verification results of pages that left the table (unmapped, overwritten, zapped). */
	uint64_t ret_verified, ret_mismatches, ret_holes;
};

static void tbl_reserve(struct table *t, size_t n)
{
	if (n <= t->cap)
		return;
	t->cap = n + n / 2 + 16;
	t->e = realloc(t->e, t->cap * sizeof(*t->e));
	if (!t->e)
		die(EXIT_UFFD, "out of memory (page table)");
}

static void tbl_copy(struct table *dst, const struct table *src)
{
	*dst = *src;
	dst->e = malloc((src->cap ? src->cap : 1) * sizeof(*src->e));
	if (!dst->e)
		die(EXIT_UFFD, "out of memory (page table)");
	memcpy(dst->e, src->e, src->n * sizeof(*src->e));
}

/* Index of the first entry with addr >= a. */
static size_t tbl_lb(const struct table *t, uint64_t a)
{
	size_t lo = 0, hi = t->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (t->e[mid].addr < a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void tbl_span(const struct table *t, uint64_t a, uint64_t b, size_t *lo, size_t *hi)
{
	*lo = tbl_lb(t, a);
	*hi = tbl_lb(t, b);
}

static bool tbl_full(const struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	return hi - lo == (b - a) / PAGE;
}

static bool tbl_one_seg(const struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	if (hi - lo != (b - a) / PAGE)
		return false;
	for (size_t i = lo + 1; i < hi; i++)
		if (t->e[i].seg != t->e[lo].seg)
			return false;
	return true;
}

static bool tbl_empty(const struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	return hi == lo;
}

static void tbl_retire(struct table *t, size_t lo, size_t hi)
{
	for (size_t i = lo; i < hi; i++)
		if (t->e[i].state) {
			t->ret_verified++;
			t->ret_mismatches += t->e[i].state == 2;
			t->ret_holes += !t->e[i].want;
		}
}

static void tbl_remove(struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	tbl_retire(t, lo, hi);
	memmove(t->e + lo, t->e + hi, (t->n - hi) * sizeof(*t->e));
	t->n -= hi - lo;
}

/* Inserts n address-sorted entries into a range that holds none. */
static void tbl_insert(struct table *t, const struct ent *src, size_t n)
{
	size_t at;
	if (!n)
		return;
	tbl_reserve(t, t->n + n);
	at = tbl_lb(t, src[0].addr);
	memmove(t->e + at + n, t->e + at, (t->n - at) * sizeof(*t->e));
	memcpy(t->e + at, src, n * sizeof(*src));
	t->n += n;
}

/* Gives every same-seg run inside [a,b) a fresh seg (the range became a VMA of its own). */
static void tbl_reseg(struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	uint32_t prev_old = 0, cur = 0;
	tbl_span(t, a, b, &lo, &hi);
	for (size_t i = lo; i < hi; i++) {
		if (i == lo || t->e[i].seg != prev_old || t->e[i].addr != t->e[i - 1].addr + PAGE)
			cur = t->next_seg++;
		prev_old = t->e[i].seg;
		t->e[i].seg = cur;
	}
}

static void tbl_move(struct table *t, uint64_t a, uint64_t b, uint64_t to)
{
	size_t lo, hi, n;
	struct ent *tmp;
	uint32_t seg = t->next_seg++;
	tbl_span(t, a, b, &lo, &hi);
	n = hi - lo;
	tmp = malloc((n ? n : 1) * sizeof(*tmp));
	if (!tmp)
		die(EXIT_UFFD, "out of memory (page table)");
	memcpy(tmp, t->e + lo, n * sizeof(*tmp));
	memmove(t->e + lo, t->e + hi, (t->n - hi) * sizeof(*t->e));
	t->n -= n;
	tbl_remove(t, to, to + (b - a)); /* MREMAP_FIXED unmaps whatever was there */
	for (size_t i = 0; i < n; i++) {
		tmp[i].addr = tmp[i].addr - a + to;
		tmp[i].seg = seg;
	}
	tbl_insert(t, tmp, n);
	free(tmp);
}

static void tbl_zap(struct table *t, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(t, a, b, &lo, &hi);
	tbl_retire(t, lo, hi);
	for (size_t i = lo; i < hi; i++) {
		t->e[i].want = NULL;
		t->e[i].state = 0;
		t->e[i].touched = 0;
	}
	/* The daemon unregisters a removed range, which splits the VMA. */
	tbl_reseg(t, a, b);
}

static void tbl_grow(struct table *t, uint64_t b, uint64_t n)
{
	size_t at = tbl_lb(t, b);
	uint32_t seg = at ? t->e[at - 1].seg : 0;
	struct ent *tmp = calloc(n, sizeof(*tmp));
	if (!tmp)
		die(EXIT_UFFD, "out of memory (page table)");
	for (uint64_t i = 0; i < n; i++) {
		tmp[i].addr = b + i * PAGE;
		tmp[i].seg = seg;
	}
	tbl_insert(t, tmp, n);
	free(tmp);
}

/* ------------------------------------------------------------------------------------------------
 * Restored process
 */

struct pctx {
	struct proc *p;
	int idx; /* index in procs */
	struct table t;
	uint64_t base; /* first VMA start: page index 0 */
	uint64_t spare, spare_len; /* spare area (bytes), 0 if none */
	uint64_t *log; /* first-touch latencies in touch order */
	size_t nlog, caplog;
	size_t touched;
	atomic_int details;
	uint64_t ev[S_NKINDS];
	int depth; /* 0: a planned process; 1: forked by a `fork` step */
	int fork_slot;
	int nforks;
	bool exited_early;
};

static const uint8_t zero_page[PAGE];

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void log_lat(struct pctx *c, uint64_t ns)
{
	if (c->nlog == c->caplog) {
		c->caplog = c->caplog ? c->caplog * 2 : 1024;
		c->log = realloc(c->log, c->caplog * sizeof(*c->log));
		if (!c->log)
			die(EXIT_UFFD, "pid %d: out of memory", c->p->pid);
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

struct worker {
	struct pctx *c;
	size_t *pages; /* table indexes */
	size_t n;
	uint64_t *lat;
	uint8_t *first;
	int index;
	pthread_t th;
	/* threads-same */
	pthread_barrier_t *bar;
	size_t lo;
	uint8_t *bad;
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

/* threads-same: every thread reads the same pages, starting together. */
static void *same_main(void *arg)
{
	struct worker *w = arg;
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
		struct plan_run *r = &p->runs[i];
		if (!r->lazy)
			memcpy((void *)(uintptr_t)r->vaddr, files[r->file].base + r->off, r->npages * PAGE);
	}
}

#define RESERVE_FLAGS (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)

static void map_spare(struct pctx *c)
{
	struct proc *p = c->p;
	uint64_t pages = p->npages > 256 ? p->npages : 256;
	uint64_t want = p->nvma ? p->vmas[p->nvma - 1].end : 0;
	void *m = MAP_FAILED;
	c->spare_len = pages * PAGE;
	if (want)
		m = mmap((void *)(uintptr_t)want, c->spare_len, PROT_NONE, RESERVE_FLAGS | MAP_FIXED_NOREPLACE, -1, 0);
	if (m != MAP_FAILED && m != (void *)(uintptr_t)want) {
		munmap(m, c->spare_len);
		m = MAP_FAILED;
	}
	if (m == MAP_FAILED)
		m = mmap(NULL, c->spare_len, PROT_NONE, RESERVE_FLAGS, -1, 0);
	if (m == MAP_FAILED)
		die(EXIT_UFFD, "pid %d: reserve spare area: %s", p->pid, strerror(errno));
	c->spare = (uintptr_t)m;
}

static size_t tbl_lb(const struct table *t, uint64_t a);

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

/* ------------------------------------------------------------------------------------------------
 * Step execution
 */

static uint64_t paddr(const struct pctx *c, struct pidx x)
{
	return (x.spare ? c->spare : c->base) + x.v * PAGE;
}

static struct pidx to_pidx(const struct pctx *c, uint64_t a)
{
	if (c->spare_len && a >= c->spare && a < c->spare + c->spare_len)
		return (struct pidx){ .v = (a - c->spare) / PAGE, .spare = true };
	return (struct pidx){ .v = (a - c->base) / PAGE };
}

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

/* A free (unmapped by us) run of len bytes in the spare area, searched from `from`, wrapping. */
static uint64_t spare_gap(const struct table *t, uint64_t spare, uint64_t spare_len, uint64_t len, uint64_t from)
{
	for (int pass = 0; pass < 2; pass++) {
		uint64_t x = pass ? spare : from, end = pass ? from + len : spare + spare_len;
		if (end > spare + spare_len)
			end = spare + spare_len;
		while (x + len <= end) {
			size_t lo, hi;
			tbl_span(t, x, x + len, &lo, &hi);
			if (lo == hi)
				return x;
			x = t->e[hi - 1].addr + PAGE;
		}
	}
	return 0;
}

static void touch_range(struct pctx *c, uint64_t a, uint64_t b)
{
	size_t lo, hi;
	tbl_span(&c->t, a, b, &lo, &hi);
	for (size_t k = lo; k < hi; k++) {
		struct ent *e = &c->t.e[k];
		volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)e->addr;
		uint64_t t0 = now_ns(), dt;
		(void)*p;
		dt = now_ns() - t0;
		if (!e->touched)
			log_lat(c, dt);
		e->touched = 1;
		c->touched++;
		verify_ent(c, e);
	}
}

static void threads_same(struct pctx *c, size_t i, const struct step *st, uint64_t a, uint64_t b)
{
	int nt = opt.threads;
	size_t lo, hi, n;
	struct worker *w = calloc(nt, sizeof(*w));
	pthread_barrier_t bar;
	tbl_span(&c->t, a, b, &lo, &hi);
	n = hi - lo;
	if (!w)
		die(EXIT_UFFD, "pid %d: out of memory", c->p->pid);
	pthread_barrier_init(&bar, NULL, nt);
	for (int k = 0; k < nt; k++) {
		w[k] = (struct worker){ .c = c, .n = n, .lo = lo, .bar = &bar, .index = k };
		w[k].lat = calloc(n ? n : 1, sizeof(uint64_t));
		w[k].bad = calloc(n ? n : 1, 1);
		if (!w[k].lat || !w[k].bad)
			die(EXIT_UFFD, "pid %d: out of memory", c->p->pid);
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
		if (!e->touched)
			log_lat(c, mx);
		e->touched = 1;
		c->touched++;
		verify_ent(c, e);
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
}

static void finish(struct pctx *c) __attribute__((noreturn));

static void do_fork(struct pctx *c, size_t i, const struct step *st)
{
	uint32_t slot;
	pid_t pid;
	if (c->depth > 0)
		return; /* forked children do not fork again (depth 1) */
	slot = __atomic_fetch_add(&fsh->n, 1, __ATOMIC_ACQ_REL);
	if (slot >= MAX_FORKED)
		step_fail(c, i, st, "more than %d forked processes", MAX_FORKED);
	fsh->s[slot].plan_idx = c->idx;
	fsh->s[slot].parent_host = getpid();
	pid = fork();
	if (pid < 0) {
		__atomic_store_n(&fsh->s[slot].host, -1, __ATOMIC_RELEASE);
		step_fail(c, i, st, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		__atomic_store_n(&fsh->s[slot].host, (int32_t)getpid(), __ATOMIC_RELEASE);
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
	__atomic_store_n(&fsh->s[slot].host, (int32_t)pid, __ATOMIC_RELEASE);
	c->ev[S_FORK]++;
	c->nforks++;
}

static void run_steps(struct pctx *c, const struct script *sc)
{
	for (size_t i = 0; i < sc->n; i++) {
		const struct step *st = &sc->s[i];
		uint64_t a = paddr(c, st->a), b = paddr(c, st->b);
		switch (st->k) {
		case S_TOUCH:
			if (!tbl_full(&c->t, a, b))
				step_fail(c, i, st, "range is not mapped");
			touch_range(c, a, b);
			c->ev[S_TOUCH]++;
			break;
		case S_TSAME:
			if (!tbl_full(&c->t, a, b))
				step_fail(c, i, st, "range is not mapped");
			threads_same(c, i, st, a, b);
			c->ev[S_TSAME]++;
			break;
		case S_FORK:
			do_fork(c, i, st);
			break;
		case S_MREMAP:
			do_move(c, i, st, a, b, paddr(c, st->c));
			break;
		case S_SWAP: {
			uint64_t x = paddr(c, st->c), y = paddr(c, st->d), tmp;
			if (x < b && a < y)
				step_fail(c, i, st, "the two ranges overlap");
			if (!tbl_one_seg(&c->t, a, b) || !tbl_one_seg(&c->t, x, y))
				step_fail(c, i, st, "a range is not mapped as one VMA");
			tmp = spare_gap(&c->t, c->spare, c->spare_len, b - a, c->spare);
			if (!tmp)
				step_fail(c, i, st, "no room in the spare area for the temporary copy");
			do_move(c, i, st, a, b, tmp);
			do_move(c, i, st, x, y, a);
			do_move(c, i, st, tmp, tmp + (b - a), x);
			c->ev[S_SWAP]++;
			break;
		}
		case S_GROW: {
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
			break;
		}
		case S_SHRINK: {
			uint64_t e = b - st->n * PAGE;
			if (!tbl_one_seg(&c->t, a, b))
				step_fail(c, i, st, "range is not mapped as one VMA");
			if (mremap((void *)(uintptr_t)a, b - a, e - a, 0) == MAP_FAILED)
				step_fail(c, i, st, "mremap: %s", strerror(errno));
			c->ev[S_MREMAP]++;
			c->ev[S_SHRINK]++;
			tbl_remove(&c->t, e, b);
			rereserve(c, e, b);
			break;
		}
		case S_DONTNEED:
			if (!tbl_full(&c->t, a, b))
				step_fail(c, i, st, "range is not mapped");
			if (madvise((void *)(uintptr_t)a, b - a, MADV_DONTNEED) < 0)
				step_fail(c, i, st, "madvise: %s", strerror(errno));
			c->ev[S_DONTNEED]++;
			tbl_zap(&c->t, a, b);
			break;
		case S_UNMAP:
			if (!ours(c, a, b))
				step_fail(c, i, st, "range is outside the VMAs and the spare area");
			if (munmap((void *)(uintptr_t)a, b - a) < 0)
				step_fail(c, i, st, "munmap: %s", strerror(errno));
			c->ev[S_UNMAP]++;
			tbl_remove(&c->t, a, b);
			rereserve(c, a, b);
			break;
		case S_EXIT:
			c->ev[S_EXIT]++;
			c->exited_early = true;
			finish(c);
		case S_ZOMBIE: {
			pid_t z = fork();
			if (z < 0)
				step_fail(c, i, st, "fork: %s", strerror(errno));
			if (z == 0)
				_exit(0);
			c->ev[S_ZOMBIE]++;
			break;
		}
		case S_NKINDS:
			break;
		}
	}
}

/* ------------------------------------------------------------------------------------------------
 * Chaos: random steps, generated up front against a copy of the table so they stay valid.
 */

/* A random mapped run of at most maxlen pages (one VMA if one_seg); false if the table is empty. */
static bool pick_run(const struct table *t, uint64_t *s, uint64_t maxlen, bool one_seg, uint64_t *a, uint64_t *b)
{
	size_t i, j, want;
	if (!t->n)
		return false;
	i = splitmix64(s) % t->n;
	want = 1 + splitmix64(s) % maxlen;
	for (j = i + 1; j < t->n && j - i < want; j++)
		if (t->e[j].addr != t->e[j - 1].addr + PAGE || (one_seg && t->e[j].seg != t->e[i].seg))
			break;
	*a = t->e[i].addr;
	*b = t->e[j - 1].addr + PAGE;
	return true;
}

static void gen_chaos(struct pctx *c, struct script *sc)
{
	struct table t;
	uint64_t s = chaos_seed ^ ((uint64_t)c->p->pid * 0xd1342543de82ef95ull);
	int forks = 0;

	splitmix64(&s);
	tbl_copy(&t, &c->t);
	/* Simulate the layout effects of the scripted steps that run first. */
	for (size_t i = 0; i < sc->n; i++) {
		const struct step *st = &sc->s[i];
		uint64_t a = paddr(c, st->a), b = paddr(c, st->b);
		switch (st->k) {
		case S_MREMAP:
			tbl_move(&t, a, b, paddr(c, st->c));
			break;
		case S_SWAP: {
			uint64_t x = paddr(c, st->c), y = paddr(c, st->d);
			uint64_t tmp = spare_gap(&t, c->spare, c->spare_len, b - a, c->spare);
			tbl_move(&t, a, b, tmp);
			tbl_move(&t, x, y, a);
			tbl_move(&t, tmp, tmp + (b - a), x);
			break;
		}
		case S_GROW:
			tbl_grow(&t, b, st->n);
			break;
		case S_SHRINK:
			tbl_remove(&t, b - st->n * PAGE, b);
			break;
		case S_DONTNEED:
			tbl_zap(&t, a, b);
			break;
		case S_UNMAP:
			tbl_remove(&t, a, b);
			break;
		case S_FORK:
			forks++;
			break;
		default:
			break;
		}
	}
	for (uint64_t n = 0; n < chaos_n; n++) {
		struct step st;
		uint64_t r = splitmix64(&s) % 100, a, b;
		memset(&st, 0, sizeof(st));
		if (r < 30)
			st.k = S_TOUCH;
		else if (r < 50)
			st.k = S_MREMAP;
		else if (r < 63)
			st.k = S_DONTNEED;
		else if (r < 73)
			st.k = S_UNMAP;
		else if (r < 78)
			st.k = S_FORK;
		else
			st.k = S_TSAME;
		if (st.k == S_FORK && forks >= 2)
			st.k = S_TOUCH;
		if (st.k == S_UNMAP && t.n < 64)
			st.k = S_TOUCH;
		if (st.k == S_FORK) {
			forks++;
			script_push(sc, &st);
			continue;
		}
		if (!pick_run(&t, &s, st.k == S_UNMAP ? 4 : st.k == S_TSAME ? 16 : 64, st.k == S_MREMAP, &a, &b))
			break;
		st.a = to_pidx(c, a);
		st.b = to_pidx(c, b);
		if (st.k == S_MREMAP) {
			uint64_t from = c->spare + (splitmix64(&s) % (c->spare_len / PAGE)) * PAGE;
			uint64_t to = spare_gap(&t, c->spare, c->spare_len, b - a, from);
			if (!to) {
				st.k = S_TOUCH;
			} else {
				st.c = to_pidx(c, to);
				tbl_move(&t, a, b, to);
			}
		} else if (st.k == S_DONTNEED) {
			tbl_zap(&t, a, b);
		} else if (st.k == S_UNMAP) {
			tbl_remove(&t, a, b);
		}
		script_push(sc, &st);
	}
	free(t.e);
}

static void print_script_line(struct pctx *c, const char *tag, const struct script *sc)
{
	size_t cap = 256 + sc->n * 48, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		return;
	len += snprintf(buf, cap, "faultline-target: %s pid %d host %d: --script-pid %d:", tag, c->p->pid, (int)getpid(),
			c->p->pid);
	for (size_t i = 0; i < sc->n; i++) {
		if (i)
			buf[len++] = ',';
		len += fmt_step(buf + len, cap - len, &sc->s[i]);
	}
	if (!sc->n)
		len += snprintf(buf + len, cap - len, "(none)");
	buf[len++] = '\n';
	if (write(2, buf, len) < 0) {
	}
	free(buf);
}

static void write_latency_file(struct pctx *c, char *path, size_t cap)
{
	int fd;
	size_t off = 0, len = c->nlog * sizeof(uint64_t);
	snprintf(path, cap, "%s.%d.lat", latency_prefix, (int)getpid());
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

static void finish(struct pctx *c)
{
	struct proc *p = c->p;
	size_t verified = c->t.ret_verified, mismatches = c->t.ret_mismatches, holes = c->t.ret_holes, count = c->nlog;
	uint64_t *lat = malloc((count ? count : 1) * sizeof(*lat));
	char line[8192], path[PATH_MAX], esc[2 * PATH_MAX];
	int n;

	for (size_t i = 0; i < c->t.n; i++) {
		if (!c->t.e[i].state)
			continue;
		verified++;
		mismatches += c->t.e[i].state == 2;
		holes += !c->t.e[i].want;
	}
	if (latency_prefix)
		write_latency_file(c, path, sizeof(path));
	if (!lat)
		die(EXIT_UFFD, "pid %d: out of memory", p->pid);
	memcpy(lat, c->log, count * sizeof(*lat));
	qsort(lat, count, sizeof(*lat), cmp_u64);
	n = snprintf(line, sizeof(line),
		     "{\"pid\":%d,\"hostPid\":%d,\"pages\":%zu,\"touched\":%zu,\"verified\":%zu,\"mismatches\":%zu,"
		     "\"holes\":%zu,\"latencyNs\":{\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64
		     ",\"max\":%" PRIu64 ",\"count\":%zu}",
		     p->pid, (int)getpid(), c->t.n, c->touched, verified, mismatches, holes, percentile(lat, count, 50),
		     percentile(lat, count, 90), percentile(lat, count, 99), count ? lat[count - 1] : 0, count);
	if (c->depth > 0)
		n += snprintf(line + n, sizeof(line) - n, ",\"forkOf\":%d,\"parentHostPid\":%d", p->pid,
			      (int)fsh->s[c->fork_slot].parent_host);
	if (c->exited_early)
		n += snprintf(line + n, sizeof(line) - n, ",\"exitedEarly\":true");
	if (latency_prefix) {
		json_escape(esc, sizeof(esc), path);
		n += snprintf(line + n, sizeof(line) - n, ",\"latencyFile\":\"%s\"", esc);
	}
	if (scripting)
		n += snprintf(line + n, sizeof(line) - n,
			      ",\"events\":{\"fork\":%" PRIu64 ",\"mremap\":%" PRIu64 ",\"dontneed\":%" PRIu64
			      ",\"unmap\":%" PRIu64 ",\"exit\":%" PRIu64 ",\"touch\":%" PRIu64 ",\"threadsSame\":%" PRIu64
			      ",\"zombie\":%" PRIu64 ",\"grow\":%" PRIu64 ",\"shrink\":%" PRIu64 ",\"swap\":%" PRIu64 "}",
			      c->ev[S_FORK], c->ev[S_MREMAP], c->ev[S_DONTNEED], c->ev[S_UNMAP], c->ev[S_EXIT], c->ev[S_TOUCH],
			      c->ev[S_TSAME], c->ev[S_ZOMBIE], c->ev[S_GROW], c->ev[S_SHRINK], c->ev[S_SWAP]);
	n += snprintf(line + n, sizeof(line) - n, "}\n");
	if (write(1, line, n) != n) {
	}
	if (c->depth > 0) {
		fsh->s[c->fork_slot].verified = verified;
		fsh->s[c->fork_slot].mismatches = mismatches;
	} else {
		shm->slot[c->idx].verified = verified;
		shm->slot[c->idx].mismatches = mismatches;
	}
	if (opt.hold_ms > 0)
		sleep_ms(opt.hold_ms);
	_exit(mismatches ? EXIT_MISMATCH : EXIT_OK);
}

static const struct script *script_for(int pid)
{
	for (int i = npid_scripts - 1; i >= 0; i--)
		if (pid_scripts[i].pid == pid)
			return &pid_scripts[i].sc;
	return all_script.n ? &all_script : NULL;
}

static void child_main(int idx, const sigset_t *oldmask)
{
	struct proc *p = &procs[idx];
	struct pctx *c = calloc(1, sizeof(*c));
	struct worker *w;
	uint64_t *lat;
	uint8_t *first;
	size_t touched, *order;
	struct script sc = { 0 };
	int uffd;

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
	if (!c)
		die(EXIT_UFFD, "pid %d: out of memory", p->pid);
	c->p = p;
	c->idx = idx;
	c->base = p->nvma ? p->vmas[0].start : 0;

	/* Like CRIU: khugepaged must not collapse eager pages together with still-missing ones. */
	prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
	map_vmas(p);
	if (scripting)
		map_spare(c);
	tbl_reserve(&c->t, p->npages);
	for (int i = 0; i < p->nvma; i++) {
		struct vma *v = &p->vmas[i];
		for (uint64_t a = v->start; a < v->end; a += PAGE) {
			size_t k = c->t.n++;
			c->t.e[k] = (struct ent){ .addr = a, .want = p->expect[v->first + (a - v->start) / PAGE], .seg = i };
		}
	}
	c->t.next_seg = p->nvma;
	if (scripting) {
		const struct script *base = script_for(p->pid);
		if (base)
			for (size_t i = 0; i < base->n; i++)
				script_push(&sc, &base->s[i]);
		if (chaos_on) {
			gen_chaos(c, &sc);
			print_script_line(c, "chaos", &sc);
		}
	}
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

	run_steps(c, &sc);

	/* The normal workload, over the pages mapped now (the planned pages if no step ran). */
	order = plan_touches(p, c->t.n, &touched);
	lat = malloc((touched ? touched : 1) * sizeof(*lat));
	first = malloc(touched ? touched : 1);
	w = calloc(opt.threads, sizeof(*w));
	if (!lat || !first || !w)
		die(EXIT_UFFD, "pid %d: out of memory", p->pid);
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

	if (opt.wait_signal)
		futex_wait_set(&shm->usr1);
	if (opt.verify_all || c->depth > 0)
		for (size_t i = 0; i < c->t.n; i++)
			verify_ent(c, &c->t.e[i]);
	finish(c);
}

/* ------------------------------------------------------------------------------------------------
 * Main process
 */

/* Main-side state of the processes forked by `fork` steps (their slots are in fsh). */
static bool freaped[MAX_FORKED];
static int fwstatus[MAX_FORKED];

static int forked_count(void)
{
	uint32_t n = fsh ? __atomic_load_n(&fsh->n, __ATOMIC_ACQUIRE) : 0;
	return n > MAX_FORKED ? MAX_FORKED : (int)n;
}

static bool forked_all_reaped(void)
{
	int n = forked_count();
	for (int i = 0; i < n; i++)
		if (!freaped[i] && __atomic_load_n(&fsh->s[i].host, __ATOMIC_ACQUIRE) > 0)
			return false;
	return true;
}

static void kill_children(void)
{
	for (int i = 0; i < nprocs; i++)
		if (procs[i].host > 0 && !procs[i].reaped)
			kill(procs[i].host, SIGKILL);
	for (int i = 0; i < forked_count(); i++)
		if (fsh->s[i].host > 0 && !freaped[i])
			kill(fsh->s[i].host, SIGKILL);
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
	/* Forked processes are ours (child subreaper) once their parent is gone, which it is now. */
	for (int i = 0; i < forked_count(); i++)
		if (fsh->s[i].host > 0 && !freaped[i]) {
			while (waitpid(fsh->s[i].host, &fwstatus[i], 0) < 0 && errno == EINTR) {
			}
			freaped[i] = true;
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
		/* Otherwise a forked process, or a `zombie` step's child handed to us (ignored). */
		for (int i = 0; i < forked_count(); i++)
			if (fsh->s[i].host == pid && !freaped[i]) {
				fwstatus[i] = st;
				freaped[i] = true;
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
	size_t cap = 4096 + (size_t)nprocs * 64 + (size_t)forked_count() * 96, len = 0;
	char *buf = malloc(cap);
	uint64_t verified = 0, mismatches = 0;
	bool first;

	for (int i = 0; i < nprocs; i++) {
		verified += shm->slot[i].verified;
		mismatches += shm->slot[i].mismatches;
	}
	for (int i = 0; i < forked_count(); i++) {
		verified += fsh->s[i].verified;
		mismatches += fsh->s[i].mismatches;
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
	for (int i = 0; i < forked_count() && len + 200 < cap; i++)
		if (freaped[i] && WIFSIGNALED(fwstatus[i]) && !we_killed) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"hostPid\":%d,\"forkOf\":%d,\"signal\":%d}",
					first ? "" : ",", procs[fsh->s[i].plan_idx].pid, (int)fsh->s[i].host,
					procs[fsh->s[i].plan_idx].pid, WTERMSIG(fwstatus[i]));
			first = false;
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
	for (int i = 0; i < forked_count() && len + 200 < cap; i++)
		if (freaped[i] && WIFEXITED(fwstatus[i]) && WEXITSTATUS(fwstatus[i])) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"hostPid\":%d,\"forkOf\":%d,\"status\":%d}",
					first ? "" : ",", procs[fsh->s[i].plan_idx].pid, (int)fsh->s[i].host,
					procs[fsh->s[i].plan_idx].pid, WEXITSTATUS(fwstatus[i]));
			first = false;
		}
	len += snprintf(buf + len, cap - len, "],\"zombies\":[");
	first = true;
	for (int i = 0; i < nprocs; i++)
		if (procs[i].zombie) {
			len += snprintf(buf + len, cap - len, "%s%d", first ? "" : ",", procs[i].pid);
			first = false;
		}
	if (scripting)
		len += snprintf(buf + len, cap - len, "],\"forked\":%d", forked_count());
	else
		len += snprintf(buf + len, cap - len, "]");
	if (released)
		len += snprintf(buf + len, cap - len, ",\"releaseToExitMs\":%.3f}\n",
				last_exit > release_ns ? (last_exit - release_ns) / 1e6 : 0.0);
	else
		len += snprintf(buf + len, cap - len, ",\"releaseToExitMs\":null}\n");
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
		"  --latency-file PREFIX     each process (forked ones too) writes its first-touch latencies\n"
		"                            (u64 ns little-endian, one per page, touch order) to PREFIX.<hostpid>.lat\n"
		"                            and names it in its JSON line as \"latencyFile\"\n"
		"  --script STEPS            steps every process runs after the release, before the workload\n"
		"  --script-pid PID:STEPS    steps for plan pid PID only (overrides --script); repeatable\n"
		"  --chaos SEED:N            N random steps per process (touch, mremap into the spare area,\n"
		"                            dontneed, unmap 1-4 pages, fork (<= 2 per tree), threads-same),\n"
		"                            splitmix64(SEED, pid); run after any --script steps; the full list\n"
		"                            is printed to stderr as a replayable --script-pid argument\n"
		"Steps (comma-separated). I, J, T are page indexes: I = <first VMA start> + I*4096 (may name\n"
		"later VMAs); sI = page I of the spare area, an unregistered PROT_NONE reservation of\n"
		"max(pages,256) pages right after the last VMA (or where the kernel puts it). Ranges I-J are\n"
		"half-open [I,J) and must be mapped; mremap/grow/shrink/swap ranges must lie in one VMA.\n"
		"  touch:I-J                 read and verify pages I..J-1\n"
		"  threads-same:I-J          all --threads threads read I..J-1 together (barrier), verifying\n"
		"  fork                      fork(); the child runs the remaining steps, the workload and a\n"
		"                            --verify-all of all its memory, and prints its own line with\n"
		"                            \"forkOf\"; a forked child skips further fork steps (depth 1)\n"
		"  mremap:I-J>T              move I..J-1 to T (MREMAP_MAYMOVE|FIXED); T in the VMAs or spare\n"
		"  grow:I-J+N                grow in place by N pages (J must be the VMA end; new pages read 0)\n"
		"  shrink:I-J-N              shrink in place: unmaps the last N pages of I..J-1\n"
		"  swap:I-J,K-L              swap two equal-size ranges through a spare-area temporary\n"
		"  dontneed:I-J              MADV_DONTNEED; afterwards the pages must read as zeros\n"
		"  unmap:I-J                 munmap; no longer verified\n"
		"  exit                      print the line (\"exitedEarly\":true) and exit now\n"
		"  zombie                    fork a child that exits at once and is never waited for\n"
		"With steps the JSON lines carry \"events\" (executed steps by kind; \"mremap\" counts mremap\n"
		"calls) and the summary \"forked\"; a failing step exits the process with status 2.\n"
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
		{ "script", required_argument, 0, 'x' },   { "script-pid", required_argument, 0, 'X' },
		{ "latency-file", required_argument, 0, 'L' }, { "chaos", required_argument, 0, 'C' },
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
		case 'x':
			all_script.n = 0;
			parse_script("--script", optarg, &all_script);
			scripting = true;
			break;
		case 'X': {
			char *end;
			long pid;
			errno = 0;
			pid = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end != ':' || pid < 1 || pid > INT_MAX)
				die(EXIT_USAGE, "--script-pid: expected PID:STEPS, got '%s'", optarg);
			pid_scripts = realloc(pid_scripts, sizeof(*pid_scripts) * (npid_scripts + 1));
			pid_scripts[npid_scripts].pid = (int)pid;
			memset(&pid_scripts[npid_scripts].sc, 0, sizeof(pid_scripts[npid_scripts].sc));
			parse_script("--script-pid", end + 1, &pid_scripts[npid_scripts].sc);
			npid_scripts++;
			scripting = true;
			break;
		}
		case 'L':
			if (!*optarg)
				die(EXIT_USAGE, "--latency-file: empty prefix");
			latency_prefix = optarg;
			break;
		case 'C': {
			char *end;
			errno = 0;
			chaos_seed = strtoull(optarg, &end, 0);
			if (errno || end == optarg || *end != ':')
				die(EXIT_USAGE, "--chaos: expected SEED:N, got '%s'", optarg);
			chaos_n = (uint64_t)opt_long("--chaos", end + 1, 0, 1000000);
			chaos_on = true;
			scripting = true;
			break;
		}
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
	index_plan();
	for (int i = 0; i < npid_scripts; i++) {
		bool found = false;
		for (int j = 0; j < nprocs; j++)
			found |= procs[j].pid == pid_scripts[i].pid;
		if (!found)
			die(EXIT_USAGE, "--script-pid %d: no such pid in the plan", pid_scripts[i].pid);
	}

	shm_len = sizeof(*shm) + sizeof(shm->slot[0]) * nprocs;
	shm = mmap(NULL, shm_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		die(EXIT_UFFD, "mmap shared area: %s", strerror(errno));
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&shm->send_lock, &ma);
	if (scripting) {
		fsh = mmap(NULL, sizeof(*fsh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (fsh == MAP_FAILED)
			die(EXIT_UFFD, "mmap shared area: %s", strerror(errno));
		/* Processes forked by `fork` steps outlive their parents: they must come back to us. */
		if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
			die(EXIT_UFFD, "PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	}
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
	while (reaped < nprocs || !forked_all_reaped()) {
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
	for (int i = 0; i < forked_count(); i++) {
		if (!freaped[i])
			continue;
		if (WIFSIGNALED(fwstatus[i])) {
			fprintf(stderr, "faultline-target: pid %d (forked, host %d) killed by signal %d\n",
				procs[fsh->s[i].plan_idx].pid, (int)fsh->s[i].host, WTERMSIG(fwstatus[i]));
			code = EXIT_KILLED;
		} else if (WEXITSTATUS(fwstatus[i]) == EXIT_MISMATCH || fsh->s[i].mismatches) {
			if (code == EXIT_OK)
				code = EXIT_MISMATCH;
		} else if (WEXITSTATUS(fwstatus[i]) && code != EXIT_KILLED) {
			code = WEXITSTATUS(fwstatus[i]);
		}
	}
	print_summary(true, release_ns, last_exit, false);
	return code;
}
