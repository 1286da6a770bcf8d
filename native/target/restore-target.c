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
 * prints a summary line.  See usage() in options.c for options and exit codes.
 *
 * With --script/--script-pid/--chaos each process first runs a list of steps that make the kernel
 * send the daemon UFFD_EVENT_FORK/REMAP/REMOVE/UNMAP.  Verification follows the steps: every
 * process keeps an expected-content table keyed by current address (pages-file bytes, zeros, or
 * absent), updated by each step.  Processes forked by a `fork` step report their own line
 * ("forkOf"); the main process is their child subreaper and waits for them.
 *
 * The parts, in the order a run goes through them:
 *   restore-target.c  the main process: set-up, forks, waiting for hand-overs, release, waiting
 *   options.c         command line, --help, exit codes
 *   plan-load.c       the plan (its format) into the table of planned processes
 *   handover.c        the daemon's socket, the hand-over messages, the ready pipe
 *   process.c         one restored process from fork to exit
 *   setup.c           its memory (VMAs, eager pages, spare area) and its userfaultfd
 *   script.c          the step language: parsing, printing, chaos generation
 *   steps.c           running the steps
 *   expect.c          the expected-content table the steps keep up to date
 *   workload.c        the workload, verification, latency, the process's JSON line
 *   children.c        the main process's view of its children: reaping, exit code, summary line
 *   util.c            die(), clocks, futexes, splitmix64
 *   target.h          what they share
 *
 * This file owns the signalfd and the memory shared with the children (shm).
 */
#include "target.h"
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct shared *shm;
static int sigfd = -1;

/* Where the main process is in the run. */
struct run {
	int handed, reaped; /* planned processes */
	uint64_t release_ns, last_exit;
};

static void map_shared(void)
{
	pthread_mutexattr_t ma;
	size_t len = sizeof(*shm) + sizeof(shm->slot[0]) * plan.nprocs;

	shm = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		die(EXIT_UFFD, "mmap shared area: %s", strerror(errno));
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	/* A process killed mid-hand-over must not leave its siblings blocked on the lock. */
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&shm->send_lock, &ma);
	/* Processes forked by `fork` steps outlive their parents: they must come back to us. */
	if (opt.scripting && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
		die(EXIT_UFFD, "PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
}

/* From here on signals arrive through signalfd so the main loop can react to all of them. */
static void block_signals(sigset_t *oldmask)
{
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	sigprocmask(SIG_BLOCK, &block, oldmask);
	sigfd = signalfd(-1, &block, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigfd < 0)
		die(EXIT_UFFD, "signalfd: %s", strerror(errno));
}

/* A failure before the release: nothing may run, the daemon sees EOF before RESTORE_FINISHED. */
static int abort_restore(int code)
{
	kill_children();
	reap_all_blocking();
	print_summary(false, 0, 0, true);
	return code;
}

static int stop_on_signal(int sig, const char *when)
{
	kill_children();
	reap_all_blocking();
	fprintf(stderr, "faultline-target: %s%s, children killed\n", strsignal(sig), when);
	return 128 + sig;
}

/* Handles pending signals; returns the number of a terminating signal, else 0. */
static int handle_signals(struct run *r)
{
	struct signalfd_siginfo si;
	while (read(sigfd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			r->reaped += reap_some(&r->last_exit);
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

static int fork_children(const sigset_t *oldmask)
{
	for (int i = 0; i < plan.nprocs; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "faultline-target: fork: %s\n", strerror(errno));
			return abort_restore(EXIT_UFFD);
		}
		if (pid == 0)
			child_main(i, oldmask, sigfd);
		plan.procs[i].host = pid;
	}
	ready_parent_side();
	return EXIT_OK;
}

/* Phase 1: wait for every hand-over, or for a child to fail before its own. */
static int wait_handovers(struct run *r)
{
	while (r->handed < plan.nprocs) {
		struct pollfd pf[2] = { { .fd = ready_fd(), .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };
		int sig;
		if (poll(pf, 2, -1) < 0 && errno != EINTR)
			die(EXIT_UFFD, "poll: %s", strerror(errno));
		ready_drain(&r->handed);
		sig = handle_signals(r);
		if (sig)
			return stop_on_signal(sig, " during restore");
		/* A child's ready message is written before it exits, so drain again before judging. */
		ready_drain(&r->handed);
		for (int i = 0; i < plan.nprocs; i++)
			if (plan.procs[i].reaped && !plan.procs[i].handed)
				return abort_restore(handover_failure_code());
	}
	return EXIT_OK;
}

static int release(struct run *r)
{
	if (send_restore_finished() < 0) {
		fprintf(stderr, "faultline-target: send RESTORE_FINISHED to %s: %s\n", plan.socket, strerror(errno));
		return abort_restore(EXIT_SOCKET);
	}
	r->release_ns = now_ns();
	futex_set_wake(&shm->go);
	return EXIT_OK;
}

/* Phase 2: the restored processes run, and whatever they forked. */
static int wait_exits(struct run *r)
{
	while (r->reaped < plan.nprocs || !forked_all_reaped()) {
		struct pollfd pf = { .fd = sigfd, .events = POLLIN };
		int sig;
		if (poll(&pf, 1, -1) < 0 && errno != EINTR)
			die(EXIT_UFFD, "poll: %s", strerror(errno));
		sig = handle_signals(r);
		if (sig)
			return stop_on_signal(sig, "");
	}
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	struct run r = { 0 };
	sigset_t oldmask;
	int code;

	main_pid = getpid();
	parse_options(argc, argv);
	load_plan();
	check_script_pids();
	map_shared();
	ready_open();
	connect_daemon();
	block_signals(&oldmask);

	code = fork_children(&oldmask);
	if (code == EXIT_OK)
		code = wait_handovers(&r);
	if (code == EXIT_OK)
		code = release(&r);
	if (code == EXIT_OK)
		code = wait_exits(&r);
	if (code != EXIT_OK)
		return code;

	code = final_exit_code();
	print_summary(true, r.release_ns, r.last_exit, false);
	return code;
}
