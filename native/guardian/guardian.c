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
 *   CONN    {7, id, 0}             + SCM_RIGHTS [connection]     a connection it accepted (RELEASE
 *                                                                {3, id, 1} when the daemon closes it)
 * usage: faultline-guardian CONTROL_FD DAEMON_PID [LOG_FILE]
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
#include <sys/socket.h>
#include <sys/syscall.h>
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

enum { MSG_ADD = 1, MSG_CHILD = 2, MSG_RELEASE = 3, MSG_DONE = 4, MSG_STOPPED = 5, MSG_HOLD = 6, MSG_CONN = 7 };

/* The hand-over sockets: the listening one, and the restorer's connection(s) the daemon accepted. */
#define MAX_SOCKS 8
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
};

static struct proc *procs;
static size_t nprocs, cap;
static int daemon_pid;
/* Ids the guardian gives processes it found itself (never a daemon uffd number). */
static uint32_t next_own_id = 0x80000000u;
/* The daemon's -o log (appended to, in criu's "Error (who): …" shape, so tools that grep criu's
 * logs for Error see the guardian's reason too), or -1. */
static int log_fd = -1;

static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
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
		const char *msg = strncmp(line, "faultline-guardian: error: ", 27) == 0 ? line + 27 : line;
		int m = snprintf(entry, sizeof entry, "%d: Error (faultline-guardian): %.*s", (int)getpid(), n, msg);
		if (m > 0 && write(log_fd, entry, m > (int)sizeof entry - 1 ? (int)sizeof entry - 1 : m) < 0) {
			/* nowhere left to say it */
		}
	}
}

static struct proc *find(uint32_t id)
{
	for (size_t i = 0; i < nprocs; i++)
		if (procs[i].live && !procs[i].released && procs[i].id == id)
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
			p->parent = hdr[2];
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
				close(c); /* one restorer per daemon: a flood of others is refused here */
				continue;
			}
			socks[nsocks].id = (uint32_t)c;
			socks[nsocks].fd = c;
			socks[nsocks].listening = 0;
			nsocks++;
			uint32_t hdr[3] = { MSG_CONN, (uint32_t)c, 0 };
			union {
				char space[CMSG_SPACE(sizeof(int))];
				struct cmsghdr align;
			} control;
			struct iovec iov = { hdr, sizeof hdr };
			struct msghdr msg = { 0 };
			msg.msg_iov = &iov;
			msg.msg_iovlen = 1;
			msg.msg_control = control.space;
			msg.msg_controllen = sizeof control.space;
			struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &c, sizeof(int));
			if (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) {
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

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		say("usage: faultline-guardian CONTROL_FD DAEMON_PID [LOG_FILE] (started by faultline lazy-pages)");
		return 2;
	}
	int sock = atoi(argv[1]);
	daemon_pid = atoi(argv[2]);
	if (argc == 4)
		log_fd = open(argv[3], O_WRONLY | O_APPEND | O_CLOEXEC);
	/* nothing the terminal or the daemon's process group is sent may end the guardian early */
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	for (;;) {
		struct pollfd pfd[2] = { { sock, POLLIN, 0 }, { -1, POLLIN, 0 } };
		for (int i = 0; i < nsocks; i++)
			if (socks[i].listening)
				pfd[1].fd = socks[i].fd;
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			return 1;
		/* connections first: a restorer that connected before the daemon died is taken either way */
		if (pfd[1].revents & POLLIN)
			accept_pending(sock);
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
		char why[192];
		snprintf(why, sizeof why, "the daemon (pid %d) ended without finishing the restore%s", daemon_pid,
			 r < 0 ? " (its control messages stopped making sense)" : "");
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
