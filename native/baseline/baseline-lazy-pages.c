/*
 * faultline-baseline: CRIU's lazy-pages daemon policy (criu/uffd.c), reimplemented small and fast in
 * C, so that benchmarks can report faultline's numbers as ratios against it.
 *
 * What is kept from CRIU on purpose, because it is what is being compared against:
 *   - one thread, one epoll over every uffd and the restore socket;
 *   - exactly ONE page copied per page fault (no fault-around), a hole fault gets one ZEROPAGE;
 *   - no background copying before RESTORE_FINISHED; afterwards a busy loop (poll timeout 0) that
 *     issues one chunk per iteration for the first process (in hand-over order) that has work left,
 *     lowest address first, with the adaptive xfer_len (64 KiB, +64 KiB per chunk, cap 4 MiB, back
 *     to 64 KiB on every fault of that process);
 *   - a process's uffd is closed as soon as it has nothing left.
 * What is not CRIU: the input is faultline's plan file (the one faultline-target reads) instead of
 * CRIU images, the pages come from read-only mmaps of the pages files, and remaining ranges live in
 * per-process sorted arrays searched by bisection instead of linked lists walked linearly.
 *
 * Usage: faultline-baseline --plan FILE [--status-fd FD] [--json]
 * Prints one JSON summary line on stdout when done (always; --json is accepted for symmetry with
 * faultline's CLI).  Exit 0 on success, 1 on any error (one line on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include "../plan/plan.h"
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ULL
#define RESTORE_FINISHED 0x52535446u
#define XFER_MIN (64ULL << 10)
#define XFER_MAX (4ULL << 20)

/* ------------------------------------------------------------------------------------------------
 * Small helpers
 */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "faultline-baseline: %s\n", msg);
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		die("out of memory");
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------------
 * Plan (the format of native/plan/plan.h, read by native/plan/plan.c)
 */

static const char *plan_path;
static char *sock_path;
static struct plan_file *files;
static int nfiles;
static struct plan_proc *pprocs;
static int npprocs;
static bool *handed; /* per plan proc: its hand-over arrived */

static void plan_fail(int line, const char *msg) __attribute__((noreturn));
static void plan_fail(int line, const char *msg)
{
	if (line > 0)
		die("plan %s:%d: %s", plan_path, line, msg);
	die("plan %s: %s", plan_path, msg);
}

static void read_plan(void)
{
	struct plan pl;
	plan_read(plan_path, &pl, plan_fail);
	plan_map_files(&pl, plan_fail);
	sock_path = pl.socket;
	files = pl.files;
	nfiles = pl.nfiles;
	pprocs = pl.procs;
	npprocs = pl.nprocs;
	handed = xrealloc(NULL, sizeof(*handed) * npprocs);
	memset(handed, 0, sizeof(*handed) * npprocs);
}

/* ------------------------------------------------------------------------------------------------
 * Remaining lazy ranges of one process: a sorted array v[head, head+n).  The slack in front of head
 * is there because the background fill eats the array from the front and a fault split can then shift
 * whichever side is shorter.  src points into the pages file's mmap at the page of `start`.
 */

struct range {
	uint64_t start, end;
	const uint8_t *src;
};

struct ranges {
	struct range *v;
	size_t head, n, cap;
};

static struct range *rfirst(struct ranges *r)
{
	return &r->v[r->head];
}

/* Bisection; returns the index (absolute) of the range holding addr, or SIZE_MAX. */
static size_t rfind(const struct ranges *r, uint64_t addr)
{
	size_t lo = r->head, hi = r->head + r->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (addr < r->v[mid].start)
			hi = mid;
		else if (addr >= r->v[mid].end)
			lo = mid + 1;
		else
			return mid;
	}
	return SIZE_MAX;
}

/* Room for one more element at the end; may move the live part to the front (indices change). */
static void rreserve(struct ranges *r)
{
	if (r->head + r->n < r->cap)
		return;
	if (r->head > r->cap / 2) {
		memmove(r->v, r->v + r->head, r->n * sizeof(*r->v));
		r->head = 0;
	} else {
		r->cap = r->cap ? r->cap * 2 : 16;
		r->v = xrealloc(r->v, r->cap * sizeof(*r->v));
	}
}

static void rpush(struct ranges *r, struct range x)
{
	rreserve(r);
	r->v[r->head + r->n++] = x;
}

/* Remove [a, b) from range i (absolute index), which must contain it. */
static void rcut(struct ranges *r, size_t i, uint64_t a, uint64_t b)
{
	struct range *x = &r->v[i];
	if (a == x->start && b == x->end) {
		if (i == r->head) {
			r->head++;
		} else {
			memmove(x, x + 1, (r->head + r->n - i - 1) * sizeof(*x));
		}
		r->n--;
		if (!r->n)
			r->head = 0;
	} else if (a == x->start) {
		x->src += b - x->start;
		x->start = b;
	} else if (b == x->end) {
		x->end = a;
	} else {
		struct range tail = { b, x->end, x->src + (b - x->start) };
		size_t before = i - r->head + 1, after = r->head + r->n - i - 1;
		x->end = a;
		if (r->head > 0 && before < after) {
			memmove(&r->v[r->head - 1], &r->v[r->head], before * sizeof(*x));
			r->head--;
			r->v[i] = tail; /* the shifted-down copy of x now sits at i-1 */
		} else {
			size_t rel = i - r->head;
			rreserve(r);
			i = r->head + rel;
			memmove(&r->v[i + 2], &r->v[i + 1], after * sizeof(*x));
			r->v[i + 1] = tail;
		}
		r->n++;
	}
}

static int cmp_range(const void *a, const void *b)
{
	const struct range *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Rare events (REMAP/REMOVE/UNMAP) rebuild the array: pieces inside [a, b) are dropped (shift == 0,
 * drop) or moved by shift (remap), then everything is re-sorted.
 */
static uint64_t rrebuild(struct ranges *r, uint64_t a, uint64_t b, bool drop, int64_t shift)
{
	struct ranges out = { 0 };
	uint64_t dropped = 0;
	for (size_t i = r->head; i < r->head + r->n; i++) {
		struct range x = r->v[i];
		uint64_t lo = x.start > a ? x.start : a, hi = x.end < b ? x.end : b;
		if (lo >= hi) {
			rpush(&out, x);
			continue;
		}
		if (x.start < lo)
			rpush(&out, (struct range){ x.start, lo, x.src });
		if (drop)
			dropped += (hi - lo) / PAGE;
		else
			rpush(&out, (struct range){ lo + shift, hi + shift, x.src + (lo - x.start) });
		if (hi < x.end)
			rpush(&out, (struct range){ hi, x.end, x.src + (hi - x.start) });
	}
	if (!drop)
		qsort(out.v + out.head, out.n, sizeof(*out.v), cmp_range);
	free(r->v);
	*r = out;
	return dropped;
}

/* ------------------------------------------------------------------------------------------------
 * Processes and statistics
 */

struct pending {
	uint64_t addr, t0;
};

struct lproc {
	int pid;
	int uffd; /* -1 once closed */
	struct ranges iovs;
	uint64_t xfer_len;
	struct pending *retry; /* faults whose ioctl said EAGAIN: served again after the next drain */
	size_t nretry, capretry;
	bool gone;
};

static struct lproc **lps; /* hand-over order, forked children appended: the background order */
static int nlps, nopen;

static struct {
	uint64_t lazy_pages, by_fault, by_fill, zero, existing, faults, copies;
	int zombies, gone;
	uint64_t *lat; /* fault service times, ns */
	size_t nlat, caplat;
	uint64_t first_handover, finished_at, last_complete;
	double cpu_at_handover_ms; /* start-up apart: the restore's own CPU is what comes after */
} st;

static int epfd;
static bool finished;

static void sample(uint64_t t0)
{
	if (st.nlat == st.caplat) {
		st.caplat = st.caplat ? st.caplat * 2 : 4096;
		st.lat = xrealloc(st.lat, st.caplat * sizeof(*st.lat));
	}
	st.lat[st.nlat++] = now_ns() - t0;
}

static void close_proc(struct lproc *p)
{
	if (p->uffd < 0)
		return;
	/* Closing is what lets the process run natively: the kernel unregisters everything. */
	epoll_ctl(epfd, EPOLL_CTL_DEL, p->uffd, NULL);
	close(p->uffd);
	p->uffd = -1;
	nopen--;
	free(p->iovs.v);
	p->iovs = (struct ranges){ 0 };
	p->nretry = 0;
}

static void proc_gone(struct lproc *p)
{
	if (!p->gone) {
		p->gone = true;
		st.gone++;
		st.last_complete = now_ns();
	}
	close_proc(p);
}

static struct lproc *add_proc(int pid, int uffd)
{
	struct lproc *p = calloc(1, sizeof(*p));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = p };
	if (!p)
		die("out of memory");
	p->pid = pid;
	p->uffd = uffd;
	p->xfer_len = XFER_MIN;
	if (fcntl(uffd, F_SETFL, fcntl(uffd, F_GETFL) | O_NONBLOCK) < 0)
		die("pid %d: uffd fcntl: %s", pid, strerror(errno));
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, uffd, &ev) < 0)
		die("pid %d: epoll_ctl: %s", pid, strerror(errno));
	lps = xrealloc(lps, sizeof(*lps) * (nlps + 1));
	lps[nlps++] = p;
	nopen++;
	return p;
}

/* One range per lazy run ∩ vma: UFFDIO_COPY may not cross a VMA (CRIU cuts at vma.end too). */
static void build_ranges(struct lproc *lp, struct plan_proc *pp)
{
	struct plan_run **runs = xrealloc(NULL, sizeof(*runs) * pp->nrun);
	int nr = 0;
	for (int i = 0; i < pp->nrun; i++)
		if (pp->runs[i].lazy)
			runs[nr++] = &pp->runs[i];
	for (int i = 1; i < nr; i++) /* insertion sort: runs are usually already in order */
		for (int j = i; j > 0 && runs[j - 1]->vaddr > runs[j]->vaddr; j--) {
			struct plan_run *t = runs[j];
			runs[j] = runs[j - 1];
			runs[j - 1] = t;
		}
	for (int i = 0; i < nr; i++) {
		struct plan_run *r = runs[i];
		uint64_t a = r->vaddr, end = r->vaddr + r->npages * PAGE;
		while (a < end) {
			/* plan.c checked that every page lies in a vma and that runs do not overlap. */
			const struct plan_vma *v = pp->vmas;
			while (a >= v->end)
				v++;
			uint64_t b = v->end < end ? v->end : end;
			rpush(&lp->iovs, (struct range){ a, b, files[r->file].base + r->off + (a - r->vaddr) });
			st.lazy_pages += (b - a) / PAGE;
			a = b;
		}
	}
	free(runs);
}

/* ------------------------------------------------------------------------------------------------
 * Copy path
 */

enum { DONE, AGAIN, GONE };

static int ioctl_result(struct lproc *p, const char *what, uint64_t addr)
{
	switch (errno) {
	case EAGAIN:
	case ENOENT: /* CRIU treats both as "retry later": the mm is changing under a pending event */
		return AGAIN;
	case ESRCH:
	case ENOSPC:
		return GONE;
	default:
		die("pid %d: %s at %" PRIx64 ": %s", p->pid, what, addr, strerror(errno));
	}
}

/* "Restored" is when the last page landed, not when the walk gets round to closing the uffd. */
static void note_complete(struct lproc *p)
{
	if (!p->iovs.n)
		st.last_complete = now_ns();
}

static void wake(struct lproc *p, uint64_t addr, uint64_t len)
{
	struct uffdio_range r = { .start = addr, .len = len };
	if (ioctl(p->uffd, UFFDIO_WAKE, &r) < 0 && errno != ESRCH && errno != ENOSPC)
		die("pid %d: UFFDIO_WAKE at %" PRIx64 ": %s", p->pid, addr, strerror(errno));
}

/* Copy pages [0, len) of range i; removes whatever got done.  *pages = pages copied or existing. */
static int copy_range(struct lproc *p, size_t i, uint64_t addr, uint64_t len, uint64_t *pages)
{
	struct range *x = &p->iovs.v[i];
	struct uffdio_copy c = { .dst = addr, .src = (uintptr_t)(x->src + (addr - x->start)), .len = len, .mode = 0 };
	int rc = DONE;
	uint64_t done = len;

	*pages = 0;
	if (ioctl(p->uffd, UFFDIO_COPY, &c) < 0) {
		done = c.copy > 0 ? (uint64_t)c.copy : 0;
		if (errno == EEXIST) {
			/* The page after the copied part is already there: count it as done. */
			st.existing++;
			if (done)
				st.copies++;
			wake(p, addr + done, PAGE);
			rcut(&p->iovs, i, addr, addr + done + PAGE);
			*pages = done / PAGE;
			note_complete(p);
			return DONE;
		}
		rc = ioctl_result(p, "UFFDIO_COPY", addr);
		if (rc == GONE)
			return GONE;
	}
	if (done) {
		st.copies++;
		rcut(&p->iovs, i, addr, addr + done);
		note_complete(p);
	}
	*pages = done / PAGE;
	return rc;
}

static int serve_fault(struct lproc *p, uint64_t addr, uint64_t t0)
{
	size_t i = rfind(&p->iovs, addr);
	uint64_t pages;
	int rc;

	if (i == SIZE_MAX) {
		struct uffdio_zeropage z = { .range = { .start = addr, .len = PAGE }, .mode = 0 };
		if (ioctl(p->uffd, UFFDIO_ZEROPAGE, &z) < 0) {
			if (errno == EEXIST) {
				wake(p, addr, PAGE);
				st.existing++;
				sample(t0);
				return DONE;
			}
			return ioctl_result(p, "UFFDIO_ZEROPAGE", addr);
		}
		st.zero++;
		sample(t0);
		return DONE;
	}
	rc = copy_range(p, i, addr, PAGE, &pages);
	if (rc == DONE) {
		st.by_fault += pages;
		sample(t0);
	}
	return rc;
}

static void fault(struct lproc *p, uint64_t addr, uint64_t t0)
{
	int rc;
	st.faults++;
	p->xfer_len = XFER_MIN;
	rc = serve_fault(p, addr, t0);
	if (rc == GONE) {
		proc_gone(p);
	} else if (rc == AGAIN) {
		if (p->nretry == p->capretry) {
			p->capretry = p->capretry ? p->capretry * 2 : 8;
			p->retry = xrealloc(p->retry, p->capretry * sizeof(*p->retry));
		}
		p->retry[p->nretry++] = (struct pending){ addr, t0 };
	}
}

/* The faulting thread sleeps until someone fills its page; the kernel will not ask twice. */
static void retry_faults(struct lproc *p)
{
	size_t n = p->nretry, kept = 0;
	for (size_t k = 0; k < n && p->uffd >= 0; k++) {
		int rc = serve_fault(p, p->retry[k].addr, p->retry[k].t0);
		if (rc == GONE) {
			proc_gone(p);
			return;
		}
		if (rc == AGAIN)
			p->retry[kept++] = p->retry[k];
	}
	p->nretry = kept;
}

static void background_chunk(struct lproc *p)
{
	struct range *x = rfirst(&p->iovs);
	uint64_t len = x->end - x->start, pages;
	int rc;

	if (len > p->xfer_len)
		len = p->xfer_len;
	rc = copy_range(p, p->iovs.head, x->start, len, &pages);
	st.by_fill += pages;
	if (rc == GONE) {
		proc_gone(p);
		return;
	}
	if (p->xfer_len < XFER_MAX)
		p->xfer_len += XFER_MIN;
}

/* ------------------------------------------------------------------------------------------------
 * uffd events
 */

static void handle_msg(struct lproc *p, const struct uffd_msg *m, uint64_t t0)
{
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		fault(p, m->arg.pagefault.address & ~(PAGE - 1), t0);
		break;
	case UFFD_EVENT_FORK: {
		/* The kernel already installed the child's uffd in our fd table. */
		struct lproc *c = add_proc(p->pid, (int)m->arg.fork.ufd);
		for (size_t i = p->iovs.head; i < p->iovs.head + p->iovs.n; i++)
			rpush(&c->iovs, p->iovs.v[i]);
		break;
	}
	case UFFD_EVENT_REMAP:
		rrebuild(&p->iovs, m->arg.remap.from, m->arg.remap.from + m->arg.remap.len, false,
			 (int64_t)(m->arg.remap.to - m->arg.remap.from));
		break;
	case UFFD_EVENT_REMOVE: {
		struct uffdio_range r = { .start = m->arg.remove.start, .len = m->arg.remove.end - m->arg.remove.start };
		/* Later faults there must be ordinary zero-fill, not ours to serve. */
		if (ioctl(p->uffd, UFFDIO_UNREGISTER, &r) < 0) {
			if (errno == ENOMEM || errno == ESRCH) {
				proc_gone(p);
				break;
			}
			die("pid %d: UFFDIO_UNREGISTER: %s", p->pid, strerror(errno));
		}
		rrebuild(&p->iovs, m->arg.remove.start, m->arg.remove.end, true, 0);
		note_complete(p);
		break;
	}
	case UFFD_EVENT_UNMAP:
		rrebuild(&p->iovs, m->arg.remove.start, m->arg.remove.end, true, 0);
		note_complete(p);
		break;
	default:
		die("pid %d: unsupported uffd event 0x%x", p->pid, m->event);
	}
}

static void drain(struct lproc *p)
{
	struct uffd_msg m;
	while (p->uffd >= 0) {
		ssize_t n = read(p->uffd, &m, sizeof(m));
		uint64_t t0 = now_ns();
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			die("pid %d: read uffd: %s", p->pid, strerror(errno));
		}
		if (n == 0)
			return;
		if (n != sizeof(m))
			die("pid %d: short uffd read (%zd bytes)", p->pid, n);
		handle_msg(p, &m, t0);
	}
}

/* ------------------------------------------------------------------------------------------------
 * Restore socket
 */

static int conn = -1;
static int got_fd = -1;

/*
 * recvmsg with a control buffer for every read: the restorer may send pid, byte and fd in one
 * message, and a read without room for SCM_RIGHTS would make the kernel drop the fd.
 * Returns bytes read (0 = EOF).
 */
static ssize_t sock_read(void *buf, size_t len, int flags)
{
	union {
		char b[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
	ssize_t n;

	do
		n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	if (mh.msg_flags & MSG_CTRUNC)
		die("restore socket: control message truncated");
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		if (c->cmsg_len != CMSG_LEN(sizeof(int)) || got_fd >= 0)
			die("restore socket: unexpected file descriptors");
		memcpy(&got_fd, CMSG_DATA(c), sizeof(int));
	}
	return n;
}

static double cpu_ms(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void sock_read_exact(void *buf, size_t len, const char *what)
{
	size_t have = 0;
	while (have < len) {
		ssize_t n = sock_read((char *)buf + have, len - have, 0);
		if (n < 0)
			die("restore socket: reading %s: %s", what, strerror(errno));
		if (n == 0)
			die("restore socket: EOF while reading %s", what);
		have += n;
	}
}

static void read_handovers(void)
{
	for (int t = 0; t < npprocs; t++) {
		int32_t pid;
		uint8_t byte;
		struct plan_proc *pp = NULL;

		sock_read_exact(&pid, sizeof(pid), "a pid");
		if (!st.first_handover) {
			st.first_handover = now_ns();
			st.cpu_at_handover_ms = cpu_ms();
		}
		for (int i = 0; i < npprocs && !pp; i++)
			if (pprocs[i].pid == (pid < 0 ? -(int64_t)pid : pid))
				pp = &pprocs[i];
		if (!pp || pid == 0)
			die("restore socket: hand-over of pid %d, which is not in the plan", pid);
		if (handed[pp - pprocs])
			die("restore socket: pid %d handed over twice", pp->pid);
		handed[pp - pprocs] = true;
		if (pid < 0) {
			if (got_fd >= 0)
				die("restore socket: zombie %d came with a file descriptor", -pid);
			st.zombies++;
			continue;
		}
		sock_read_exact(&byte, 1, "the uffd message");
		if (got_fd < 0)
			die("restore socket: pid %d: no uffd with the hand-over", pid);
		build_ranges(add_proc(pid, got_fd), pp);
		got_fd = -1;
	}
}

/* RESTORE_FINISHED, then EOF; the socket stays in epoll until EOF. */
static void handle_socket(void)
{
	static uint8_t buf[4];
	static size_t have;
	uint8_t extra;

	if (!finished) {
		ssize_t n = sock_read(buf + have, sizeof(buf) - have, MSG_DONTWAIT);
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0)
			die("restore socket: %s", strerror(errno));
		if (n == 0)
			die("restore socket: EOF before RESTORE_FINISHED");
		have += n;
		if (have < sizeof(buf))
			return;
		uint32_t v;
		memcpy(&v, buf, 4);
		if (v != RESTORE_FINISHED)
			die("restore socket: expected RESTORE_FINISHED, got 0x%08x", v);
		finished = true;
		st.finished_at = now_ns();
		return;
	}
	ssize_t n = sock_read(&extra, 1, MSG_DONTWAIT);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n != 0)
		die("restore socket: unexpected data after RESTORE_FINISHED");
	epoll_ctl(epfd, EPOLL_CTL_DEL, conn, NULL);
	close(conn);
	conn = -1;
}

/* ------------------------------------------------------------------------------------------------
 * Main
 */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double pct_us(double p)
{
	size_t k;
	if (!st.nlat)
		return 0;
	k = (size_t)(p / 100.0 * st.nlat + 0.999999);
	if (k < 1)
		k = 1;
	if (k > st.nlat)
		k = st.nlat;
	return st.lat[k - 1] / 1000.0;
}

static void print_summary(void)
{
	double cpu = cpu_ms();
	uint64_t end = st.last_complete ? st.last_complete : now_ns();
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	qsort(st.lat, st.nlat, sizeof(*st.lat), cmp_u64);
	printf("{\"ok\":true,\"processes\":%d,\"zombies\":%d,\"exitedEarly\":%d,\"lazyPages\":%" PRIu64
	       ",\"pagesByFault\":%" PRIu64 ",\"pagesByFill\":%" PRIu64 ",\"zeroPages\":%" PRIu64
	       ",\"existingPages\":%" PRIu64 ",\"faults\":%" PRIu64 ",\"copies\":%" PRIu64
	       ",\"faultServiceUs\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f,\"count\":%zu}"
	       ",\"timeToRestoredMs\":%.3f,\"fillAfterFinishedMs\":%.3f,\"workers\":1,\"poisonedPages\":0"
	       ",\"cpuMs\":%.1f,\"cpuAfterHandoverMs\":%.1f,\"maxRssKiB\":%ld}\n",
	       nlps, st.zombies, st.gone, st.lazy_pages, st.by_fault, st.by_fill, st.zero, st.existing, st.faults,
	       st.copies, pct_us(50), pct_us(90), pct_us(99), pct_us(100), st.nlat,
	       st.first_handover ? (end - st.first_handover) / 1e6 : 0.0,
	       end > st.finished_at ? (end - st.finished_at) / 1e6 : 0.0,
	       cpu, cpu - st.cpu_at_handover_ms, ru.ru_maxrss);
	fflush(stdout);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: faultline-baseline --plan FILE [--status-fd FD] [--json]\n"
		   "CRIU's lazy-pages policy (one page per fault, one background chunk per loop) in C, for\n"
		   "comparison with faultline.  Serves the restore described by the plan over its socket.\n"
		   "  --plan FILE      plan written by the faultline planner (required)\n"
		   "  --status-fd FD   write one NUL byte to FD once listening, then close it\n"
		   "  --json           accepted for symmetry; the JSON summary line is always printed\n"
		   "Exit: 0 when RESTORE_FINISHED came and every process is complete or gone; 1 on error.\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = { { "plan", required_argument, 0, 'p' },
					    { "status-fd", required_argument, 0, 's' },
					    { "json", no_argument, 0, 'j' },
					    { "help", no_argument, 0, 'h' },
					    { 0, 0, 0, 0 } };
	int status_fd = -1, c, lsock;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct epoll_event evs[64];

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		char *end;
		switch (c) {
		case 'p':
			plan_path = optarg;
			break;
		case 's':
			status_fd = (int)strtol(optarg, &end, 10);
			if (*end || end == optarg || status_fd < 0)
				die("bad --status-fd '%s'", optarg);
			break;
		case 'j':
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (!plan_path || optind != argc) {
		usage(stderr);
		return 1;
	}
	read_plan();

	if (strlen(sock_path) >= sizeof(sa.sun_path))
		die("socket path %s is too long", sock_path);
	strcpy(sa.sun_path, sock_path);
	lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lsock < 0)
		die("socket: %s", strerror(errno));
	unlink(sock_path);
	if (bind(lsock, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lsock, 10) < 0)
		die("listen on %s: %s", sock_path, strerror(errno));
	if (status_fd >= 0) {
		if (write(status_fd, "", 1) != 1)
			die("--status-fd %d: %s", status_fd, strerror(errno));
		close(status_fd);
	}
	do
		conn = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
	while (conn < 0 && errno == EINTR);
	if (conn < 0)
		die("accept on %s: %s", sock_path, strerror(errno));
	/* Exactly one connection, like CRIU; nobody else should find a socket to connect to. */
	close(lsock);
	unlink(sock_path);

	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		die("epoll_create1: %s", strerror(errno));
	read_handovers();
	{
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, conn, &ev) < 0)
			die("epoll_ctl: %s", strerror(errno));
	}

	for (;;) {
		int n = epoll_wait(epfd, evs, 64, finished ? 0 : -1);
		if (n < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		for (int k = 0; k < n; k++) {
			if (!evs[k].data.ptr)
				handle_socket();
			else
				drain(evs[k].data.ptr);
		}
		for (int i = 0; i < nlps; i++)
			if (lps[i]->nretry && lps[i]->uffd >= 0)
				retry_faults(lps[i]);
		if (!finished)
			continue;
		/* CRIU's walk: release finished processes, one chunk for the first with work left. */
		for (int i = 0; i < nlps; i++) {
			struct lproc *p = lps[i];
			if (p->uffd < 0)
				continue;
			if (!p->iovs.n && !p->nretry) {
				close_proc(p);
				continue;
			}
			if (p->iovs.n) {
				background_chunk(p);
				break;
			}
		}
		if (!nopen)
			break;
	}
	print_summary();
	return 0;
}
