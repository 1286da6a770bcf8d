/*
 * The main process's view of the processes it waits for: the planned processes it forked
 * (struct proc's bookkeeping fields) and those that `fork` steps forked, which come back to it as
 * their child subreaper.  Reaping and killing them, turning their outcomes into one exit code, and
 * the summary line.  Owns what the main process knows of the forked ones (`forked` below; their
 * own slots are in shm->forked).
 */
#include "target.h"
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {
	bool reaped;
	int wstatus;
} forked[MAX_FORKED];

int forked_count(void)
{
	uint32_t n = __atomic_load_n(&shm->forked.n, __ATOMIC_ACQUIRE);
	return n > MAX_FORKED ? MAX_FORKED : (int)n;
}

/* Asked once every planned process is reaped, so a slot's host is set: <= 0 only if its fork failed. */
bool forked_all_reaped(void)
{
	int n = forked_count();
	for (int i = 0; i < n; i++)
		if (!forked[i].reaped && __atomic_load_n(&shm->forked.s[i].host, __ATOMIC_ACQUIRE) > 0)
			return false;
	return true;
}

void kill_children(void)
{
	for (int i = 0; i < plan.nprocs; i++)
		if (plan.procs[i].host > 0 && !plan.procs[i].reaped)
			kill(plan.procs[i].host, SIGKILL);
	for (int i = 0; i < forked_count(); i++)
		if (shm->forked.s[i].host > 0 && !forked[i].reaped)
			kill(shm->forked.s[i].host, SIGKILL);
}

void reap_all_blocking(void)
{
	for (int i = 0; i < plan.nprocs; i++)
		if (plan.procs[i].host > 0 && !plan.procs[i].reaped) {
			while (waitpid(plan.procs[i].host, &plan.procs[i].wstatus, 0) < 0 && errno == EINTR) {
			}
			plan.procs[i].reaped = true;
		}
	/* Forked processes are ours (child subreaper) once their parent is gone, which it is now. */
	for (int i = 0; i < forked_count(); i++)
		if (shm->forked.s[i].host > 0 && !forked[i].reaped) {
			while (waitpid(shm->forked.s[i].host, &forked[i].wstatus, 0) < 0 && errno == EINTR) {
			}
			forked[i].reaped = true;
		}
}

/* Reaps whatever has exited; returns how many of them were planned processes. */
int reap_some(uint64_t *last_exit)
{
	int n = 0, st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (int i = 0; i < plan.nprocs; i++)
			if (plan.procs[i].host == pid) {
				plan.procs[i].wstatus = st;
				plan.procs[i].reaped = true;
				n++;
			}
		/* Otherwise a forked process, or a `zombie` step's child handed to us (ignored). */
		for (int i = 0; i < forked_count(); i++)
			if (shm->forked.s[i].host == pid && !forked[i].reaped) {
				forked[i].wstatus = st;
				forked[i].reaped = true;
			}
		*last_exit = now_ns();
	}
	return n;
}

/* ------------------------------------------------------------------------------------------------
 * Exit code
 */

/* How much an exit code says about the run; see fold_exit. */
static int severity(int code)
{
	switch (code) {
	case EXIT_OK:
		return 0;
	case EXIT_MISMATCH:
		return 1;
	case EXIT_KILLED:
		return 3;
	case EXIT_OVERLAP:
		return 4;
	default:
		return 2;
	}
}

/*
 * Folds one child's outcome (wait status, and whether it counted mismatches) into the exit code so
 * far.  The weightiest outcome wins, the first of equals: a VMA collision, because the caller
 * retries the whole restore on it; then a death by signal (typically the daemon's fail-stop), which
 * explains whatever else went wrong; then a child's own failure; then mismatches.
 */
static int fold_exit(int code, int wstatus, bool mismatched)
{
	int own;
	if (WIFSIGNALED(wstatus))
		own = EXIT_KILLED;
	else if (WEXITSTATUS(wstatus))
		own = WEXITSTATUS(wstatus);
	else
		own = mismatched ? EXIT_MISMATCH : EXIT_OK;
	return severity(own) > severity(code) ? own : code;
}

/* Why the restore stopped before every process was handed over. */
int handover_failure_code(void)
{
	int code = EXIT_OK;
	for (int i = 0; i < plan.nprocs; i++) {
		struct proc *p = &plan.procs[i];
		if (!p->reaped)
			continue;
		if (WIFSIGNALED(p->wstatus)) {
			p->killed_by_other = true;
			fprintf(stderr, "faultline-target: pid %d (host %d) killed by signal %d before hand-over\n", p->pid,
				(int)p->host, WTERMSIG(p->wstatus));
		}
		code = fold_exit(code, p->wstatus, false);
	}
	/* A process left without a failure of its own: the hand-over is what went wrong. */
	return code ? code : EXIT_SOCKET;
}

/* The exit code of a run in which every process was released and has exited. */
int final_exit_code(void)
{
	int code = EXIT_OK;
	for (int i = 0; i < plan.nprocs; i++) {
		struct proc *p = &plan.procs[i];
		if (WIFSIGNALED(p->wstatus))
			fprintf(stderr, "faultline-target: pid %d (host %d) killed by signal %d\n", p->pid, (int)p->host,
				WTERMSIG(p->wstatus));
		code = fold_exit(code, p->wstatus, shm->slot[i].mismatches);
	}
	for (int i = 0; i < forked_count(); i++) {
		if (!forked[i].reaped)
			continue;
		if (WIFSIGNALED(forked[i].wstatus))
			fprintf(stderr, "faultline-target: pid %d (forked, host %d) killed by signal %d\n",
				plan.procs[shm->forked.s[i].plan_idx].pid, (int)shm->forked.s[i].host, WTERMSIG(forked[i].wstatus));
		code = fold_exit(code, forked[i].wstatus, shm->forked.s[i].mismatches);
	}
	return code;
}

/* ------------------------------------------------------------------------------------------------
 * The summary line, parsed by src/target/run.ts (TargetSummary)
 */

/* Processes we killed ourselves are left out, unless a signal of someone else's had come first. */
static size_t append_killed(char *buf, size_t cap, size_t len, bool we_killed)
{
	bool first = true;
	for (int i = 0; i < plan.nprocs; i++) {
		struct proc *p = &plan.procs[i];
		if (p->reaped && WIFSIGNALED(p->wstatus) && (!we_killed || p->killed_by_other)) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"signal\":%d}", first ? "" : ",", p->pid,
					WTERMSIG(p->wstatus));
			first = false;
		}
	}
	for (int i = 0; i < forked_count() && len + 200 < cap; i++)
		if (forked[i].reaped && WIFSIGNALED(forked[i].wstatus) && !we_killed) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"hostPid\":%d,\"forkOf\":%d,\"signal\":%d}",
					first ? "" : ",", plan.procs[shm->forked.s[i].plan_idx].pid, (int)shm->forked.s[i].host,
					plan.procs[shm->forked.s[i].plan_idx].pid, WTERMSIG(forked[i].wstatus));
			first = false;
		}
	return len;
}

static size_t append_failed(char *buf, size_t cap, size_t len)
{
	bool first = true;
	for (int i = 0; i < plan.nprocs; i++) {
		struct proc *p = &plan.procs[i];
		if (p->reaped && WIFEXITED(p->wstatus) && WEXITSTATUS(p->wstatus)) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"status\":%d}", first ? "" : ",", p->pid,
					WEXITSTATUS(p->wstatus));
			first = false;
		}
	}
	for (int i = 0; i < forked_count() && len + 200 < cap; i++)
		if (forked[i].reaped && WIFEXITED(forked[i].wstatus) && WEXITSTATUS(forked[i].wstatus)) {
			len += snprintf(buf + len, cap - len, "%s{\"pid\":%d,\"hostPid\":%d,\"forkOf\":%d,\"status\":%d}",
					first ? "" : ",", plan.procs[shm->forked.s[i].plan_idx].pid, (int)shm->forked.s[i].host,
					plan.procs[shm->forked.s[i].plan_idx].pid, WEXITSTATUS(forked[i].wstatus));
			first = false;
		}
	return len;
}

static size_t append_zombies(char *buf, size_t cap, size_t len)
{
	bool first = true;
	for (int i = 0; i < plan.nprocs; i++)
		if (plan.procs[i].zombie) {
			len += snprintf(buf + len, cap - len, "%s%d", first ? "" : ",", plan.procs[i].pid);
			first = false;
		}
	return len;
}

static double timeval_ms(struct timeval tv)
{
	return tv.tv_sec * 1e3 + tv.tv_usec / 1e3;
}

/* The tree's own CPU: this process and every process it reaped (each of which reaped its own). */
static double tree_cpu_ms(void)
{
	struct rusage r;
	double ms = 0;

	if (getrusage(RUSAGE_SELF, &r) == 0)
		ms += timeval_ms(r.ru_utime) + timeval_ms(r.ru_stime);
	if (getrusage(RUSAGE_CHILDREN, &r) == 0)
		ms += timeval_ms(r.ru_utime) + timeval_ms(r.ru_stime);
	return ms;
}

/* One write(2); the buffer is sized for every process's entries (64 bytes each, 96 if forked). */
void print_summary(bool released, uint64_t release_ns, uint64_t last_exit, bool we_killed)
{
	size_t cap = 4096 + (size_t)plan.nprocs * 64 + (size_t)forked_count() * 96, len = 0;
	char *buf = malloc(cap);
	uint64_t verified = 0, mismatches = 0;

	if (!buf)
		die(EXIT_NOMEM, "out of memory (summary)");
	for (int i = 0; i < plan.nprocs; i++) {
		verified += shm->slot[i].verified;
		mismatches += shm->slot[i].mismatches;
	}
	for (int i = 0; i < forked_count(); i++) {
		verified += shm->forked.s[i].verified;
		mismatches += shm->forked.s[i].mismatches;
	}
	len += snprintf(buf + len, cap - len,
			"{\"summary\":true,\"processes\":%d,\"verified\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"killed\":[",
			plan.nprocs, verified, mismatches);
	len = append_killed(buf, cap, len, we_killed);
	len += snprintf(buf + len, cap - len, "],\"failed\":[");
	len = append_failed(buf, cap, len);
	len += snprintf(buf + len, cap - len, "],\"zombies\":[");
	len = append_zombies(buf, cap, len);
	if (opt.scripting)
		len += snprintf(buf + len, cap - len, "],\"forked\":%d", forked_count());
	else
		len += snprintf(buf + len, cap - len, "]");
	len += snprintf(buf + len, cap - len, ",\"cpuMs\":%.1f", tree_cpu_ms());
	if (released)
		len += snprintf(buf + len, cap - len, ",\"releaseToExitMs\":%.3f}\n",
				last_exit > release_ns ? (last_exit - release_ns) / 1e6 : 0.0);
	else
		len += snprintf(buf + len, cap - len, ",\"releaseToExitMs\":null}\n");
	if (write(1, buf, len) < 0) {
	}
	free(buf);
}
