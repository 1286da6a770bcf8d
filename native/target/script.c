/*
 * The step language of --script, --script-pid and --chaos: parsing it, printing it back, choosing
 * a process's steps, and generating random (chaos) steps.  Running them is steps.c's job.
 *
 * The steps (touch, fork, mremap, grow, shrink, swap, dontneed, unmap, exit, zombie, threads-same)
 * exist to make the kernel send the daemon UFFD_EVENT_FORK/REMAP/REMOVE/UNMAP while it serves
 * faults, which a plain restore never does.  usage() in options.c documents their syntax.
 *
 * A page index I means the address <first VMA start> + I*4096 (so it may name pages of later VMAs);
 * sI means page I of the process's spare area: an unregistered PROT_NONE reservation of
 * max(pages, 256) pages placed right after the last VMA (or where the kernel puts it if that is
 * taken), made only when steps are given (setup.c).  Holes that steps leave inside the VMAs or the
 * spare area are reserved again with PROT_NONE, so nothing else ever lands there (steps.c).
 *
 * Owns no global state: the parsed scripts are options (opt.script, opt.pid_scripts).
 */
#include "target.h"
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const skind_name[S_NKINDS] = { "touch", "fork",   "mremap", "grow", "shrink",      "swap",
						  "dontneed", "unmap", "exit", "zombie", "threads-same", "sleep" };

uint64_t paddr(const struct pctx *c, struct pidx x)
{
	return (x.spare ? c->spare : c->base) + x.v * PAGE;
}

static struct pidx to_pidx(const struct pctx *c, uint64_t a)
{
	if (c->spare_len && a >= c->spare && a < c->spare + c->spare_len)
		return (struct pidx){ .v = (a - c->spare) / PAGE, .spare = true };
	return (struct pidx){ .v = (a - c->base) / PAGE };
}

static void script_push(struct script *sc, const struct step *st)
{
	if (sc->n == sc->cap) {
		sc->cap = sc->cap ? sc->cap * 2 : 16;
		sc->s = realloc(sc->s, sc->cap * sizeof(*sc->s));
		if (!sc->s)
			die(EXIT_NOMEM, "out of memory");
	}
	sc->s[sc->n++] = *st;
}

/* ------------------------------------------------------------------------------------------------
 * Parsing
 */

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
	/* Far beyond any address space: keeps index * PAGE from overflowing. */
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

/* The arguments after the step's name; false if they do not parse. */
static bool parse_step_args(const char **sp, struct step *st)
{
	const char *s = *sp;
	bool ok;
	switch (st->k) {
	case S_FORK:
	case S_EXIT:
	case S_ZOMBIE:
		return true;
	default:
		break;
	}
	if (*s++ != ':')
		return false;
	if (st->k == S_SLEEP) {
		/* milliseconds, at most a minute */
		ok = parse_count(&s, &st->n) && st->n <= 60000;
		*sp = s;
		return ok;
	}
	ok = parse_range(&s, &st->a, &st->b);
	if (ok && st->k == S_MREMAP)
		ok = *s++ == '>' && parse_pidx(&s, &st->c);
	else if (ok && st->k == S_GROW)
		ok = *s++ == '+' && parse_count(&s, &st->n);
	else if (ok && st->k == S_SHRINK)
		ok = *s++ == '-' && parse_count(&s, &st->n) && st->n < st->b.v - st->a.v;
	else if (ok && st->k == S_SWAP)
		ok = *s++ == ',' && parse_range(&s, &st->c, &st->d) && st->d.v - st->c.v == st->b.v - st->a.v;
	*sp = s;
	return ok;
}

/* Appends the comma-separated steps of `text` to sc; `what` names the option in messages. */
void parse_script(const char *what, const char *text, struct script *sc)
{
	const char *s = text;
	if (!*s)
		die(EXIT_USAGE, "%s: empty step list", what);
	for (;;) {
		struct step st;
		const char *start = s;
		size_t len = strcspn(s, ":,");
		int k;
		memset(&st, 0, sizeof(st));
		for (k = 0; k < S_NKINDS; k++)
			if (strlen(skind_name[k]) == len && !strncmp(s, skind_name[k], len))
				break;
		if (k == S_NKINDS)
			die(EXIT_USAGE, "%s: unknown step '%.*s' (see --help)", what, (int)len, s);
		st.k = k;
		s += len;
		if (!parse_step_args(&s, &st) || (*s && *s != ',')) {
			/* the step as written, up to its comma; a name alone at the end has nothing after it to scan */
			int shown = (int)len + (start[len] ? 1 + (int)strcspn(start + len + 1, ",") : 0);
			die(EXIT_USAGE, "%s: bad step '%.*s' (see --help)", what, shown, start);
		}
		script_push(sc, &st);
		if (!*s)
			break;
		s++;
	}
}

/* Checked in the main process so that a typo fails the run before anything is handed over. */
void check_script_pids(void)
{
	for (int i = 0; i < opt.npid_scripts; i++) {
		bool found = false;
		for (int j = 0; j < plan.nprocs; j++)
			found |= plan.procs[j].pid == opt.pid_scripts[i].pid;
		if (!found)
			die(EXIT_USAGE, "--script-pid %d: no such pid in the plan", opt.pid_scripts[i].pid);
	}
}

/* ------------------------------------------------------------------------------------------------
 * Printing: the syntax parse_script reads, so that what is printed can be replayed
 */

static int fmt_pidx(char *buf, size_t cap, struct pidx x)
{
	return snprintf(buf, cap, "%s%" PRIu64, x.spare ? "s" : "", x.v);
}

size_t fmt_step(char *buf, size_t cap, const struct step *st)
{
	size_t n = snprintf(buf, cap, "%s", skind_name[st->k]);
	if (st->k == S_FORK || st->k == S_EXIT || st->k == S_ZOMBIE)
		return n;
	if (st->k == S_SLEEP)
		return n + snprintf(buf + n, cap - n, ":%" PRIu64, st->n);
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

/* One write(2), so that lines of concurrent processes do not interleave. */
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

/* Applies the layout effects of the scripted steps (which run before the chaos steps) to t. */
static int simulate_script(const struct pctx *c, struct table *t, const struct script *sc)
{
	int forks = 0;
	for (size_t i = 0; i < sc->n; i++) {
		const struct step *st = &sc->s[i];
		uint64_t a = paddr(c, st->a), b = paddr(c, st->b);
		switch (st->k) {
		case S_MREMAP:
			tbl_move(t, a, b, paddr(c, st->c));
			break;
		case S_SWAP: {
			uint64_t x = paddr(c, st->c), y = paddr(c, st->d);
			uint64_t tmp = tbl_gap(t, c->spare, c->spare + c->spare_len, b - a, c->spare);
			tbl_move(t, a, b, tmp);
			tbl_move(t, x, y, a);
			tbl_move(t, tmp, tmp + (b - a), x);
			break;
		}
		case S_GROW:
			tbl_grow(t, b, st->n);
			break;
		case S_SHRINK:
			tbl_remove(t, b - st->n * PAGE, b);
			break;
		case S_DONTNEED:
			tbl_zap(t, a, b);
			break;
		case S_UNMAP:
			tbl_remove(t, a, b);
			break;
		case S_FORK:
			forks++;
			break;
		default:
			break;
		}
	}
	return forks;
}

/* The mix of chaos steps that --help describes (at most 2 forks per tree). */
static enum skind pick_kind(uint64_t *s, int forks, const struct table *t)
{
	uint64_t r = splitmix64(s) % 100;
	enum skind k;
	if (r < 30)
		k = S_TOUCH;
	else if (r < 50)
		k = S_MREMAP;
	else if (r < 63)
		k = S_DONTNEED;
	else if (r < 73)
		k = S_UNMAP;
	else if (r < 78)
		k = S_FORK;
	else
		k = S_TSAME;
	if (k == S_FORK && forks >= 2)
		k = S_TOUCH;
	if (k == S_UNMAP && t->n < 64)
		k = S_TOUCH;
	return k;
}

/* Appends opt.chaos_n random steps to sc (fewer if the process runs out of mapped pages). */
static void gen_chaos(struct pctx *c, struct script *sc)
{
	struct table t;
	uint64_t s = opt.chaos_seed ^ ((uint64_t)c->p->pid * 0xd1342543de82ef95ull);
	int forks;

	splitmix64(&s);
	tbl_copy(&t, &c->t);
	forks = simulate_script(c, &t, sc);
	for (uint64_t n = 0; n < opt.chaos_n; n++) {
		struct step st;
		uint64_t a, b;
		memset(&st, 0, sizeof(st));
		st.k = pick_kind(&s, forks, &t);
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
			uint64_t to = tbl_gap(&t, c->spare, c->spare + c->spare_len, b - a, from);
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

/* ------------------------------------------------------------------------------------------------
 * A process's steps
 */

static const struct script *script_for(int pid)
{
	for (int i = opt.npid_scripts - 1; i >= 0; i--)
		if (opt.pid_scripts[i].pid == pid)
			return &opt.pid_scripts[i].sc;
	return opt.script.n ? &opt.script : NULL;
}

/*
 * The steps process c runs after the release: its --script-pid or --script steps, then the chaos
 * steps, printed in full because a random run that failed can only be looked into by replaying it.
 */
void build_script(struct pctx *c, struct script *sc)
{
	const struct script *base = script_for(c->p->pid);
	if (base)
		for (size_t i = 0; i < base->n; i++)
			script_push(sc, &base->s[i]);
	if (opt.chaos) {
		gen_chaos(c, sc);
		print_script_line(c, "chaos", sc);
	}
}
