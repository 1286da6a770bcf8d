/*
 * The hand-over to the lazy-pages daemon, done exactly as CRIU's restorer does it so that the
 * daemon cannot tell us from CRIU: one connection, opened by the main process before the forks and
 * shared by every restored process; per process an int32 pid, then 1 byte carrying the
 * userfaultfd as SCM_RIGHTS (-pid and no fd for a zombie); then RESTORE_FINISHED and EOF from the
 * main process.  Also the ready pipe, on which each restored process tells the main process that
 * its hand-over is done.  Owns the socket and the ready pipe.
 */
#include "target.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RESTORE_FINISHED 0x52535446u

static int sock = -1;
static int ready_pipe[2] = { -1, -1 };

void connect_daemon(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t deadline = now_ns() + (uint64_t)opt.connect_timeout_ms * 1000000ull;

	if (strlen(plan.socket) >= sizeof(sa.sun_path))
		die(EXIT_SOCKET, "connect to %s: %s", plan.socket, strerror(ENAMETOOLONG));
	strcpy(sa.sun_path, plan.socket);
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
			die(EXIT_SOCKET, "connect to %s: %s", plan.socket, strerror(err));
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

/*
 * --handover merged and bytewise send the same bytes framed differently, to exercise the daemon's
 * parser: bytewise dribbles the pid so that it arrives split across reads.
 */
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

/* Every restored process writes to the one socket; a message must not interleave with another. */
static void lock_send(void)
{
	int rc = pthread_mutex_lock(&shm->send_lock);
	/* A sibling died holding the lock; its half-sent message is the daemon's problem to report. */
	if (rc == EOWNERDEAD)
		pthread_mutex_consistent(&shm->send_lock);
	else if (rc)
		die(EXIT_SOCKET, "send lock: %s", strerror(rc));
}

static void unlock_send(void)
{
	pthread_mutex_unlock(&shm->send_lock);
}

static void report_handed(int idx)
{
	int32_t v = idx;
	if (write(ready_pipe[1], &v, sizeof(v)) != sizeof(v))
		die(EXIT_SOCKET, "ready pipe: %s", strerror(errno));
}

/* A zombie has no memory to serve: CRIU sends its negated pid and no fd. */
void hand_over_zombie(int idx)
{
	const struct proc *p = &plan.procs[idx];
	lock_send();
	if (send_pid(-p->pid) < 0)
		die(EXIT_SOCKET, "pid %d: send zombie pid: %s", p->pid, strerror(errno));
	unlock_send();
	report_handed(idx);
}

void hand_over_uffd(int idx, int uffd)
{
	const struct proc *p = &plan.procs[idx];
	int32_t pid = p->pid;
	uint8_t merged[5];
	int rc;

	lock_send();
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
		die(EXIT_SOCKET, "pid %d: hand-over to %s: %s", p->pid, plan.socket, strerror(errno));
	unlock_send();
	/* The daemon's copy must be the only one: its close is what disarms the ranges. */
	close(uffd);
	close(sock);
	report_handed(idx);
	close(ready_pipe[1]);
}

/* Returns -1 (errno set) if the daemon is gone; the socket is closed on success, which is the EOF. */
int send_restore_finished(void)
{
	uint32_t fin = RESTORE_FINISHED;
	if (send_all(&fin, sizeof(fin)) < 0)
		return -1;
	close(sock);
	return 0;
}

void ready_open(void)
{
	if (pipe2(ready_pipe, O_CLOEXEC) < 0)
		die(EXIT_UFFD, "pipe: %s", strerror(errno));
}

void ready_child_side(void)
{
	close(ready_pipe[0]);
}

/* Once every child has its copy of the write end; the main process drains without blocking. */
void ready_parent_side(void)
{
	close(ready_pipe[1]);
	fcntl(ready_pipe[0], F_SETFL, O_NONBLOCK);
}

int ready_fd(void)
{
	return ready_pipe[0];
}

void ready_drain(int *handed)
{
	int32_t buf[64];
	ssize_t n;
	while ((n = read(ready_pipe[0], buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(int32_t); i++)
			if (buf[i] >= 0 && buf[i] < plan.nprocs && !plan.procs[buf[i]].handed) {
				plan.procs[buf[i]].handed = true;
				(*handed)++;
			}
}
