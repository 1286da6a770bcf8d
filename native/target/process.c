/*
 * One restored process, from fork to exit: set up like CRIU's restorer leaves a task, hand the
 * userfaultfd over, wait for the release (RESTORE_FINISHED), run the steps, run the workload,
 * verify, report.  Owns no global state: everything it has is in its struct pctx.
 */
#include "target.h"
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#endif

/* Lets go of what belongs to the main process. */
static void detach_from_main(const sigset_t *oldmask, int sigfd)
{
	/* An orphaned target would keep its uffd-armed memory (and the daemon) waiting forever. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != main_pid)
		_exit(EXIT_KILLED);
	close(sigfd);
	ready_child_side();
	signal(SIGUSR1, SIG_IGN); /* a harness signalling the whole group must not kill us */
	sigprocmask(SIG_SETMASK, oldmask, NULL);
}

/* Memory, expected contents and steps, all before the hand-over, as CRIU restores before it. */
static void set_up(struct pctx *c, struct script *sc)
{
	struct proc *p = c->p;
	c->base = p->nvma ? p->vmas[0].start : 0;
	/* Like CRIU: khugepaged must not collapse eager pages together with still-missing ones. */
	prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
	map_vmas(p);
	if (opt.scripting)
		map_spare(c);
	tbl_init(&c->t, p);
	if (opt.scripting)
		build_script(c, sc);
}

void child_main(int idx, const sigset_t *oldmask, int sigfd)
{
	struct proc *p = &plan.procs[idx];
	struct pctx *c = calloc(1, sizeof(*c));
	struct script sc = { 0 };

	detach_from_main(oldmask, sigfd);
	if (p->zombie) {
		hand_over_zombie(idx);
		_exit(0);
	}
	if (!c)
		die(EXIT_NOMEM, "pid %d: out of memory", p->pid);
	c->p = p;
	c->idx = idx;
	set_up(c, &sc);
	hand_over_uffd(idx, make_uffd(p));

	futex_wait_set(&shm->go);
	run_steps(c, &sc);
	run_workload(c);
	if (opt.wait_signal)
		futex_wait_set(&shm->usr1);
	/* A forked child verifies all it inherited: the daemon serves it through the fork event's uffd. */
	if (opt.verify_all || c->depth > 0)
		verify_all(c);
	finish(c);
}
