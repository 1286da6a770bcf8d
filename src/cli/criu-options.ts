// CRIU's option parser (criu/config.c, CRIU 4.2) is shared by every criu command, so scripts pass
// `criu lazy-pages` and `criu page-server` whatever they pass elsewhere (zdtm always adds
// --no-default-config, runc adds its own set). This pre-pass gives `faultline lazy-pages` and
// `faultline page-server` the same surface: every option criu's getopt table knows is either handed
// to commander (implemented), dropped (it has no meaning for the command, in criu either), or
// refused with one line naming it. Options criu does not know (faultline's own) pass through.
import { UsageError } from './usage-error';

export type CriuCommand = 'lazy-pages' | 'page-server';
type Arg = 'none' | 'required' | 'optional';

interface Spec {
  arg: Arg;
  /** BOOL_OPT in config.c: --no-<name> exists and sets it back. */
  bool?: boolean;
  short?: string;
}

/** Every long option of criu 4.2's getopt table, with its short form. */
const CRIU: Record<string, Spec> = {
  tree: { arg: 'required', short: 't' },
  'leave-stopped': { arg: 'none', short: 's' },
  'leave-running': { arg: 'none', short: 'R' },
  'restore-detached': { arg: 'none', bool: true },
  'restore-sibling': { arg: 'none', bool: true, short: 'S' },
  daemon: { arg: 'none', bool: true, short: 'd' },
  'images-dir': { arg: 'required', short: 'D' },
  'work-dir': { arg: 'required', short: 'W' },
  'log-file': { arg: 'required', short: 'o' },
  'join-ns': { arg: 'required', short: 'J' },
  root: { arg: 'required', short: 'r' },
  'ext-unix-sk': { arg: 'optional', short: 'x' },
  help: { arg: 'none', short: 'h' },
  'tcp-established': { arg: 'none', bool: true },
  close: { arg: 'required' },
  'log-pid': { arg: 'none', bool: true },
  version: { arg: 'none', short: 'V' },
  'evasive-devices': { arg: 'none', bool: true },
  pidfile: { arg: 'required' },
  'veth-pair': { arg: 'required' },
  'action-script': { arg: 'required' },
  'link-remap': { arg: 'none', bool: true },
  'shell-job': { arg: 'none', bool: true, short: 'j' },
  'file-locks': { arg: 'none', bool: true, short: 'l' },
  'page-server': { arg: 'none', bool: true },
  address: { arg: 'required' },
  port: { arg: 'required' },
  'prev-images-dir': { arg: 'required' },
  ms: { arg: 'none' },
  'track-mem': { arg: 'none', bool: true },
  'auto-dedup': { arg: 'none', bool: true },
  libdir: { arg: 'required', short: 'L' },
  'cpu-cap': { arg: 'optional' },
  'force-irmap': { arg: 'none', bool: true },
  'ext-mount-map': { arg: 'required', short: 'M' },
  'exec-cmd': { arg: 'none' },
  'manage-cgroups': { arg: 'optional' },
  'cgroup-root': { arg: 'required' },
  'inherit-fd': { arg: 'required' },
  feature: { arg: 'required' },
  'skip-mnt': { arg: 'required' },
  'enable-fs': { arg: 'required' },
  'enable-external-sharing': { arg: 'none' },
  'enable-external-masters': { arg: 'none' },
  'freeze-cgroup': { arg: 'required' },
  'ghost-limit': { arg: 'required' },
  'irmap-scan-path': { arg: 'required' },
  'lsm-profile': { arg: 'required' },
  timeout: { arg: 'required' },
  external: { arg: 'required' },
  'empty-ns': { arg: 'required' },
  'lazy-pages': { arg: 'none' },
  extra: { arg: 'none', bool: true },
  experimental: { arg: 'none', bool: true },
  all: { arg: 'none' },
  'cgroup-props': { arg: 'required' },
  'cgroup-props-file': { arg: 'required' },
  'cgroup-dump-controller': { arg: 'required' },
  'skip-in-flight': { arg: 'none', bool: true },
  deprecated: { arg: 'none', bool: true },
  'display-stats': { arg: 'none', bool: true },
  'weak-sysctls': { arg: 'none', bool: true },
  'status-fd': { arg: 'required' },
  'tcp-close': { arg: 'none', bool: true },
  verbosity: { arg: 'optional', short: 'v' },
  'ps-socket': { arg: 'required' },
  stream: { arg: 'none', bool: true },
  config: { arg: 'required' },
  'no-default-config': { arg: 'none' },
  'tls-cacert': { arg: 'required' },
  'tls-cacrl': { arg: 'required' },
  'tls-cert': { arg: 'required' },
  'tls-key': { arg: 'required' },
  tls: { arg: 'none', bool: true },
  'tls-no-cn-verify': { arg: 'none' },
  'cgroup-yard': { arg: 'required' },
  'pre-dump-mode': { arg: 'required' },
  'file-validation': { arg: 'required' },
  'skip-file-rwx-check': { arg: 'none', bool: true },
  'lsm-mount-context': { arg: 'required' },
  'network-lock': { arg: 'required' },
  'mntns-compat-mode': { arg: 'none', bool: true },
  unprivileged: { arg: 'none', bool: true },
  'ghost-fiemap': { arg: 'none', bool: true },
  'allow-uprobes': { arg: 'none', bool: true },
};

const SHORT = new Map(Object.entries(CRIU).flatMap(([name, s]) => (s.short ? [[s.short, name] as const] : [])));

/**
 * What each command does with each criu option. 'use': implemented (commander sees it);
 * ['ignore', why]: dropped, because it means nothing for this command (criu ignores it here too);
 * ['refuse', why]: its meaning matters and faultline does not do it, or criu itself rejects it here.
 * Options not listed are dump/restore/check options: ignored (see RESTORE_ONLY).
 */
type Disposition = 'use' | readonly ['ignore' | 'refuse', string];

const COMMON: Record<string, Disposition> = {
  'images-dir': 'use',
  'work-dir': 'use',
  'log-file': 'use',
  verbosity: 'use',
  pidfile: 'use',
  'status-fd': 'use',
  daemon: 'use',
  // criu keeps -d and --restore-detached in one field (a union in cr_options.h): the same switch.
  'restore-detached': 'use',
  address: 'use',
  port: 'use',
  tls: 'use',
  'tls-cacert': 'use',
  'tls-cacrl': 'use',
  'tls-cert': 'use',
  'tls-key': 'use',
  'tls-no-cn-verify': 'use',
  close: 'use',
  help: 'use',
  version: 'use',
  'display-stats': 'use',
  'no-default-config': ['ignore', 'faultline reads no criu configuration file, default or other'],
  'log-pid': ['ignore', 'per-process log files are for the processes `criu restore` forks; this command is one process'],
  unprivileged: ['ignore', 'faultline checks no capabilities; userfaultfd permission is checked when it is used'],
  deprecated: ['ignore', 'faultline has no deprecated behaviour to turn on'],
  config: ['refuse', 'faultline does not read criu configuration files; pass the options on the command line'],
  'ps-socket': ['refuse', 'a page-server connection inherited as a file descriptor is not supported; use --address/--port'],
  stream: ['refuse', 'faultline reads image files, not a criu-image-streamer stream'],
  'auto-dedup': ['refuse', 'faultline never punches served pages out of the images (criu --auto-dedup does)'],
  // criu itself rejects these outside restore (crtools.c, config.c check_options()).
  'inherit-fd': ['refuse', 'a restore-only option (criu rejects it here too)'],
  'exec-cmd': ['refuse', 'a restore-only option (criu rejects it here too)'],
  'mntns-compat-mode': ['refuse', 'only valid on restore (criu rejects it here too)'],
  ms: ['refuse', 'deprecated in criu, which rejects it'],
};

const PER_COMMAND: Record<CriuCommand, Record<string, Disposition>> = {
  'lazy-pages': {
    ...COMMON,
    'page-server': 'use',
    'lazy-pages': ['ignore', 'the lazy-pages daemon is lazy by definition'],
  },
  'page-server': {
    ...COMMON,
    'lazy-pages': 'use',
    'page-server': ['ignore', 'the page server is the page server'],
  },
};

/** Why the remaining options are dropped: they steer dump, restore or check, never these commands. */
const RESTORE_ONLY = 'a dump/restore/check option; it does nothing for this command (criu ignores it here too)';

export function disposition(command: CriuCommand, name: string): Disposition | undefined {
  if (!(name in CRIU)) return undefined;
  return PER_COMMAND[command][name] ?? ['ignore', RESTORE_ONLY];
}

/** The table, for --help and the tests: [option, disposition] for every criu option. */
export function criuOptionTable(command: CriuCommand): [string, Disposition][] {
  return Object.keys(CRIU).map((n) => [n, disposition(command, n)!]);
}

export interface Translated {
  /** argv for commander: implemented criu options in their long form, faultline's own untouched. */
  argv: string[];
  /** Options dropped as meaningless here, as given (for a debug log line). */
  ignored: string[];
}

/** criu's default verbosity (DEFAULT_LOGLEVEL, LOG_WARN). */
export const DEFAULT_VERBOSITY = 2;

/**
 * Rewrites a criu-style argv (everything after the command word) for commander. Throws UsageError
 * naming the first refused option. Follows getopt_long: `--name=value` or `--name value` for
 * required arguments, only `--name=value` (or `-xVALUE`) for optional ones, `--no-name` for criu's
 * boolean options (the last one given wins), and -v counting as in config.c.
 */
export function translateCriuArgv(command: CriuCommand, args: string[]): Translated {
  const out: string[] = [];
  const ignored: string[] = [];
  const bools = new Map<string, boolean>();
  let verbosity: number | undefined;
  const bump = (n: number) => (verbosity = (verbosity ?? DEFAULT_VERBOSITY) + n);

  const handle = (name: string, given: string, value: string | undefined, takeNext: () => string | undefined): void => {
    const spec = CRIU[name]!;
    const d = disposition(command, name)!;
    if (spec.arg === 'required' && value === undefined) {
      value = takeNext();
      if (value === undefined) throw new UsageError(`option '${given}' needs an argument`);
    }
    if (spec.arg === 'none' && value !== undefined) throw new UsageError(`option '${given}' takes no argument`);
    if (d !== 'use') {
      if (d[0] === 'refuse') throw new UsageError(`${command}: option '${given}' is not supported: ${d[1]}`);
      ignored.push(value === undefined ? given : `${given} ${value}`);
      return;
    }
    if (name === 'verbosity') {
      if (value === undefined) bump(1);
      else if (/^v*$/.test(value)) bump(value.length + 1); // -vvv reaches getopt as -v with "vv"
      else if (/^\d+$/.test(value)) verbosity = Number(value);
      else throw new UsageError(`option '${given}': verbosity must be a number or more v's, got '${value}'`);
      return;
    }
    if (name === 'restore-detached') name = 'daemon';
    if (spec.bool) {
      bools.set(name, true);
      return;
    }
    out.push(`--${name}`);
    if (value !== undefined) out.push(value);
  };

  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const takeNext = () => (i + 1 < args.length ? args[++i] : undefined);
    if (a === '--') {
      out.push(...args.slice(i));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      const value = eq < 0 ? undefined : a.slice(eq + 1);
      if (name in CRIU) {
        handle(name, a.split('=')[0]!, value, takeNext);
        continue;
      }
      const negated = name.startsWith('no-') ? name.slice(3) : undefined;
      if (negated && CRIU[negated]?.bool && value === undefined) {
        const d = disposition(command, negated)!;
        if (d === 'use') bools.set(negated === 'restore-detached' ? 'daemon' : negated, false);
        // Turning off a refused or ignored option asks for nothing: drop it.
        else ignored.push(a);
        continue;
      }
      out.push(a); // faultline's own option (or unknown: commander says so)
      continue;
    }
    if (/^-[^-]/.test(a)) {
      const letter = a[1]!;
      const name = SHORT.get(letter);
      if (!name) {
        out.push(a);
        continue;
      }
      const spec = CRIU[name]!;
      const rest = a.slice(2);
      if (spec.arg === 'none' && rest !== '') {
        // A cluster such as -dv4: split it the way getopt does.
        handle(name, `-${letter}`, undefined, takeNext);
        args.splice(i + 1, 0, `-${rest}`);
        continue;
      }
      handle(name, `-${letter}`, rest === '' ? undefined : rest, takeNext);
      continue;
    }
    out.push(a);
  }
  for (const [name, on] of bools) if (on) out.push(`--${name}`);
  if (verbosity !== undefined) out.push(`--verbosity=${verbosity}`);
  return { argv: out, ignored };
}
