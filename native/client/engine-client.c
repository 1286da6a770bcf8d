/*
 * faultline-engine-client: `faultline lazy-pages --engine SOCKET` in C, for high fan-out.
 *
 * One `faultline serve` serves many lazy restores; each restore is asked for by a drop-in for
 * `criu lazy-pages` that says it is ready when the engine listens on the restore's socket, waits,
 * prints the summary and exits with the restore's status. The Node client (src/cli/engine-client.ts)
 * costs ≈ 0.2 s of CPU and 50 MiB per restore; at 32 restores on 2 vCPUs their start-up was most of
 * the fan-out's time. This one does the same with a few syscalls: same flags (criu's spellings, via
 * the same accept / ignore / refuse table as src/cli/criu-options.ts), same one-line errors and exit
 * codes (2: a bad command line, 1: the restore failed or no engine), same readiness (--status-fd,
 * -d, --pidfile), same log lines. The engine formats the summary (the 'done' event's `stdout`), so
 * no formatting logic lives here.
 *
 * Wire protocol (src/cli/serve.ts): JSON lines over the engine's unix socket. We send one
 * {"op":"restore",…} and, on a fail-stop signal, {"op":"stop","reason":…}; we read events and look
 * only at event, position, socket, session, error and stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef FAULTLINE_VERSION
#define FAULTLINE_VERSION "unknown"
#endif
#define DEFAULT_ENGINE_SOCKET "/run/faultline/engine.sock" /* serve.ts DEFAULT_ENGINE_SOCKET */
#define MAX_COPY_PAGES 2048                              /* src/protocol/tuning.ts */
#define MAX_LINE (1 << 20)                               /* the engine's own bound on a request line */
#define MAX_DEPTH 64                                     /* JSON nesting we follow before calling it malformed */

/* ---- strings ---- */

struct buf { char *p; size_t n, cap; };

static _Noreturn void oom(void) { fputs("faultline: error: out of memory\n", stderr); exit(1); }

/* Room for `more` bytes and a NUL; no memory is one line and exit 1, like every other failure. */
static void reserve(struct buf *b, size_t more) {
  if (b->n + more + 1 <= b->cap) return;
  size_t c = b->cap ? b->cap : 256;
  while (c < b->n + more + 1) c *= 2;
  char *q = realloc(b->p, c);
  if (!q) oom();
  b->p = q, b->cap = c;
}
static void put(struct buf *b, const char *s, size_t n) {
  reserve(b, n);
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}
static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }
static void vputf(struct buf *b, const char *fmt, va_list ap) {
  char small[512];
  va_list again;
  va_copy(again, ap);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  if (n < (int)sizeof small) put(b, small, n > 0 ? (size_t)n : 0);
  else { char *big = malloc((size_t)n + 1); if (!big) oom(); vsnprintf(big, (size_t)n + 1, fmt, again); put(b, big, (size_t)n); free(big); }
  va_end(again);
}
static void putf(struct buf *b, const char *fmt, ...) { va_list ap; va_start(ap, fmt); vputf(b, fmt, ap); va_end(ap); }

/* A JSON string as JSON.stringify writes it (the Node client's --json output is compared byte for byte). */
static void put_json(struct buf *b, const char *s) {
  puts_(b, "\"");
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"') puts_(b, "\\\"");
    else if (*c == '\\') puts_(b, "\\\\");
    else if (*c == '\n') puts_(b, "\\n");
    else if (*c == '\r') puts_(b, "\\r");
    else if (*c == '\t') puts_(b, "\\t");
    else if (*c == '\b') puts_(b, "\\b");
    else if (*c == '\f') puts_(b, "\\f");
    else if (*c < 0x20) putf(b, "\\u%04x", *c);
    else put(b, (const char *)c, 1);
  }
  puts_(b, "\"");
}

/* Whole writes: a line reaches a shared log or pipe in one piece. */
static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

static const char *errname(int e) { const char *n = strerrorname_np(e); return n ? n : "EIO"; }

/* ---- options (what lazy-pages.ts and criu-options.ts accept with --engine) ---- */

static struct {
  const char *images, *work, *log_file, *pidfile, *status_fd, *address, *port, *engine, *log_format;
  const char *fault_around, *fill_chunk, *record_faults, *prefetch, *lanes, *request_order, *socket_group;
  const char *connect_timeout, *reply_timeout, *recover_timeout_ms;
  int verbosity, daemon, json, page_server, help, version, stats;
  int tls_given[5];   /* --tls-cacert, -cacrl, -cert, -key, -no-cn-verify: refused without --tls */
  int engine_own[8];  /* flags the engine owns or does not serve: refused with --engine */
  int close_fds[64], nclose, positional;
} o = { .images = ".", .verbosity = 2 /* criu's DEFAULT_LOGLEVEL */ };

static const char *const TLS_FLAGS[5] = { "--tls-cacert", "--tls-cacrl", "--tls-cert", "--tls-key", "--tls-no-cn-verify" };
/* In lazy-pages.ts's order, so that the first one given is named as the Node client names it. */
static const char *const OWN_FLAGS[8] = { "--tls", "--resume", "--recover-timeout", "--no-guardian", "--workers", "--nice", "--fill-nice", "--metrics" };

#define RESTORE_ONLY "a restore-only option (criu rejects it here too)"

/* One option: a value (str), a switch (flag), refused (why), -v or --close (how), or else dropped. */
struct opt {
  const char *name;
  char letter;
  char arg;            /* 'n' none, 'r' required, 'o' optional (only --x=v or -xV, as getopt) */
  char criu_bool;      /* criu's BOOL_OPT: --no-<name> turns it off */
  char how;            /* 'v' verbosity, 'c' close */
  const char **str;
  int *flag;
  const char *why;
  const char *meta;    /* faultline's own options (commander): the placeholder its messages name */
};

/* Rows name only what they set; the rest is zero. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const struct opt OPTS[] = {
  /* criu's options that `lazy-pages` uses */
  {"images-dir", 'D', 'r', .str = &o.images}, {"work-dir", 'W', 'r', .str = &o.work}, {"log-file", 'o', 'r', .str = &o.log_file},
  {"verbosity", 'v', 'o', .how = 'v'}, {"pidfile", 0, 'r', .str = &o.pidfile}, {"status-fd", 0, 'r', .str = &o.status_fd},
  {"daemon", 'd', 'n', 1, .flag = &o.daemon}, {"restore-detached", 0, 'n', 1, .flag = &o.daemon}, {"address", 0, 'r', .str = &o.address},
  {"port", 0, 'r', .str = &o.port}, {"tls", 0, 'n', 1, .flag = &o.engine_own[0]}, {"tls-cacert", 0, 'r', .flag = &o.tls_given[0]},
  {"tls-cacrl", 0, 'r', .flag = &o.tls_given[1]}, {"tls-cert", 0, 'r', .flag = &o.tls_given[2]}, {"tls-key", 0, 'r', .flag = &o.tls_given[3]},
  {"tls-no-cn-verify", 0, 'n', .flag = &o.tls_given[4]}, {"close", 0, 'r', .how = 'c'}, {"help", 'h', 'n', .flag = &o.help},
  {"version", 'V', 'n', .flag = &o.version}, {"display-stats", 0, 'n', 1, .flag = &o.stats}, {"page-server", 0, 'n', 1, .flag = &o.page_server},
  /* criu's options that mean nothing for lazy-pages: dropped, as criu drops them (criu-options.ts) */
  {"no-default-config", 0, 'n'}, {"log-pid", 0, 'n', 1}, {"unprivileged", 0, 'n', 1}, {"deprecated", 0, 'n', 1}, {"lazy-pages", 0, 'n'},
  {"tree", 't', 'r'}, {"leave-stopped", 's', 'n'}, {"leave-running", 'R', 'n'}, {"restore-sibling", 'S', 'n', 1}, {"join-ns", 'J', 'r'},
  {"root", 'r', 'r'}, {"ext-unix-sk", 'x', 'o'}, {"tcp-established", 0, 'n', 1}, {"evasive-devices", 0, 'n', 1}, {"veth-pair", 0, 'r'},
  {"action-script", 0, 'r'}, {"link-remap", 0, 'n', 1}, {"shell-job", 'j', 'n', 1}, {"file-locks", 'l', 'n', 1}, {"prev-images-dir", 0, 'r'},
  {"track-mem", 0, 'n', 1}, {"libdir", 'L', 'r'}, {"cpu-cap", 0, 'o'}, {"force-irmap", 0, 'n', 1}, {"ext-mount-map", 'M', 'r'},
  {"manage-cgroups", 0, 'o'}, {"cgroup-root", 0, 'r'}, {"feature", 0, 'r'}, {"skip-mnt", 0, 'r'}, {"enable-fs", 0, 'r'},
  {"enable-external-sharing", 0, 'n'}, {"enable-external-masters", 0, 'n'}, {"freeze-cgroup", 0, 'r'}, {"ghost-limit", 0, 'r'},
  {"irmap-scan-path", 0, 'r'}, {"lsm-profile", 0, 'r'}, {"timeout", 0, 'r'}, {"external", 0, 'r'}, {"empty-ns", 0, 'r'}, {"extra", 0, 'n', 1},
  {"experimental", 0, 'n', 1}, {"all", 0, 'n'}, {"cgroup-props", 0, 'r'}, {"cgroup-props-file", 0, 'r'}, {"cgroup-dump-controller", 0, 'r'},
  {"skip-in-flight", 0, 'n', 1}, {"weak-sysctls", 0, 'n', 1}, {"tcp-close", 0, 'n', 1}, {"cgroup-yard", 0, 'r'}, {"pre-dump-mode", 0, 'r'},
  {"file-validation", 0, 'r'}, {"skip-file-rwx-check", 0, 'n', 1}, {"lsm-mount-context", 0, 'r'}, {"network-lock", 0, 'r'},
  {"ghost-fiemap", 0, 'n', 1}, {"allow-uprobes", 0, 'n', 1},
  /* criu's options whose meaning matters and that faultline does not do */
  {"config", 0, 'r', .why = "faultline does not read criu configuration files; pass the options on the command line"},
  {"ps-socket", 0, 'r', .why = "a page-server connection inherited as a file descriptor is not supported; use --address/--port"},
  {"stream", 0, 'n', 1, .why = "faultline reads image files, not a criu-image-streamer stream"},
  {"auto-dedup", 0, 'n', 1, .why = "faultline never punches served pages out of the images (criu --auto-dedup does)"},
  {"inherit-fd", 0, 'r', .why = RESTORE_ONLY}, {"exec-cmd", 0, 'n', .why = RESTORE_ONLY},
  {"mntns-compat-mode", 0, 'n', 1, .why = "only valid on restore (criu rejects it here too)"}, {"ms", 0, 'n', .why = "deprecated in criu, which rejects it"},
  /* faultline's own (main.ts) */
  {"json", 0, 'n', .flag = &o.json}, {"fault-around", 0, 'r', .str = &o.fault_around, .meta = "<pages>"},
  {"fill-chunk", 0, 'r', .str = &o.fill_chunk, .meta = "<pages>"}, {"record-faults", 0, 'r', .str = &o.record_faults, .meta = "<file>"},
  {"prefetch", 0, 'r', .str = &o.prefetch, .meta = "<file>"}, {"lanes", 0, 'r', .str = &o.lanes, .meta = "<n>"},
  {"request-order", 0, 'r', .str = &o.request_order, .meta = "<order>"}, {"connect-timeout-ms", 0, 'r', .str = &o.connect_timeout, .meta = "<ms>"},
  {"reply-timeout-ms", 0, 'r', .str = &o.reply_timeout, .meta = "<ms>"}, {"recover-timeout-ms", 0, 'r', .str = &o.recover_timeout_ms, .meta = "<ms>"},
  {"socket-group", 0, 'r', .str = &o.socket_group, .meta = "<group>"}, {"engine", 0, 'r', .str = &o.engine, .meta = "<socket>"},
  {"log-format", 0, 'r', .str = &o.log_format, .meta = "<format>"}, {"resume", 0, 'n', .flag = &o.engine_own[1]},
  {"recover-timeout", 0, 'r', .flag = &o.engine_own[2], .meta = "<seconds>"}, {"no-guardian", 0, 'n', .flag = &o.engine_own[3]},
  {"workers", 0, 'r', .flag = &o.engine_own[4], .meta = "<n>"}, {"nice", 0, 'r', .flag = &o.engine_own[5], .meta = "<n>"},
  {"fill-nice", 0, 'r', .flag = &o.engine_own[6], .meta = "<n>"}, {"metrics", 0, 'r', .flag = &o.engine_own[7], .meta = "<address>"},
};
#pragma GCC diagnostic pop

/* "faultline: error: …" on stderr in one write, as the Node client's lines. */
static void error_line(const char *fmt, va_list ap) {
  struct buf b = {0};
  puts_(&b, "faultline: error: ");
  vputf(&b, fmt, ap);
  puts_(&b, "\n");
  write_all(2, b.p, b.n);
}

static _Noreturn void usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_line(fmt, ap);
  va_end(ap);
  exit(2);
}

static const struct opt *find_long(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof OPTS / sizeof *OPTS; i++)
    if (strlen(OPTS[i].name) == len && !strncmp(OPTS[i].name, name, len)) return &OPTS[i];
  return NULL;
}
static const struct opt *find_short(char c) {
  for (size_t i = 0; i < sizeof OPTS / sizeof *OPTS; i++) if (OPTS[i].letter == c) return &OPTS[i];
  return NULL;
}

static void set_verbosity(const char *given, const char *v) {
  if (!v) { o.verbosity++; return; }
  size_t vs = strspn(v, "v"), ds = strspn(v, "0123456789");
  if (vs == strlen(v)) o.verbosity += (int)vs + 1;          /* -vvv reaches getopt as -v with "vv" */
  else if (ds == strlen(v)) o.verbosity = atoi(v);
  else usage_error("option '%s': verbosity must be a number or more v's, got '%s'", given, v);
}

/* One option, given as `given` (--name or -x), with its value if it came attached. */
static void take(const struct opt *p, const char *given, const char *value, int argc, char **argv, int *i) {
  if (p->arg == 'r' && !value) {
    if (*i + 1 >= argc) {
      if (p->meta) usage_error("option '--%s %s' argument missing", p->name, p->meta);
      usage_error("option '%s' needs an argument", given);
    }
    value = argv[++*i];
  }
  if (p->arg == 'n' && value) usage_error("option '%s' takes no argument", given);
  if (p->why) usage_error("lazy-pages: option '%s' is not supported: %s", given, p->why);
  if (p->str) *p->str = value;
  else if (p->flag) *p->flag = 1;
  else if (p->how == 'v') set_verbosity(given, value);
  else if (p->how == 'c') {
    if (!*value || strspn(value, "0123456789") != strlen(value)) usage_error("--close must be a file descriptor number, got '%s'", value);
    if (o.nclose < 64) o.close_fds[o.nclose++] = atoi(value);
  }
}

/* criu-options.ts translateCriuArgv + commander, in one pass. */
static void parse(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) { o.positional += argc - i - 1; break; }
    if (!strncmp(a, "--", 2)) {
      const char *name = a + 2, *eq = strchr(name, '=');
      size_t len = eq ? (size_t)(eq - name) : strlen(name);
      char given[128];
      snprintf(given, sizeof given, "--%.*s", (int)len, name);
      const struct opt *p = find_long(name, len);
      if (p) { take(p, given, eq ? eq + 1 : NULL, argc, argv, &i); continue; }
      p = len > 3 && !strncmp(name, "no-", 3) ? find_long(name + 3, len - 3) : NULL;
      if (p && p->criu_bool && !eq) {
        /* Turning off a refused or ignored option asks for nothing. */
        if (p->flag) *p->flag = 0;
        continue;
      }
      usage_error("unknown option '%s'", a);
    }
    if (a[0] == '-' && a[1]) {
      /* A cluster such as -dv4, split the way getopt does. */
      for (const char *c = a + 1; *c; c++) {
        const struct opt *p = find_short(*c);
        char given[3] = { '-', *c, 0 };
        if (!p) usage_error("unknown option '-%s'", c);
        if (p->arg == 'n') { take(p, given, NULL, argc, argv, &i); continue; }
        take(p, given, c[1] ? c + 1 : NULL, argc, argv, &i);
        break;
      }
      continue;
    }
    o.positional++;
  }
}

/* ---- validation, as lazy-pages.ts does it before anything starts ---- */

/* path.resolve(base, p): absolute, without . and .. and repeated slashes. */
static char *resolve(const char *base, const char *p) {
  struct buf in = {0};
  if (p[0] != '/') {
    char *cwd = base ? NULL : getcwd(NULL, 0);
    if (!base && !cwd) usage_error("cannot resolve %s: the current directory is gone (%s)", p, errname(errno));
    puts_(&in, base ? base : cwd);
    puts_(&in, "/");
    free(cwd);
  }
  puts_(&in, p);
  char *out = malloc(in.n + 2);
  if (!out) oom();
  size_t n = 0;
  for (char *s = in.p; *s;) {
    while (*s == '/') s++;
    size_t len = strcspn(s, "/");
    if (len == 0 || (len == 1 && s[0] == '.')) { s += len; continue; }
    if (len == 2 && s[0] == '.' && s[1] == '.') { while (n > 0 && out[--n] != '/'); s += len; continue; }
    out[n++] = '/';
    memcpy(out + n, s, len);
    n += len, s += len;
  }
  if (n == 0) out[n++] = '/';
  out[n] = 0;
  free(in.p);
  return out;
}

/* Number(v) as a positive integer (lazy-pages.ts positiveInt). */
static long long positive_int(const char *v, const char *flag) {
  char *end;
  double d = strtod(v, &end);
  while (*end == ' ' || *end == '\t' || *end == '\n') end++;
  if (!*v || *end || d != d || d < 1 || d > 9007199254740991.0 || d != (double)(long long)d) usage_error("%s must be a positive integer, got '%s'", flag, v);
  return (long long)d;
}
static long long bounded(const char *v, const char *flag, long long max) {
  long long n = positive_int(v, flag);
  if (n > max) usage_error("%s must be at most %lld, got '%s'", flag, max, v);
  return n;
}
static long long millis(const char *v, const char *flag) {
  if (!*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 9 || atoll(v) > 86400000) usage_error("%s must be a number of milliseconds (0-86400000), got '%s'", flag, v);
  return atoll(v);
}

/* --socket-group: a number, or a name looked up in /etc/group (as lazy-pages.ts does, not NSS). */
static long long group_id(const char *g) {
  if (*g && strspn(g, "0123456789") == strlen(g)) return atoll(g);
  FILE *f = fopen("/etc/group", "re");
  char line[4096];
  size_t len = strlen(g);
  while (f && fgets(line, sizeof line, f)) {
    char *gid = strchr(line, ':');
    if (!gid || (size_t)(gid - line) != len || strncmp(line, g, len)) continue;
    gid = strchr(gid + 1, ':');
    fclose(f);
    return gid ? atoll(gid + 1) : 0;
  }
  if (f) fclose(f);
  usage_error("--socket-group %s: no such group in /etc/group", g);
}

/* ---- logging: criu-shaped text lines (src/cli/log.ts) or pino's JSON lines ---- */

static int log_fd = 2, log_json;
static struct timespec t0;

/* log.ts fieldValue: a string that would not read back as one word is quoted. */
static void put_field(struct buf *b, const char *s) {
  if (!*s || strpbrk(s, " \t\n\r\v\f\"=")) put_json(b, s);
  else puts_(b, s);
}

static void log_line(int level, const char *msg, const char *socket, double session) {
  if (level < (int[]){60, 50, 40, 30, 20}[o.verbosity < 0 ? 0 : o.verbosity > 4 ? 4 : o.verbosity]) return;
  struct buf b = {0};
  if (log_json) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    putf(&b, "{\"level\":%d,\"time\":%lld,\"pid\":%d,\"name\":\"faultline\",", level, (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000, (int)getpid());
    if (socket) { puts_(&b, "\"socket\":"); put_json(&b, socket); putf(&b, ",\"session\":%.15g,", session); }
    puts_(&b, "\"msg\":");
    put_json(&b, msg);
    puts_(&b, "}\n");
  } else {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long us = (now.tv_sec - t0.tv_sec) * 1000000LL + (now.tv_nsec - t0.tv_nsec) / 1000;
    putf(&b, "(%02lld.%06lld) %d: %s%s", us / 1000000, us % 1000000, (int)getpid(), level >= 50 ? "Error (faultline): " : level >= 40 ? "Warn  (faultline): " : "", msg);
    if (socket) { puts_(&b, " socket="); put_field(&b, socket); putf(&b, " session=%.15g", session); }
    puts_(&b, "\n");
  }
  write_all(log_fd, b.p, b.n); /* a log that cannot be written must not take the restore down with it */
  free(b.p);
}

/* ---- the restore ---- */

static const char *engine_at;   /* the engine socket, resolved */

/* The end of a restore that did not complete: one line on stderr, and {ok:false} on stdout with --json. */
static _Noreturn void fail(const char *json_error, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_line(fmt, ap);
  va_end(ap);
  if (json_error && o.json) {
    struct buf j = {0};
    puts_(&j, "{\"ok\":false,\"error\":");
    put_json(&j, json_error);
    puts_(&j, "}\n");
    write_all(1, j.p, j.n);
  }
  exit(1);
}

/* The fields of an engine event we act on; everything else in the line is only checked to be JSON. */
struct event { struct buf event, socket, error, out; double position, session; int has_out; };

struct jp { const char *s, *end; };

/* Skips JSON whitespace (a NUL byte is not); says whether anything is left. */
static int ws(struct jp *j) { while (j->s < j->end && *j->s && strchr(" \t\r\n", *j->s)) j->s++; return j->s < j->end; }
static int hex4(const char *s, unsigned *v) {
  *v = 0;
  for (int k = 0; k < 4; k++) {
    char c = s[k];
    unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
    if (d == 16) return -1;
    *v = *v * 16 + d;
  }
  return 0;
}
static void put_utf8(struct buf *b, unsigned cp) {
  char u[4];
  if (cp < 0x80) u[0] = (char)cp, put(b, u, 1);
  else if (cp < 0x800) u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), put(b, u, 2);
  else if (cp < 0x10000) u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3F)), u[2] = (char)(0x80 | (cp & 0x3F)), put(b, u, 3);
  else u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3F)), u[2] = (char)(0x80 | (cp >> 6 & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), put(b, u, 4);
}

/* A JSON string, decoded into `out` (NULL: only checked). */
static int jstring(struct jp *j, struct buf *out) {
  if (j->s >= j->end || *j->s != '"') return -1;
  for (j->s++; j->s < j->end; j->s++) {
    unsigned char c = (unsigned char)*j->s;
    if (c == '"') { j->s++; if (out) put(out, "", 0); return 0; }
    if (c < 0x20) return -1;
    if (c != '\\') { if (out) put(out, j->s, 1); continue; }
    if (++j->s >= j->end) return -1;
    const char *esc = strchr("\"\\/bfnrt", *j->s);
    if (esc && *j->s) { if (out) put(out, &"\"\\/\b\f\n\r\t"[esc - "\"\\/bfnrt"], 1); continue; }
    unsigned cp, lo;
    if (*j->s != 'u' || j->end - j->s < 5 || hex4(j->s + 1, &cp)) return -1;
    j->s += 4;
    if (cp >= 0xD800 && cp < 0xDC00 && j->end - j->s >= 7 && j->s[1] == '\\' && j->s[2] == 'u' && !hex4(j->s + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      j->s += 6;
    } else if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate: what Node writes for it */
    if (out) put_utf8(out, cp);
  }
  return -1;
}

static int jnumber(struct jp *j, double *v) {
  const char *s = j->s;
  if (s < j->end && *s == '-') s++;
  if (s >= j->end || *s < '0' || *s > '9') return -1;
  if (*s == '0') s++; else while (s < j->end && *s >= '0' && *s <= '9') s++;
  if (s < j->end && *s == '.') { if (++s >= j->end || *s < '0' || *s > '9') return -1; while (s < j->end && *s >= '0' && *s <= '9') s++; }
  if (s < j->end && (*s == 'e' || *s == 'E')) {
    if (++s < j->end && (*s == '+' || *s == '-')) s++;
    if (s >= j->end || *s < '0' || *s > '9') return -1;
    while (s < j->end && *s >= '0' && *s <= '9') s++;
  }
  char tmp[64];
  size_t n = (size_t)(s - j->s);
  snprintf(tmp, sizeof tmp, "%.*s", (int)(n < 63 ? n : 63), j->s);
  if (v) *v = strtod(tmp, NULL);
  j->s = s;
  return 0;
}

/* Any JSON value, checked and stepped over; at depth 0 the fields of an object go into `e`. */
static int jvalue(struct jp *j, int depth, struct event *e) {
  if (depth > MAX_DEPTH || !ws(j)) return -1;
  char c = *j->s;
  if (c == '"') return jstring(j, NULL);
  if (c == '-' || (c >= '0' && c <= '9')) return jnumber(j, NULL);
  for (const char *const *lit = (const char *const[]){"true", "false", "null", NULL}; *lit; lit++)
    if ((size_t)(j->end - j->s) >= strlen(*lit) && !strncmp(j->s, *lit, strlen(*lit))) { j->s += strlen(*lit); return 0; }
  if (c != '{' && c != '[') return -1;
  char close = c == '{' ? '}' : ']';
  j->s++;
  if (!ws(j)) return -1;
  if (*j->s == close) { j->s++; return 0; }
  for (;;) {
    if (c == '{') {
      struct buf key = {0};
      if (!ws(j) || jstring(j, &key) || !ws(j) || *j->s != ':') { free(key.p); return -1; }
      j->s++;
      const char *k = key.p ? key.p : "";
      struct buf *str = NULL;
      double *num = NULL;
      if (e && depth == 0) {
        if (!strcmp(k, "event")) str = &e->event;
        else if (!strcmp(k, "socket")) str = &e->socket;
        else if (!strcmp(k, "error")) str = &e->error;
        else if (!strcmp(k, "stdout")) str = &e->out, e->has_out = 0;
        else if (!strcmp(k, "position")) num = &e->position;
        else if (!strcmp(k, "session")) num = &e->session;
      }
      free(key.p);
      if (!ws(j)) return -1;
      if (str && *j->s == '"') {
        str->n = 0;
        if (jstring(j, str)) return -1;
        if (str == &e->out) e->has_out = 1;
      }
      else if (num && (*j->s == '-' || (*j->s >= '0' && *j->s <= '9'))) { if (jnumber(j, num)) return -1; }
      else if (jvalue(j, depth + 1, NULL)) return -1;
    } else if (jvalue(j, depth + 1, NULL)) return -1;
    if (!ws(j)) return -1;
    if (*j->s == close) { j->s++; return 0; }
    if (*j->s++ != ',') return -1;
  }
}

static int sock = -1, ready_fd = -1, announced;
static const char *pidfile;

static void send_line(const char *op, const char *reason) {
  struct buf b = {0};
  putf(&b, "{\"op\":\"%s\",\"reason\":", op);
  put_json(&b, reason);
  puts_(&b, "}\n");
  write_all(sock, b.p, b.n); /* a connection that is gone is told by the read side */
  free(b.p);
}

/* 'listening': the restorer may start. Whoever waits on these starts it: one we cannot write stops it, as in criu. */
static void on_listening(struct event *e) {
  log_line(30, "the engine waits for the restorer", e->socket.p ? e->socket.p : "", e->session);
  if (announced++) return;
  struct buf why = {0};
  if (pidfile) {
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    int fd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0 || write_all(fd, pid, (size_t)n)) putf(&why, "cannot say we are ready: --pidfile %s: %s", o.pidfile, errname(errno));
    if (fd >= 0) close(fd);
  }
  if (ready_fd >= 0 && write_all(ready_fd, "", 1) && !why.n) {
    if (o.daemon) putf(&why, "cannot say we are ready: -d: the waiting parent is gone (%s)", errname(errno));
    else putf(&why, "cannot say we are ready: --status-fd %s: %s", o.status_fd, errname(errno));
  }
  if (ready_fd >= 0) close(ready_fd);
  ready_fd = -1;
  if (why.n) send_line("stop", why.p);
  free(why.p);
}

/* One line from the engine; returns an exit code once the restore has ended, else -1. */
static int on_line(const char *line, size_t n) {
  struct event e = {0};
  struct jp j = { line, line + n };
  if (jvalue(&j, 0, &e) || ws(&j)) {
    size_t cut = n < 120 ? n : 120;
    while (cut < n && cut > 0 && ((unsigned char)line[cut] & 0xC0) == 0x80) cut--; /* not inside a UTF-8 character */
    fail(NULL, "--engine %s: the engine sent something that is not JSON: %.*s", engine_at, (int)cut, line);
  }
  const char *ev = e.event.p ? e.event.p : "";
  int code = -1;
  if (!strcmp(ev, "queued")) {
    struct buf m = {0};
    putf(&m, "the engine is full: this restore waits, number %.15g in its queue", e.position);
    log_line(40, m.p, NULL, 0);
    free(m.p);
  } else if (!strcmp(ev, "listening")) on_listening(&e);
  else if (!strcmp(ev, "done")) {
    if (!e.has_out) fail("the engine sent no summary text", "--engine %s: the engine's 'done' has no stdout text (an engine older than this client: update faultline serve)", engine_at);
    write_all(1, e.out.p ? e.out.p : "", e.out.n);
    code = 0;
  } else if (!strcmp(ev, "failed") || !strcmp(ev, "refused")) {
    const char *err = e.error.p ? e.error.p : "";
    fail(err, "%s", err);
  }
  free(e.event.p), free(e.socket.p), free(e.error.p), free(e.out.p);
  return code;
}

/* Signals whose default ends a process: each ends this restore through fail-stop (lazy-pages.ts FAIL_STOP_SIGNALS). */
static const struct { int sig; const char *name; } STOP_SIGNALS[] = {
  {SIGINT, "SIGINT"}, {SIGTERM, "SIGTERM"}, {SIGHUP, "SIGHUP"}, {SIGQUIT, "SIGQUIT"}, {SIGUSR1, "SIGUSR1"}, {SIGUSR2, "SIGUSR2"},
  {SIGALRM, "SIGALRM"}, {SIGVTALRM, "SIGVTALRM"}, {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGPWR, "SIGPWR"}, {SIGSTKFLT, "SIGSTKFLT"},
};

static int run(const char *request) {
  /* Blocked before the connection exists and read from a signalfd once the request is sent: a
   * signal that comes early still stops this restore instead of being lost before it. */
  sigset_t set;
  sigemptyset(&set);
  for (size_t k = 0; k < sizeof STOP_SIGNALS / sizeof *STOP_SIGNALS; k++) sigaddset(&set, STOP_SIGNALS[k].sig);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  if (sfd < 0) fail(errname(errno), "cannot watch for signals: signalfd: %s", errname(errno));

  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (strlen(engine_at) >= sizeof addr.sun_path)
    fail("ENAMETOOLONG", "--engine %s: longer than a unix socket path may be (%zu bytes)", engine_at, sizeof addr.sun_path - 1);
  strcpy(addr.sun_path, engine_at);
  sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int e = errno;
    const char *why = e == ENOENT || e == ECONNREFUSED ? "no engine listens there (start one with `faultline serve`)"
                      : e == EACCES ? "not allowed to connect (the engine socket is 0600: run as root or as its user)" : errname(e);
    fail(why, "--engine %s: %s", engine_at, why);
  }
  if (write_all(sock, request, strlen(request))) fail(errname(errno), "--engine %s: %s", engine_at, errname(errno));

  struct buf in = {0};
  for (;;) {
    struct pollfd p[2] = { { sock, POLLIN, 0 }, { sfd, POLLIN, 0 } };
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fail(errname(errno), "waiting on the engine: poll: %s", errname(errno));
    }
    struct signalfd_siginfo si;
    if (p[1].revents && read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
      /* The same reason as the Node client's: the engine fail-stops this restore and says so. */
      const char *name = "a signal";
      for (size_t k = 0; k < sizeof STOP_SIGNALS / sizeof *STOP_SIGNALS; k++) if ((int)si.ssi_signo == STOP_SIGNALS[k].sig) name = STOP_SIGNALS[k].name;
      struct buf r = {0};
      putf(&r, "faultline lazy-pages --engine received %s before the restore completed", name);
      send_line("stop", r.p);
      free(r.p);
    }
    if (!p[0].revents) continue;
    reserve(&in, 65536); /* room to read into */
    ssize_t got = read(sock, in.p + in.n, in.cap - in.n - 1);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(errname(errno), "--engine %s: %s", engine_at, errname(errno));
    if (got == 0) fail("engine connection closed", "--engine %s: the engine closed the connection before the restore ended", engine_at);
    in.n += (size_t)got;
    char *start = in.p, *nl;
    while ((nl = memchr(start, '\n', in.n - (size_t)(start - in.p)))) {
      int code = on_line(start, (size_t)(nl - start));
      if (code >= 0) return code;
      start = nl + 1;
    }
    in.n -= (size_t)(start - in.p);
    memmove(in.p, start, in.n);
    if (in.n > MAX_LINE) fail(NULL, "--engine %s: the engine sent a line over %d bytes", engine_at, MAX_LINE);
  }
}

/* -d: detach once ready, as lazy-pages.ts's daemonize does with a re-run child; here a fork. The
 * parent returns 0 after the child's readiness byte (then writes --status-fd), or 1 if it died first. */
static void daemonize(const char *log_path, int status_fd) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) fail(errname(errno), "-d: pipe: %s", errname(errno));
  int out = -1;
  if (log_path && strcmp(log_path, "-")) {
    /* Truncated once here (criu's O_TRUNC); the child appends, so its log lines and whatever reaches its stdout and stderr never overwrite one another. */
    out = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (out < 0) usage_error("-o %s: cannot open the log file %s: %s", o.log_file, log_path, errname(errno));
  }
  pid_t pid = fork();
  if (pid < 0) fail(errname(errno), "-d: fork: %s", errname(errno));
  if (pid == 0) {
    close(fds[0]);
    setsid();
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    if (!log_path || strcmp(log_path, "-")) dup2(out >= 0 ? out : null, 1), dup2(out >= 0 ? out : null, 2);
    if (null > 2) close(null);
    if (out > 2) close(out);
    if (status_fd > 2) close(status_fd); /* the parent's to write */
    ready_fd = fds[1];
    log_fd = log_path && !strcmp(log_path, "-") ? 1 : 2;
    return;
  }
  close(fds[1]);
  char byte;
  ssize_t n;
  while ((n = read(fds[0], &byte, 1)) < 0 && errno == EINTR);
  if (n != 1) {
    int file = log_path && strcmp(log_path, "-");
    fprintf(stderr, "faultline: error: the lazy-pages daemon exited before it was ready%s%s%s\n", file ? " (see " : "", file ? log_path : "", file ? ")" : "");
    exit(1);
  }
  if (status_fd >= 0) { write_all(status_fd, "", 1); close(status_fd); }
  exit(0);
}

static void help(void) {
  printf("Usage: faultline-engine-client [options]\n\n"
         "Has a running `faultline serve` serve one lazy restore, as `faultline lazy-pages --engine SOCKET`\n"
         "does (a drop-in for `criu lazy-pages`): ready once the engine listens on WORK/lazy-pages.socket,\n"
         "then waits, prints the summary and exits with the restore's status.\n\n"
         "  -D, --images-dir DIR      checkpoint images (default .)\n"
         "  -W, --work-dir DIR        lazy-pages.socket and relative -o/--pidfile go here (default: -D)\n"
         "  --engine SOCKET           the engine (default $FAULTLINE_ENGINE, else " DEFAULT_ENGINE_SOCKET ")\n"
         "  --status-fd FD            one NUL byte to FD once ready, then close it\n"
         "  -d, --daemon              detach once ready\n"
         "  --pidfile FILE            our pid, once ready\n"
         "  -o, --log-file FILE       log here ('-': stdout); -v/--verbosity LEVEL 0-4; --log-format text|json\n"
         "  --json                    the summary (or {\"ok\":false,…}) as JSON\n"
         "  --page-server --address A --port P [--lanes 1|2] [--request-order priority|fifo]\n"
         "      [--connect-timeout-ms MS] [--reply-timeout-ms MS] [--recover-timeout-ms MS]\n"
         "  --fault-around PAGES, --fill-chunk PAGES, --record-faults FILE, --prefetch FILE, --socket-group GROUP\n"
         "Every other criu option is accepted where it means nothing here and refused where it would matter;\n"
         "--tls, --resume, --recover-timeout, --workers, --nice, --fill-nice, --metrics, --no-guardian are refused\n"
         "(the engine owns them or does not serve such a restore).\n");
}

int main(int argc, char **argv) {
  clock_gettime(CLOCK_MONOTONIC, &t0);
  signal(SIGPIPE, SIG_IGN); /* a closed socket or pipe is an error to report, not a death */
  parse(argc, argv);
  if (o.positional) usage_error("too many arguments for 'lazy-pages'. Expected 0 arguments but got %d.", o.positional);
  if (o.help) { help(); return 0; }
  for (int k = 0; k < o.nclose; k++) close(o.close_fds[k]);
  if (o.version) { printf("Version: %s (faultline)\n", FAULTLINE_VERSION); return 0; }

  /* criu's rule: -D and -W relative to the current directory, -W defaulting to -D; a given -W must be a writable directory. */
  char *images = resolve(NULL, o.images), *work = resolve(NULL, o.work ? o.work : o.images);
  if (o.work) {
    struct stat st;
    if (stat(work, &st) < 0) usage_error("-W %s: %s does not exist (%s)", o.work, work, errname(errno));
    if (!S_ISDIR(st.st_mode)) usage_error("-W %s: %s is not a directory", o.work, work);
    if (access(work, W_OK | X_OK) < 0) usage_error("-W %s: %s is not writable", o.work, work);
  }
  int status_fd = -1;
  if (o.status_fd) {
    if (!*o.status_fd || strspn(o.status_fd, "0123456789") != strlen(o.status_fd) || strlen(o.status_fd) > 9) usage_error("--status-fd must be a file descriptor number, got '%s'", o.status_fd);
    status_fd = atoi(o.status_fd);
    int fl = fcntl(status_fd, F_GETFL);
    if (fl < 0) usage_error("--status-fd %s: not an open file descriptor", o.status_fd);
    if ((fl & O_ACCMODE) == O_RDONLY) usage_error("--status-fd %s: open for reading only", o.status_fd);
  }
  if (o.log_format && strcmp(o.log_format, "text") && strcmp(o.log_format, "json")) usage_error("--log-format must be 'text' or 'json', got '%s'", o.log_format);
  log_json = o.log_format && !strcmp(o.log_format, "json");
  long long fault_around = o.fault_around ? bounded(o.fault_around, "--fault-around", MAX_COPY_PAGES) : 0;
  long long fill_chunk = o.fill_chunk ? bounded(o.fill_chunk, "--fill-chunk", MAX_COPY_PAGES) : 0;
  if (o.pidfile) {
    /* Checked now: a pidfile that cannot be written is found before the restore begins. */
    pidfile = resolve(work, o.pidfile);
    char *dir = strdup(pidfile);
    if (!dir) oom();
    *strrchr(dir, '/') = 0;
    if (access(*dir ? dir : "/", W_OK) < 0 || (access(pidfile, F_OK) == 0 && access(pidfile, W_OK) < 0)) usage_error("--pidfile %s: cannot write %s (%s)", o.pidfile, pidfile, errname(errno));
    free(dir);
  }
  long long gid = o.socket_group ? group_id(o.socket_group) : -1;
  for (int k = 0; k < 8; k++)
    if (o.engine_own[k]) usage_error("%s cannot go with --engine: %s", OWN_FLAGS[k], k < 3 ? "the engine does not serve such a restore yet (run this one stand-alone)" : "it is the engine's (faultline serve)");

  struct buf req = {0};
  puts_(&req, "{\"op\":\"restore\",\"imagesDir\":");
  put_json(&req, images);
  puts_(&req, ",\"workDir\":");
  put_json(&req, work);
  if (o.page_server) {
    long long port = o.port ? positive_int(o.port, "--port") : 0;
    if (!port) usage_error("--page-server needs --port (and usually --address)");
    if (port > 65535) usage_error("--port must be a port number (1-65535), got '%s'", o.port);
    long long lanes = positive_int(o.lanes ? o.lanes : "1", "--lanes");
    if (lanes != 1 && lanes != 2) usage_error("--lanes must be 1 (a CRIU page server) or 2 (faultline's), got '%s'", o.lanes);
    for (int k = 0; k < 5; k++) if (o.tls_given[k]) usage_error("%s given without --tls: the connection would not be encrypted", TLS_FLAGS[k]);
    long long connect_ms = positive_int(o.connect_timeout ? o.connect_timeout : "10000", "--connect-timeout-ms");
    long long reply_ms = millis(o.reply_timeout ? o.reply_timeout : "30000", "--reply-timeout-ms");
    long long recover_ms = millis(o.recover_timeout_ms ? o.recover_timeout_ms : "0", "--recover-timeout-ms");
    const char *order = o.request_order ? o.request_order : "priority";
    if (strcmp(order, "priority") && strcmp(order, "fifo")) usage_error("--request-order must be 'priority' or 'fifo', got '%s'", order);
    /* criu's client resolves a missing --address as getaddrinfo(NULL): the loopback address. */
    puts_(&req, ",\"pageServer\":{\"address\":");
    put_json(&req, o.address ? o.address : "127.0.0.1");
    putf(&req, ",\"port\":%lld,\"lanes\":%lld,\"connectTimeoutMs\":%lld,\"replyTimeoutMs\":%lld,\"recoverTimeoutMs\":%lld,\"requestOrder\":\"%s\"}", port, lanes, connect_ms, reply_ms, recover_ms, order);
  } else {
    for (int k = 0; k < 5; k++) if (o.tls_given[k]) usage_error("%s given without --tls: the connection would not be encrypted", TLS_FLAGS[k]);
  }
  if (gid >= 0) putf(&req, ",\"socketGid\":%lld", gid);
  if (fault_around) putf(&req, ",\"faultAround\":%lld", fault_around);
  if (fill_chunk) putf(&req, ",\"fillChunk\":%lld", fill_chunk);
  if (o.record_faults) { puts_(&req, ",\"recordFaults\":"); put_json(&req, *o.record_faults ? resolve(NULL, o.record_faults) : ""); }
  if (o.prefetch) { puts_(&req, ",\"prefetch\":"); put_json(&req, *o.prefetch ? resolve(NULL, o.prefetch) : ""); }
  /* The engine prints for us: the summary text, or JSON (serve.ts, the 'done' event's stdout). */
  if (o.json) puts_(&req, ",\"json\":true");
  puts_(&req, "}\n");

  const char *env = getenv("FAULTLINE_ENGINE");
  engine_at = resolve(NULL, o.engine && *o.engine ? o.engine : env && *env ? env : DEFAULT_ENGINE_SOCKET);
  /* -o is relative to the work dir (criu chdir()s there before it opens the log). */
  const char *log_path = !o.log_file || !strcmp(o.log_file, "-") ? o.log_file : resolve(work, o.log_file);
  if (o.daemon) daemonize(log_path, status_fd);
  else {
    ready_fd = status_fd;
    if (log_path && !strcmp(log_path, "-")) log_fd = 1;
    else if (log_path && (log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
      usage_error("-o %s: cannot open the log file %s: %s", o.log_file, log_path, errname(errno));
  }
  return run(req.p);
}
