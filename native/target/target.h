/*
 * What the parts of faultline-target share: its exit codes, the planned processes, the memory the
 * main process shares with its children, the options, the step script and the expected-content
 * table, and the functions one part calls in another.  restore-target.c has the map of the parts.
 *
 * The few mutable globals, and who writes them:
 *   opt       options.c, while parsing the command line; read-only afterwards
 *   plan      plan-load.c, before any fork; afterwards only the main process's bookkeeping fields
 *             of struct proc change (host, handed, reaped, killed_by_other, wstatus)
 *   shm       restore-target.c maps it before the forks; struct shared says who writes what
 *   main_pid  util.c, first thing in main
 */
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "../plan/plan.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/types.h>

/* Debian bookworm ships 6.1 headers; the machine runs a newer kernel. */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE 4096UL

/* PROT_NONE reservations that keep an address range ours (the spare area, holes steps made). */
#define RESERVE_FLAGS (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)

/*
 * Exit codes.  src/target/run.ts retries the whole restore on EXIT_OVERLAP, so a code must mean
 * one thing only; usage() in options.c lists them for users.  A restored process exits with one of
 * these too, and the main process folds its children's into its own (fold_exit in children.c).
 */
enum {
	EXIT_OK = 0,
	EXIT_MISMATCH = 1,
	EXIT_USAGE = 2, /* bad options, bad plan, unreadable pages file, a failing step */
	EXIT_OVERLAP = 3, /* a VMA address is already taken: the caller may retry */
	EXIT_SOCKET = 4, /* connect or hand-over failed */
	EXIT_KILLED = 5, /* a restored process died of a signal */
	EXIT_UFFD = 6, /* the kernel refused the userfaultfd setup */
	EXIT_NOMEM = 7, /* out of memory */
};

/* ------------------------------------------------------------------------------------------------
 * The planned processes (plan-load.c)
 */

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
	/* The main process's bookkeeping (restore-target.c, handover.c, children.c). */
	pid_t host;
	bool handed, reaped;
	bool killed_by_other; /* died of a signal we did not send (e.g. the daemon's fail-stop) */
	int wstatus;
};

struct target_plan {
	const char *socket; /* the lazy-pages daemon's */
	const struct plan_file *files; /* mapped read-only */
	struct proc *procs;
	int nprocs;
};
extern struct target_plan plan;

void load_plan(void);
struct vma *find_vma(const struct proc *p, uint64_t addr);

/* ------------------------------------------------------------------------------------------------
 * Memory shared by the main process and every restored process, mapped before the forks
 */

/* Forked children (step `fork`) register here so that the main process can wait for them. */
#define MAX_FORKED 4096
struct fslot {
	int32_t host; /* set by the forking parent and by the child itself; 0 until then, -1: fork failed */
	int32_t plan_idx, parent_host, pad;
	uint64_t verified, mismatches; /* written by the forked child as it finishes */
};

struct shared {
	pthread_mutex_t send_lock; /* serialises hand-overs, like CRIU's task-entries mutex */
	uint32_t go; /* futex: set once RESTORE_FINISHED is sent */
	uint32_t usr1; /* futex: set when the main process got SIGUSR1 */
	struct {
		uint32_t n; /* slots taken; may exceed MAX_FORKED (the fork step then fails) */
		struct fslot s[MAX_FORKED];
	} forked;
	struct {
		uint64_t verified, mismatches; /* written by planned process i as it finishes */
	} slot[];
};
extern struct shared *shm;

/* ------------------------------------------------------------------------------------------------
 * Scripts (script.c)
 */

enum skind { S_TOUCH, S_FORK, S_MREMAP, S_GROW, S_SHRINK, S_SWAP, S_DONTNEED, S_UNMAP, S_EXIT, S_ZOMBIE, S_TSAME, S_SLEEP, S_NKINDS };

/* A page index of a script: page v of the first VMA's start, or (spare) of the spare area. */
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

struct pid_script {
	int pid;
	struct script sc;
};

/* ------------------------------------------------------------------------------------------------
 * Options (options.c)
 */

enum handover { HO_SPLIT, HO_MERGED, HO_BYTEWISE };
enum pattern { PAT_SEQ, PAT_RANDOM, PAT_STRIDE };

struct options {
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
	const char *latency_prefix;
	struct script script; /* --script */
	struct pid_script *pid_scripts; /* --script-pid, later ones win */
	int npid_scripts;
	bool chaos;
	uint64_t chaos_seed, chaos_n;
	bool scripting; /* any of --script, --script-pid, --chaos */
};
extern struct options opt;

void parse_options(int argc, char **argv);

/* ------------------------------------------------------------------------------------------------
 * Expected-content table, keyed by current address (expect.c)
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

void tbl_init(struct table *t, const struct proc *p);
void tbl_copy(struct table *dst, const struct table *src);
size_t tbl_lb(const struct table *t, uint64_t a);
void tbl_span(const struct table *t, uint64_t a, uint64_t b, size_t *lo, size_t *hi);
bool tbl_full(const struct table *t, uint64_t a, uint64_t b);
bool tbl_one_seg(const struct table *t, uint64_t a, uint64_t b);
bool tbl_empty(const struct table *t, uint64_t a, uint64_t b);
void tbl_remove(struct table *t, uint64_t a, uint64_t b);
void tbl_move(struct table *t, uint64_t a, uint64_t b, uint64_t to);
void tbl_zap(struct table *t, uint64_t a, uint64_t b);
void tbl_grow(struct table *t, uint64_t b, uint64_t n);
uint64_t tbl_gap(const struct table *t, uint64_t lo, uint64_t hi, uint64_t len, uint64_t from);

/* ------------------------------------------------------------------------------------------------
 * One restored process (process.c and the parts it runs)
 */

struct pctx {
	struct proc *p;
	int idx; /* index in plan.procs */
	struct table t;
	uint64_t base; /* first VMA start: page index 0 */
	uint64_t spare, spare_len; /* spare area (bytes), 0 if none */
	uint64_t *log; /* first-touch latencies in touch order */
	size_t nlog, caplog;
	size_t touched;
	atomic_int details; /* mismatches reported in detail so far */
	uint64_t ev[S_NKINDS];
	int depth; /* 0: a planned process; 1: forked by a `fork` step */
	int fork_slot;
	int nforks;
	bool exited_early;
};

/* Mismatches beyond this many per process are counted, not described on stderr. */
#define MAX_MISMATCH_DETAILS 5

void child_main(int idx, const sigset_t *oldmask, int sigfd) __attribute__((noreturn));

/* script.c */
void parse_script(const char *what, const char *text, struct script *sc);
void check_script_pids(void);
void build_script(struct pctx *c, struct script *sc);
size_t fmt_step(char *buf, size_t cap, const struct step *st);
uint64_t paddr(const struct pctx *c, struct pidx x);

/* setup.c */
void map_vmas(const struct proc *p);
void map_spare(struct pctx *c);
int make_uffd(const struct proc *p);

/* steps.c */
void run_steps(struct pctx *c, const struct script *sc);

/* workload.c */
extern const uint8_t zero_page[PAGE];
void run_workload(struct pctx *c);
void verify_all(struct pctx *c);
void touch_page(struct pctx *c, struct ent *e, uint64_t ns);
void finish(struct pctx *c) __attribute__((noreturn));

/* ------------------------------------------------------------------------------------------------
 * Hand-over to the daemon (handover.c)
 */

void connect_daemon(void);
void ready_open(void);
void ready_child_side(void);
void ready_parent_side(void);
int ready_fd(void);
void ready_drain(int *handed);
void hand_over_zombie(int idx);
void hand_over_uffd(int idx, int uffd);
int send_restore_finished(void);

/* ------------------------------------------------------------------------------------------------
 * The main process's view of its children (children.c)
 */

int forked_count(void);
bool forked_all_reaped(void);
void kill_children(void);
void reap_all_blocking(void);
int reap_some(uint64_t *last_exit);
int handover_failure_code(void);
int final_exit_code(void);
void print_summary(bool released, uint64_t release_ns, uint64_t last_exit, bool we_killed);

/* ------------------------------------------------------------------------------------------------
 * util.c
 */

extern pid_t main_pid;
void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
uint64_t now_ns(void);
void sleep_ms(long ms);
void futex_wait_set(uint32_t *word);
void futex_set_wake(uint32_t *word);
uint64_t splitmix64(uint64_t *s);
