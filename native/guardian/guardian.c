/*
 * faultline-guardian: the restored tree's last line of defence against silent zero pages.
 *
 * A closed userfaultfd turns every page it still had missing into a zero page. The daemon holds the
 * uffds, so a daemon that dies without fail-stop (SIGKILL, OOM kill, a crash in native code) would
 * leave the restored processes running on zeros. The guardian, started by `faultline lazy-pages`
 * before it says it is ready, holds a duplicate of every uffd and a pidfd of every restored process
 * it is told about, so that those pages stay missing (a faulting thread just waits) for as long as
 * the guardian lives. When its control socket reaches EOF without the daemon having said DONE (or
 * STOPPED: it fail-stopped by itself), the guardian fail-stops the tree:
 *   1. it reads the registered ranges of every process it can name (/proc/PID/smaps, "um"),
 *   2. SIGKILLs them and every descendant it can find, until no new one appears,
 *   3. UFFDIO_POISONs those ranges (pages already present answer EEXIST and are stepped over), so a
 *      task it could not name (a forked child whose fork event the daemon never read) gets SIGBUS
 *      instead of zeros,
 *   4. waits for the named processes to be gone, and only then lets go of the uffds.
 * Before all that it takes the hand-overs the daemon never read. The guardian is the one that accepts
 * on lazy-pages.socket: it keeps each connection and passes a copy to the daemon (CONN), so no
 * connection ever exists that only the daemon holds, and a uffd still in a connection's buffer when
 * the daemon dies is not closed with it (that would be zeros) but becomes one more process to stop.
 * (The daemon reads a connection by peeking first and handing each uffd over as ADD before it
 * consumes the message, so every uffd is always either in the socket or with the guardian.)
 *
 * Control protocol (SOCK_SEQPACKET, one message per record, little endian u32 fields):
 *   ADD     {1, id, hostPid}       + SCM_RIGHTS [uffd, pidfd?]   a process handed over
 *   CHILD   {2, id, parentId}      + SCM_RIGHTS [uffd]           a forked child's uffd (no pid)
 *   RELEASE {3, id, what}                                        what 0: process id is complete or
 *                                                                gone, close its uffd; what 1: the
 *                                                                daemon closed socket id
 *   DONE    {4, 0, 0}                                            restored cleanly: exit 0
 *   STOPPED {5, 0, 0}                                            the daemon fail-stopped the tree
 *                                                                itself (killed, poisoned): exit 0
 *   HOLD    {6, id, 0}             + SCM_RIGHTS [socket]         the listening socket: the guardian
 *                                                                accepts on it from now on
 * and the other way, guardian to daemon:
 *   CONN    {7, id, listening id}  + SCM_RIGHTS [connection]     a connection it accepted on the
 *                                                                socket HOLD named (RELEASE {3, id, 1}
 *                                                                when the daemon closes it; RELEASE
 *                                                                of a HOLD id drops that socket)
 *   TAINT    {8, id, 0}                                          an mremap, MADV_DONTNEED or munmap
 *                                                                was read for id (sent by the drain)
 *   VPID     {9, id, vpid}                                       id is pid vpid of pstree.img
 *   FINISHED {10, 0, 0}                                          the restorer's hand-over is over
 *   DROP     {14, host pid, 0}                                   an engine's restore of that process
 *                                                                ended (complete, or fail-stopped and
 *                                                                poisoned): forget it entirely (an
 *                                                                engine's other restores go on)
 *   WATCH    {15, 0, 0}             + SCM_RIGHTS [memfd]          (only with RESUME_PATH) a page whose
 *                                                                first u32 counts the daemon's drains
 *                                                                between a read and their TAINT/CHILD
 *                                                                sends: non-zero at its death, the
 *                                                                tree is not resumable
 *   RESUMED  {11, 0, 0}                                          a resumed daemon has taken every
 *                                                                process (ADD/CHILD/VPID again, by its
 *                                                                own fd numbers): the entries from
 *                                                                before go
 *
 * Resumption (RESUME_PATH and RECOVER_MS given, from --recover-timeout): a daemon that dies after the
 * hand-over finished, while no process it still served had its map changed by an event (TAINT: the
 * change lived only in the dead daemon; images alone would put data where the process now has zeros),
 * is not fail-stopped at once. The tree waits: a thread that faults on a missing page blocks, and
 * nothing reads zeros. The guardian listens on RESUME_PATH (0600, SOCK_SEQPACKET) for up to
 * RECOVER_MS; a peer that is root or the guardian's own uid gets, for each process,
 *   PROC {12, id, parent id or 0, vpid, host pid} + SCM_RIGHTS [uffd, pidfd?]
 * then END {13, count, 0, 0, 0}, and that connection becomes the control socket of the new daemon.
 * Nobody in time: the fail-stop above.
 *
 * usage: faultline-guardian CONTROL_FD DAEMON_PID [LOG_FILE|- [RESUME_PATH RECOVER_MS]]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
	struct uffdio_range range;
	uint64_t mode;
	int64_t updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

enum {
	MSG_ADD = 1,
	MSG_CHILD = 2,
	MSG_RELEASE = 3,
	MSG_DONE = 4,
	MSG_STOPPED = 5,
	MSG_HOLD = 6,
	MSG_CONN = 7,
	MSG_TAINT = 8,
	MSG_VPID = 9,
	MSG_FINISHED = 10,
	MSG_RESUMED = 11,
	MSG_PROC = 12,
	MSG_END = 13,
	MSG_DROP = 14,
	MSG_WATCH = 15,
};

/* Ids of connections the guardian accepted: apart from the daemon's fd numbers (HOLD ids). */
#define CONN_ID_BIT 0x40000000u

/* The hand-over sockets: the listening ones (one per restore an engine serves), and the restorers'
 * connections accepted on them. */
#define MAX_SOCKS 1024
static struct {
	uint32_t id;
	int fd;
	int listening;
} socks[MAX_SOCKS];
static int nsocks;

static void drop_sock(int i)
{
	close(socks[i].fd);
	socks[i] = socks[--nsocks];
}


struct range {
	uint64_t start, end;
};

struct proc {
	uint32_t id;
	uint32_t parent; /* CHILD: the id it was forked from */
	int host_pid;    /* 0: unknown (forked child) */
	int uffd;
	int pidfd;
	struct range *ranges;
	size_t nranges;
	int live;
	/* RELEASE: complete or gone, its uffd closed; its id (a uffd number) may name a later process */
	int released;
	int vpid;    /* its pid in pstree.img (VPID; a child has its parent's): which images it needs */
	int tainted; /* TAINT, or forked from a tainted process: its map lives only in the daemon */
	/* handed to a resuming daemon, which sends it again by its own fd number: the entry goes at
	 * RESUMED; ids of stale entries are the dead daemon's fd numbers, so find() never matches them */
	int stale;
	unsigned gen; /* the daemon generation that sent it (0: the first daemon) */
};

static struct proc *procs;
static size_t nprocs, cap;
static int daemon_pid;
static unsigned generation;
/* FINISHED: the restorer handed everything over (a resumed daemon inherits it) */
static int finished;
/* WATCH: the daemon's count of drains between their read() and their sends (NULL: not given) */
static uint32_t *reading_word;
static const char *resume_path;
static long recover_ms;
/* Ids the guardian gives processes it found itself (never a daemon uffd number). */
static uint32_t next_own_id = 0x80000000u;
/* The daemon's -o log (appended to, in criu's "Error (who): …" shape, so tools that grep criu's
 * logs for Error see the guardian's reason too), or -1. */
static int log_fd = -1;

static void vsay(const char *level, const char *fmt, va_list ap)
{
	char line[512];
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	if (n < 0)
		return;
	if (n > (int)sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	/* one write: the line is not interleaved with the daemon's */
	if (write(2, line, n) < 0) {
		/* stderr gone (a daemon detached with -d): the log below may still be there */
	}
	if (log_fd >= 0) {
		char entry[600];
		const char *msg = strncmp(line, "faultline-guardian: error: ", 27) == 0 ? line + 27 : strncmp(line, "faultline-guardian: ", 20) == 0 ? line + 20 : line;
		int m = snprintf(entry, sizeof entry, "%d: %s (faultline-guardian): %.*s", (int)getpid(), level, n - (int)(msg - line), msg);
		if (m > 0 && write(log_fd, entry, m > (int)sizeof entry - 1 ? (int)sizeof entry - 1 : m) < 0) {
			/* nowhere left to say it */
		}
	}
}

/* An error line ("faultline-guardian: error: …" on stderr, "Error (faultline-guardian)" in the log). */
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay("Error", fmt, ap);
	va_end(ap);
}

/* Not an error: tools that grep criu's logs for "Error" must not see a restore that recovers. */
static void warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay("Warn", fmt, ap);
	va_end(ap);
}

static struct proc *find(uint32_t id)
{
	for (size_t i = 0; i < nprocs; i++)
		if (procs[i].live && !procs[i].released && !procs[i].stale && procs[i].id == id)
			return &procs[i];
	return NULL;
}

static struct proc *add(void)
{
	if (nprocs == cap) {
		size_t ncap = cap ? cap * 2 : 64;
		struct proc *p = realloc(procs, ncap * sizeof *p);
		if (!p)
			return NULL;
		procs = p;
		cap = ncap;
	}
	struct proc *p = &procs[nprocs++];
	memset(p, 0, sizeof *p);
	p->uffd = p->pidfd = -1;
	p->live = 1;
	p->gen = generation;
	return p;
}

static void release(struct proc *p)
{
	if (p->uffd >= 0)
		close(p->uffd);
	if (p->pidfd >= 0)
		close(p->pidfd);
	free(p->ranges);
	p->ranges = NULL;
	p->uffd = p->pidfd = -1;
	p->live = 0;
}

/* One recvmsg with room for up to maxfds descriptors (SCM_RIGHTS) and the sender's credentials;
 * recvmsg's result. *pid is the sender's pid (0 when no SCM_CREDENTIALS came). */
static ssize_t recv_fds(int sock, void *buf, size_t len, int flags, int *fds, int maxfds, int *nfds, int *pid)
{
	union {
		char space[CMSG_SPACE(sizeof(int) * 64) + CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} control;
	struct iovec iov = { buf, len };
	struct msghdr msg = { 0 };
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = control.space;
	msg.msg_controllen = sizeof control.space;
	ssize_t n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
	*nfds = 0;
	*pid = 0;
	if (n < 0)
		return n;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET)
			continue;
		if (c->cmsg_type == SCM_CREDENTIALS) {
			struct ucred cred;
			memcpy(&cred, CMSG_DATA(c), sizeof cred);
			*pid = cred.pid;
		} else if (c->cmsg_type == SCM_RIGHTS) {
			int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (int i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (*nfds < maxfds)
					fds[(*nfds)++] = fd;
				else
					close(fd); /* more than a message of ours carries: not kept */
			}
		}
	}
	return n;
}

/* One control message; 0 on EOF, -1 on error, 1 otherwise. Sets *type. */
static int recv_one(int sock, uint32_t *type)
{
	uint32_t hdr[3];
	int fds[4], nfds, pid;
	ssize_t n = recv_fds(sock, hdr, sizeof hdr, 0, fds, 4, &nfds, &pid);
	if (n == 0)
		return 0;
	if (n < 0) /* ECONNRESET: the daemon died with a CONN unread, as good as EOF */
		return errno == EINTR ? 1 : errno == ECONNRESET ? 0 : -1;
	*type = n == (ssize_t)sizeof hdr ? hdr[0] : 0;
	struct proc *p;
	switch (*type) {
	case MSG_ADD:
	case MSG_CHILD:
		if (nfds < 1 || !(p = add())) {
			say("faultline-guardian: error: %s without a uffd, or out of memory", *type == MSG_ADD ? "ADD" : "CHILD");
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return -1;
		}
		p->id = hdr[1];
		p->uffd = fds[0];
		if (*type == MSG_ADD) {
			p->host_pid = (int)hdr[2];
			p->pidfd = nfds > 1 ? fds[1] : -1;
		} else {
			size_t at = p - procs;
			struct proc *parent = find(hdr[2]);
			p = &procs[at];
			p->parent = hdr[2];
			/* its layout at the fork is its parent's, and so are its images and any change to it */
			p->vpid = parent ? parent->vpid : 0;
			p->tainted = parent ? parent->tainted : 1;
		}
		for (int i = *type == MSG_ADD ? 2 : 1; i < nfds; i++)
			close(fds[i]);
		return 1;
	case MSG_RELEASE:
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		if (hdr[2] == 1) {
			for (int i = 0; i < nsocks; i++)
				if (socks[i].id == hdr[1]) {
					drop_sock(i);
					break;
				}
			return 1;
		}
		/* Every page is in place (or it is gone): the uffd copy goes, so the guardian never pins
		 * an mm, but the pidfd stays: a tree missing some of its processes is not a restore anyone
		 * wants to keep running, so a later fail-stop kills it too (as the daemon's own does). */
		if ((p = find(hdr[1]))) {
			if (p->uffd >= 0)
				close(p->uffd);
			p->uffd = -1;
			p->released = 1;
		}
		return 1;
	case MSG_DONE:
	case MSG_STOPPED:
		return 1;
	case MSG_DROP:
		for (size_t i = 0; i < nprocs; i++)
			if (procs[i].live && procs[i].host_pid == (int)hdr[1])
				release(&procs[i]);
		return 1;
	case MSG_TAINT:
	case MSG_VPID:
		if ((p = find(hdr[1]))) {
			if (*type == MSG_TAINT)
				p->tainted = 1;
			else
				p->vpid = (int)hdr[2];
		}
		return 1;
	case MSG_FINISHED:
		finished = 1;
		return 1;
	case MSG_RESUMED:
		for (size_t i = 0; i < nprocs; i++)
			if (procs[i].live && procs[i].stale)
				release(&procs[i]);
		return 1;
	case MSG_WATCH:
		if (nfds >= 1) {
			void *w = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fds[0], 0);
			if (w != MAP_FAILED) {
				/* a resumed daemon's word replaces the dead one's (which counted nothing at its end,
				 * or it would not have been resumed) */
				if (reading_word)
					munmap(reading_word, 4096);
				reading_word = w;
			}
		}
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return 1;
	case MSG_HOLD:
		if (nfds < 1 || nsocks == MAX_SOCKS) {
			say("faultline-guardian: error: HOLD without a socket, or more than %d sockets", MAX_SOCKS);
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return -1;
		}
		socks[nsocks].id = hdr[1];
		socks[nsocks].fd = fds[0];
		socks[nsocks].listening = 1;
		nsocks++;
		for (int i = 1; i < nfds; i++)
			close(fds[i]);
		return 1;
	default:
		say("faultline-guardian: error: control message of %zd bytes, type %u: not from faultline", n, n >= 4 ? hdr[0] : 0);
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		return -1;
	}
}

/* The ranges registered with userfaultfd for missing pages ("um" in VmFlags) of a live process. */
static void read_ranges(struct proc *p)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/smaps", p->host_pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	char line[512];
	uint64_t start = 0, end = 0;
	size_t cap_r = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long long a, b;
		if (sscanf(line, "%llx-%llx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			start = a;
			end = b;
			continue;
		}
		if (strncmp(line, "VmFlags:", 8) != 0 || !strstr(line, " um"))
			continue;
		if (p->nranges == cap_r) {
			size_t ncap = cap_r ? cap_r * 2 : 16;
			struct range *r = realloc(p->ranges, ncap * sizeof *r);
			if (!r)
				break;
			p->ranges = r;
			cap_r = ncap;
		}
		p->ranges[p->nranges++] = (struct range){ start, end };
	}
	fclose(f);
}

static int parent_of(int pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *rp = strrchr(buf, ')');
	int ppid;
	if (!rp || sscanf(rp + 2, "%*c %d", &ppid) != 1)
		return -1;
	return ppid;
}

/* SIGKILLs every descendant of the killed set, repeatedly, until a scan finds no new one. */
static int kill_descendants(int *killed, int nkilled, int max)
{
	for (int round = 0; round < 50; round++) {
		int found = 0;
		DIR *d = opendir("/proc");
		if (!d)
			break;
		struct dirent *e;
		while ((e = readdir(d))) {
			int pid = atoi(e->d_name);
			if (pid <= 0)
				continue;
			int known = 0;
			for (int i = 0; i < nkilled && !known; i++)
				known = killed[i] == pid;
			if (known)
				continue;
			int ppid = parent_of(pid);
			for (int i = 0; i < nkilled; i++) {
				if (killed[i] != ppid || pid == daemon_pid || pid == getpid())
					continue;
				kill(pid, SIGKILL);
				if (nkilled < max)
					killed[nkilled++] = pid;
				found++;
				break;
			}
		}
		closedir(d);
		if (!found)
			break;
	}
	return nkilled;
}

/* Reads the events the daemon never read: a FORK event carries a child's uffd to poison too. */
static void take_unread_forks(struct proc *p)
{
	struct pollfd pfd = { p->uffd, POLLIN, 0 };
	for (int i = 0; i < 4096 && poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN); i++) {
		struct uffd_msg m;
		if (read(p->uffd, &m, sizeof m) != sizeof m)
			break;
		if (m.event != UFFD_EVENT_FORK)
			continue;
		size_t at = p - procs;
		struct proc *c = add();
		p = &procs[at]; /* add() may move the array */
		if (!c) {
			close((int)m.arg.fork.ufd);
			continue;
		}
		c->uffd = (int)m.arg.fork.ufd;
		c->id = next_own_id++;
		c->parent = p->id;
	}
}

/* Reads what the daemon never read of one restorer connection: each uffd in it, with its sender's
 * pid (SCM_CREDENTIALS; the restorer sends each process's uffd from that process), becomes one more
 * process to stop. Returns how many. */
static int drain_conn(int fd)
{
	int taken = 0;
	for (int round = 0; round < 65536; round++) {
		char buf[4096];
		int pid, fds[64], nfds;
		if (recv_fds(fd, buf, sizeof buf, MSG_DONTWAIT, fds, 64, &nfds, &pid) <= 0)
			break; /* EOF (shut for reading: nothing more can come), or an error */
		for (int i = 0; i < nfds; i++) {
			struct proc *p = add();
			if (!p) {
				close(fds[i]);
				continue;
			}
			p->id = next_own_id++;
			p->uffd = fds[i];
			p->host_pid = pid;
			p->pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
			taken++;
		}
	}
	return taken;
}

static uint64_t poison_range(int uffd, uint64_t start, uint64_t end)
{
	uint64_t poisoned = 0;
	struct timespec pause = { 0, 1000000 };
	int again = 0;
	while (start < end) {
		struct uffdio_poison u = { { start, end - start }, 0, 0 };
		int rc = ioctl(uffd, UFFDIO_POISON, &u);
		uint64_t done = u.updated > 0 ? (uint64_t)u.updated : 0;
		poisoned += done / 4096;
		start += done;
		if (rc == 0)
			break;
		if (errno == EEXIST) {
			start += 4096; /* present: its data is real */
		} else if (errno == EAGAIN && done == 0 && again++ < 100) {
			nanosleep(&pause, NULL); /* an event nobody has read yet: take_unread_forks drains them */
		} else if (errno != EAGAIN) {
			break; /* gone (ESRCH), unregistered (ENOENT/EINVAL): nothing left to protect */
		}
	}
	return poisoned;
}

/* Signals every process the guardian can name (through its pidfd where it has one). */
static void signal_named(int sig)
{
	for (size_t i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (!p->live || p->host_pid <= 0)
			continue;
		if (p->pidfd >= 0)
			syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0);
		else
			kill(p->host_pid, sig);
	}
}

static void fail_stop(const char *why)
{
	int max = 4096 + (int)nprocs;
	int *killed = calloc(max, sizeof(int));
	int nkilled = 0;
	/* Stopped first: a stopped process can neither fork again nor exit and leave its forked
	 * children (uffd known, pid not) to be reparented out of reach of the descendant scan below. */
	signal_named(SIGSTOP);
	/* the ranges next: once a process is dead its smaps is gone */
	for (size_t i = 0; i < nprocs; i++)
		if (procs[i].live && procs[i].host_pid > 0)
			read_ranges(&procs[i]);
	/* their descendants while they are stopped (so still their parents), then them */
	for (size_t i = 0; i < nprocs; i++)
		if (procs[i].live && procs[i].host_pid > 0 && killed && nkilled < max)
			killed[nkilled++] = procs[i].host_pid;
	if (killed)
		nkilled = kill_descendants(killed, nkilled, max);
	signal_named(SIGKILL);
	size_t named = nprocs;
	for (size_t i = 0; i < named; i++)
		if (procs[i].live && procs[i].uffd >= 0)
			take_unread_forks(&procs[i]);
	uint64_t poisoned = 0;
	for (size_t i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (!p->live || p->uffd < 0)
			continue;
		struct proc *src = p;
		/* a child without a pid: its layout is its parent's at the fork */
		for (int hops = 0; src && src->nranges == 0 && src->host_pid <= 0 && hops < 64; hops++)
			src = find(src->parent);
		if (!src)
			continue;
		for (size_t k = 0; k < src->nranges; k++)
			poisoned += poison_range(p->uffd, src->ranges[k].start, src->ranges[k].end);
	}
	/* hold the uffds until the processes we killed are gone (at most 5 s) */
	for (int waited = 0; waited < 5000; waited += 10) {
		int alive = 0;
		for (size_t i = 0; i < nprocs; i++) {
			struct proc *p = &procs[i];
			if (!p->live || p->pidfd < 0)
				continue;
			struct pollfd pfd = { p->pidfd, POLLIN, 0 };
			if (poll(&pfd, 1, 0) == 0)
				alive++;
		}
		if (!alive)
			break;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	say("faultline-guardian: error: %s: killed %d restored processes, poisoned %llu pages still missing; no page was left to read as zeros",
	    why, nkilled, (unsigned long long)poisoned);
	for (size_t i = 0; i < nprocs; i++)
		if (procs[i].live)
			release(&procs[i]);
	free(killed);
}

/* One control record, with up to two descriptors; 0 when all of it went. */
static int send_record(int fd, const uint32_t *rec, size_t len, const int *fds, int nfds)
{
	union {
		char space[CMSG_SPACE(sizeof(int) * 2)];
		struct cmsghdr align;
	} control;
	struct iovec iov = { (void *)rec, len };
	struct msghdr msg = { 0 };
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (nfds > 0) {
		msg.msg_control = control.space;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	return sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* Accepts every pending connection on the listening socket: the guardian keeps one copy and the
 * daemon gets the other (CONN). A daemon that is gone by now is noticed by the control socket's EOF. */
static void accept_pending(int sock)
{
	for (int i = 0; i < nsocks; i++) {
		if (!socks[i].listening)
			continue;
		for (;;) {
			int c = accept4(socks[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (c < 0)
				break;
			if (nsocks == MAX_SOCKS) {
				close(c); /* one restorer per restore: a flood of others is refused here */
				continue;
			}
			socks[nsocks].id = (uint32_t)c | CONN_ID_BIT;
			socks[nsocks].fd = c;
			socks[nsocks].listening = 0;
			nsocks++;
			uint32_t hdr[3] = { MSG_CONN, (uint32_t)c | CONN_ID_BIT, socks[i].id };
			if (send_record(sock, hdr, sizeof hdr, &c, 1) < 0) {
				/* the daemon is gone: the EOF that follows fail-stops, this connection included */
			}
		}
	}
}

/*
 * The hand-overs the daemon never read. A restorer still in the listening socket's backlog is
 * accepted too, the listening socket is closed so that no later restorer connects, and every
 * connection is shut for reading, so that the restorer's next send fails (criu then aborts the
 * restore) while what is queued stays readable.
 */
static int take_handovers(int sock)
{
	accept_pending(sock); /* its CONN to the dead daemon just fails */
	for (int i = nsocks - 1; i >= 0; i--)
		if (socks[i].listening)
			drop_sock(i);
	int taken = 0;
	for (int i = 0; i < nsocks; i++) {
		shutdown(socks[i].fd, SHUT_RD);
		taken += drain_conn(socks[i].fd);
	}
	return taken;
}

/* Why the tree cannot wait for a resumed daemon, or NULL when it can. */
static const char *not_resumable(void)
{
	if (!finished)
		return "the restorer's hand-over had not finished";
	if (reading_word && __atomic_load_n(reading_word, __ATOMIC_SEQ_CST) != 0)
		return "it died between reading a uffd event and telling the guardian of it";
	for (int i = 0; i < nsocks; i++) {
		char b;
		if (!socks[i].listening && recv(socks[i].fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
			return "hand-overs were left unread";
	}
	for (size_t i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (!p->live || p->released || p->uffd < 0)
			continue;
		if (p->tainted)
			return "a process had mremapped, madvised or unmapped memory (its map lived only in the daemon)";
		if (p->vpid <= 0)
			return "a process was not fully handed over";
	}
	return NULL;
}


/* Every process still to be served, to the resuming daemon on c; -1 if it went away meanwhile. */
static int hand_over(int c)
{
	uint32_t count = 0;
	for (size_t i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (!p->live || p->released || p->stale || p->uffd < 0)
			continue;
		uint32_t parent = p->parent && find(p->parent) ? p->parent : 0;
		uint32_t rec[5] = { MSG_PROC, p->id, parent, (uint32_t)p->vpid, (uint32_t)p->host_pid };
		int fds[2] = { p->uffd, p->pidfd };
		if (send_record(c, rec, sizeof rec, fds, p->pidfd >= 0 ? 2 : 1) < 0)
			return -1;
		count++;
	}
	uint32_t end[5] = { MSG_END, count, 0, 0, 0 };
	return send_record(c, end, sizeof end, NULL, 0);
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The daemon died but the tree can be saved: it waits (a thread faulting on a missing page blocks on
 * the uffd this process keeps open) while RESUME_PATH listens for `faultline lazy-pages --resume`.
 * Returns the new daemon's control socket, or -1 when nobody came within RECOVER_MS.
 */
static int wait_for_resume(void)
{
	/* the restorer is done with its connections; a later one must not hand over to nobody */
	for (int i = nsocks - 1; i >= 0; i--)
		drop_sock(i);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(resume_path) >= sizeof sa.sun_path)
		return -1;
	strcpy(sa.sun_path, resume_path);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	unlink(resume_path);
	/* 0600 whatever the umask: whoever connects gets the uffds, so the checkpoint's memory */
	if (s < 0 || fchmod(s, 0600) < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(resume_path, 0600) < 0 || listen(s, 4) < 0) {
		say("faultline-guardian: error: cannot listen on %s for a resumed daemon: %s", resume_path, strerror(errno));
		if (s >= 0)
			close(s);
		return -1;
	}
	warn("faultline-guardian: the daemon (pid %d) ended without finishing the restore; the tree waits (threads block in their faults) up to %ld ms for `faultline lazy-pages --resume` on %s",
	     daemon_pid, recover_ms, resume_path);
	long deadline = now_ms() + recover_ms;
	int ctl = -1;
	while (ctl < 0) {
		long left = deadline - now_ms();
		if (left <= 0)
			break;
		struct pollfd pfd = { s, POLLIN, 0 };
		if (poll(&pfd, 1, (int)(left > 1000000 ? 1000000 : left)) <= 0)
			continue;
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		struct ucred cred;
		socklen_t len = sizeof cred;
		if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || (cred.uid != 0 && cred.uid != geteuid())) {
			warn("faultline-guardian: refused a resume from pid %d (uid %d): only root or uid %d may take the tree", (int)cred.pid, (int)cred.uid, (int)geteuid());
			close(c);
			continue;
		}
		/* a bound on a peer that connects and never reads (records are small: this is generous) */
		struct timeval tv = { 5, 0 };
		setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		if (hand_over(c) < 0) {
			warn("faultline-guardian: the resuming daemon (pid %d) went away during the hand-over", (int)cred.pid);
			close(c);
			continue;
		}
		for (size_t i = 0; i < nprocs; i++)
			if (procs[i].live && !procs[i].released && procs[i].uffd >= 0)
				procs[i].stale = 1;
		generation++;
		daemon_pid = cred.pid;
		ctl = c;
		warn("faultline-guardian: daemon pid %d resumed the restore", daemon_pid);
	}
	close(s);
	unlink(resume_path);
	return ctl;
}

/* A resuming daemon that dies before RESUMED: its entries go (they duplicate the stale ones, which
 * stand again). Nothing of its own can exist yet: it watches the uffds only after RESUMED. */
static void undo_resume(void)
{
	int any = 0;
	for (size_t i = 0; i < nprocs; i++)
		any |= procs[i].live && procs[i].stale;
	if (!any)
		return;
	for (size_t i = 0; i < nprocs; i++) {
		struct proc *p = &procs[i];
		if (p->live && p->stale)
			p->stale = 0;
		else if (p->live && p->gen == generation)
			release(p);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4 && argc != 6) {
		say("usage: faultline-guardian CONTROL_FD DAEMON_PID [LOG_FILE|- [RESUME_PATH RECOVER_MS]] (started by faultline lazy-pages)");
		return 2;
	}
	int sock = atoi(argv[1]);
	daemon_pid = atoi(argv[2]);
	if (argc >= 4 && strcmp(argv[3], "-") != 0)
		log_fd = open(argv[3], O_WRONLY | O_APPEND | O_CLOEXEC);
	if (argc == 6) {
		resume_path = argv[4];
		recover_ms = atol(argv[5]);
	}
	/* nothing the terminal or the daemon's process group is sent may end the guardian early */
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	for (;;) {
		/* the control socket, then every listening socket (one per restore an engine serves) */
		static struct pollfd pfd[1 + MAX_SOCKS];
		int npfd = 1;
		pfd[0] = (struct pollfd){ sock, POLLIN, 0 };
		for (int i = 0; i < nsocks; i++)
			if (socks[i].listening)
				pfd[npfd++] = (struct pollfd){ socks[i].fd, POLLIN, 0 };
		if (poll(pfd, npfd, -1) < 0 && errno != EINTR)
			return 1;
		/* connections first: a restorer that connected before the daemon died is taken either way */
		for (int i = 1; i < npfd; i++)
			if (pfd[i].revents & POLLIN) {
				accept_pending(sock);
				break;
			}
		if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		uint32_t type = 0;
		int r = recv_one(sock, &type);
		/* DONE: every page is in place; STOPPED: the daemon fail-stopped the tree itself */
		if (r > 0 && (type == MSG_DONE || type == MSG_STOPPED)) {
			for (size_t i = 0; i < nprocs; i++)
				if (procs[i].live)
					release(&procs[i]);
			return 0;
		}
		if (r > 0)
			continue;
		char why[320];
		snprintf(why, sizeof why, "the daemon (pid %d) ended without finishing the restore%s", daemon_pid,
			 r < 0 ? " (its control messages stopped making sense)" : "");
		undo_resume();
		if (resume_path && recover_ms > 0 && r == 0 && nprocs > 0) {
			const char *no = not_resumable();
			if (!no) {
				close(sock);
				int next = wait_for_resume();
				if (next >= 0) {
					sock = next;
					continue;
				}
				snprintf(why + strlen(why), sizeof why - strlen(why), ", and no daemon resumed it within --recover-timeout (%ld ms)", recover_ms);
			} else {
				snprintf(why + strlen(why), sizeof why - strlen(why), " and cannot be resumed: %s", no);
			}
		}
		int unread = take_handovers(sock);
		if (nprocs == 0) {
			/* nothing was handed over: nothing to protect */
			return 0;
		}
		if (unread)
			snprintf(why + strlen(why), sizeof why - strlen(why), " (%d hand-overs it never read)", unread);
		fail_stop(why);
		return 1;
	}
}
