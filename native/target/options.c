/*
 * The command line: usage() is the user's documentation of options, steps and exit codes, and
 * parse_options() fills `opt`, which it owns; nothing writes opt afterwards.
 */
#include "target.h"
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

struct options opt = {
	.connect_timeout_ms = 5000,
	.handover = HO_SPLIT,
	.threads = 1,
	.pattern = PAT_SEQ,
	.stride = 4,
	.fraction = 1.0,
	.seed = 1,
};

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
		"  sleep:MS                  sleep MS milliseconds (at most 60000), touching nothing\n"
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
		"failed, 5 a process was killed by a signal, 6 userfaultfd setup refused, 7 out of memory.\n");
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

static enum handover parse_handover(const char *s)
{
	if (!strcmp(s, "split"))
		return HO_SPLIT;
	if (!strcmp(s, "merged"))
		return HO_MERGED;
	if (!strcmp(s, "bytewise"))
		return HO_BYTEWISE;
	die(EXIT_USAGE, "--handover: expected split, merged or bytewise, got '%s'", s);
}

static enum pattern parse_pattern(const char *s)
{
	if (!strcmp(s, "seq"))
		return PAT_SEQ;
	if (!strcmp(s, "random"))
		return PAT_RANDOM;
	if (!strcmp(s, "stride"))
		return PAT_STRIDE;
	die(EXIT_USAGE, "--pattern: expected seq, random or stride, got '%s'", s);
}

static double parse_fraction(const char *s)
{
	char *end;
	double f = strtod(s, &end);
	if (end == s || *end || !(f >= 0 && f <= 1))
		die(EXIT_USAGE, "--fraction: expected a number in 0..1, got '%s'", s);
	return f;
}

static uint64_t parse_seed(const char *s)
{
	char *end;
	uint64_t v;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end)
		die(EXIT_USAGE, "--seed: bad value '%s'", s);
	return v;
}

static void add_zombie(const char *s)
{
	int pid = opt_long("--zombie", s, 1, INT_MAX);
	int *z = realloc(opt.zombies, sizeof(int) * (opt.nzombies + 1));
	if (!z)
		die(EXIT_NOMEM, "out of memory");
	opt.zombies = z;
	opt.zombies[opt.nzombies++] = pid;
}

/* A later --script replaces an earlier one. */
static void set_script(const char *s)
{
	opt.script.n = 0;
	parse_script("--script", s, &opt.script);
	opt.scripting = true;
}

static void add_script_pid(const char *s)
{
	char *end;
	long pid;
	struct pid_script *ps;
	errno = 0;
	pid = strtol(s, &end, 10);
	if (errno || end == s || *end != ':' || pid < 1 || pid > INT_MAX)
		die(EXIT_USAGE, "--script-pid: expected PID:STEPS, got '%s'", s);
	ps = realloc(opt.pid_scripts, sizeof(*ps) * (opt.npid_scripts + 1));
	if (!ps)
		die(EXIT_NOMEM, "out of memory");
	opt.pid_scripts = ps;
	ps[opt.npid_scripts].pid = (int)pid;
	memset(&ps[opt.npid_scripts].sc, 0, sizeof(ps[opt.npid_scripts].sc));
	parse_script("--script-pid", end + 1, &ps[opt.npid_scripts].sc);
	opt.npid_scripts++;
	opt.scripting = true;
}

static void set_chaos(const char *s)
{
	char *end;
	errno = 0;
	opt.chaos_seed = strtoull(s, &end, 0);
	if (errno || end == s || *end != ':')
		die(EXIT_USAGE, "--chaos: expected SEED:N, got '%s'", s);
	opt.chaos_n = (uint64_t)opt_long("--chaos", end + 1, 0, 1000000);
	opt.chaos = true;
	opt.scripting = true;
}

enum { OPT_HELP = '?' + 256 };

static const struct option long_options[] = {
	{ "plan", required_argument, 0, 'p' },	{ "connect-timeout-ms", required_argument, 0, 'c' },
	{ "handover", required_argument, 0, 'H' }, { "zombie", required_argument, 0, 'z' },
	{ "threads", required_argument, 0, 't' }, { "pattern", required_argument, 0, 'P' },
	{ "stride", required_argument, 0, 's' },   { "fraction", required_argument, 0, 'f' },
	{ "seed", required_argument, 0, 'S' },	   { "verify-all", no_argument, 0, 'v' },
	{ "wait-signal", no_argument, 0, 'w' },	   { "hold-ms", required_argument, 0, 'h' },
	{ "script", required_argument, 0, 'x' },   { "script-pid", required_argument, 0, 'X' },
	{ "latency-file", required_argument, 0, 'L' }, { "chaos", required_argument, 0, 'C' },
	{ "help", no_argument, 0, OPT_HELP },	   { 0, 0, 0, 0 },
};

/* One option from getopt_long; --help and getopt's own errors end the program here. */
static void set_option(int c, const char *arg)
{
	switch (c) {
	case 'p':
		opt.plan = arg;
		break;
	case 'c':
		opt.connect_timeout_ms = opt_long("--connect-timeout-ms", arg, 0, LONG_MAX / 1000000);
		break;
	case 'H':
		opt.handover = parse_handover(arg);
		break;
	case 'z':
		add_zombie(arg);
		break;
	case 't':
		opt.threads = opt_long("--threads", arg, 1, 1024);
		break;
	case 'P':
		opt.pattern = parse_pattern(arg);
		break;
	case 's':
		opt.stride = opt_long("--stride", arg, 1, LONG_MAX);
		break;
	case 'f':
		opt.fraction = parse_fraction(arg);
		break;
	case 'S':
		opt.seed = parse_seed(arg);
		break;
	case 'v':
		opt.verify_all = true;
		break;
	case 'w':
		opt.wait_signal = true;
		break;
	case 'h':
		opt.hold_ms = opt_long("--hold-ms", arg, 0, LONG_MAX / 1000);
		break;
	case 'x':
		set_script(arg);
		break;
	case 'X':
		add_script_pid(arg);
		break;
	case 'L':
		if (!*arg)
			die(EXIT_USAGE, "--latency-file: empty prefix");
		opt.latency_prefix = arg;
		break;
	case 'C':
		set_chaos(arg);
		break;
	case OPT_HELP:
		usage(stdout);
		exit(0);
	default:
		usage(stderr);
		exit(EXIT_USAGE);
	}
}

void parse_options(int argc, char **argv)
{
	int c;
	while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1)
		set_option(c, optarg);
	if (optind < argc)
		die(EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
	if (!opt.plan) {
		usage(stderr);
		exit(EXIT_USAGE);
	}
}
