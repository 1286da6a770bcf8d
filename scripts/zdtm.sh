#!/usr/bin/env bash
# zdtm.sh — CRIU's own test suite, zdtm, as a conformance check for faultline (issue 8, point 5).
#
# Runs `test/zdtm.py run` from CRIU's source tree with --lazy-pages (local), --remote-lazy-pages
# (remote) and --remote-lazy-pages --tls (tls), on the selection and exclusions CRIU's CI uses for
# lazy pages (LAZY_TESTS / LAZY_EXCLUDE in $CRIU_SRC/scripts/ci/run-ci-tests.sh), once per daemon:
#   criu          --criu-bin <real criu>             the reference
#   faultline     --criu-bin scripts/criu-faultline  lazy-pages and page-server --lazy-pages are both
#                                                    faultline, called with zdtm's exact arguments
#   faultline-lp  the same wrapper, only lazy-pages is faultline (client of CRIU's page server)
#   faultline-ps  the same wrapper, only page-server --lazy-pages is faultline (CRIU's client)
# (the last two only where there is a page server: remote and tls). zdtm runs in the `uns` flavour
# (root here lacks CAP_SYS_RESOURCE, which criu needs to dump the others); the tests that have no
# `uns` flavour (suid ones) then run once more with `-f h,ns`, where this root can dump them.
# then prints one Markdown table per mode (test x daemon) and fails when a test that passed with
# criu failed with faultline. See docs/zdtm.md.
#
# Usage: bash scripts/zdtm.sh [options]        (root; `npm run zdtm` runs it with no options)
#   --tests REGEX        zdtm -T regex instead of CRIU CI's LAZY_TESTS (CI's exclusions still apply)
#   --exclude NAME       exclude one more test (zdtm -x; repeatable)
#   --modes LIST         any of local,remote,tls (default: all three)
#   --daemons LIST       any of criu,faultline,faultline-lp,faultline-ps (default: all four)
#   --repeat N           run the fork-heavy tests N times in all (default 1)
#   --repeat-tests REGEX which tests are fork-heavy (default '.*(fork|uffd-events).*')
#   --parallel N         zdtm -p (default 2, as CRIU's CI)
#   --keep-going         run every mode and daemon whatever fails (the default)
#   --fail-fast          stop after the first zdtm run with a failure
#   --out DIR            results and logs (default: /tmp/faultline-zdtm-<date>)
#   --setup-only         install and build what zdtm needs, then exit
#   --no-setup           skip apt-get and the builds; only check that everything is there
#   --build-all          build every zdtm test program during setup (else only the programs of the
#                        selected tests: zdtm.py selects only tests whose program is built)
#
# Environment: CRIU_SRC (default /opt/criu-4.2), FAULTLINE_CRIU (the real criu), ZDTM_PYTHON
# (default /usr/bin/python3: Debian's, which has python3-protobuf and python3-yaml; a pyenv python
# first on PATH does not), ZDTM_LOCK_WAIT (seconds to wait for another run, default 1800).
#
# Exit status: 0 when every test that passed with criu passed with faultline (without the criu
# column: when every test passed); 1 when not; 2 when zdtm could not be set up or run.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "$0")/.." && pwd)
CRIU_SRC=${CRIU_SRC:-/opt/criu-4.2}
export CRIU_SRC
SHARED_CRIU=$REPO/../shared/criu
PY=${ZDTM_PYTHON:-/usr/bin/python3}
WRAPPER=$REPO/scripts/criu-faultline

say() { printf '[zdtm] %s\n' "$*"; }
die() {
	printf '[zdtm] error: %s\n' "$*" >&2
	exit 2
}

TESTS=
EXTRA_EXCLUDES=()
MODES=local,remote,tls
DAEMONS=criu,faultline,faultline-lp,faultline-ps
REPEAT=1
REPEAT_TESTS='.*(fork|uffd-events).*'
PARALLEL=2
FAIL_FAST=0
OUT=
SETUP=1
SETUP_ONLY=0
BUILD_ALL=0
while (($#)); do
	case "$1" in
	--tests) TESTS=${2:?--tests needs a regex}; shift ;;
	--exclude) EXTRA_EXCLUDES+=(-x "${2:?--exclude needs a test name}"); shift ;;
	--modes) MODES=${2:?--modes needs a list}; shift ;;
	--daemons) DAEMONS=${2:?--daemons needs a list}; shift ;;
	--repeat) REPEAT=${2:?--repeat needs a number}; shift ;;
	--repeat-tests) REPEAT_TESTS=${2:?--repeat-tests needs a regex}; shift ;;
	--parallel | -p) PARALLEL=${2:?--parallel needs a number}; shift ;;
	--keep-going) FAIL_FAST=0 ;;
	--fail-fast) FAIL_FAST=1 ;;
	--out) OUT=${2:?--out needs a directory}; shift ;;
	--setup-only) SETUP_ONLY=1 ;;
	--no-setup) SETUP=0 ;;
	--build-all) BUILD_ALL=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a positive number, not '$REPEAT'"
[[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || die "--parallel wants a positive number, not '$PARALLEL'"
IFS=, read -r -a MODE_LIST <<<"$MODES"
IFS=, read -r -a DAEMON_LIST <<<"$DAEMONS"
for m in "${MODE_LIST[@]}"; do [[ $m =~ ^(local|remote|tls)$ ]] || die "unknown mode '$m' (local, remote, tls)"; done
for d in "${DAEMON_LIST[@]}"; do
	[[ $d =~ ^(criu|faultline|faultline-lp|faultline-ps)$ ]] || die "unknown daemon '$d' (criu, faultline, faultline-lp, faultline-ps)"
done

[ "$(id -u)" = 0 ] || die "zdtm needs root (it dumps and restores namespaced process trees)"

# ---- setup ---------------------------------------------------------------------------------------
# What zdtm needs beyond what building criu needs: libnl-route (zdtm's test library), Debian's
# python3 with protobuf and yaml (zdtm.py and pycriu), iptables (criu's network lock on dump).
ZDTM_PKGS=(build-essential pkg-config libnl-route-3-dev libaio-dev libcap-dev
	python3 python3-protobuf python3-yaml iptables)
install_pkgs() {
	local missing=() p
	for p in "${ZDTM_PKGS[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them; install them by hand"
	say "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get -o DPkg::Lock::Timeout=900 update -q &&
		apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"; } >&2 ||
		die "apt-get could not install ${missing[*]}; install them by hand and run again"
}

criu_version() { "$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n 1; }

# The real criu, found as src/criu/find.ts finds it ($FAULTLINE_CRIU, then PATH, then the usual
# places), never Debian's 3.17, which does not start on these kernels.
find_real_criu() {
	local c v
	local dirs cands=()
	IFS=: read -r -a dirs <<<"$PATH"
	[ -n "${FAULTLINE_CRIU:-}" ] && cands+=("$FAULTLINE_CRIU")
	for c in "${dirs[@]}"; do [ -n "$c" ] && cands+=("$c/criu"); done
	cands+=(/usr/local/bin/criu /usr/local/sbin/criu /usr/sbin/criu)
	for c in "${cands[@]}"; do
		[ -x "$c" ] && [ -f "$c" ] || continue
		[ "$(readlink -f "$c")" = "$(readlink -f "$WRAPPER")" ] && continue
		v=$(criu_version "$c")
		if [ -n "$v" ] && [ "${v%%.*}" -ge 4 ] 2>/dev/null; then
			echo "$c"
			return 0
		fi
	done
	return 1
}

if ((SETUP)); then
	install_pkgs
	if [ -f "$SHARED_CRIU/build.sh" ]; then
		# Builds and installs criu 4.2 into /usr/local/bin and leaves the tree (with zdtm) in
		# $CRIU_SRC; returns at once when that is done already.
		t0=$SECONDS
		bash "$SHARED_CRIU/build.sh" >&2 || die "building CRIU with $SHARED_CRIU/build.sh failed"
		say "criu build: $((SECONDS - t0)) s"
	fi
fi
[ -f "$CRIU_SRC/test/zdtm.py" ] ||
	die "no CRIU source tree at CRIU_SRC=$CRIU_SRC (test/zdtm.py missing); set CRIU_SRC, or provide ../shared/criu/build.sh"
REAL_CRIU=$(find_real_criu) || die "no criu >= 4 found (FAULTLINE_CRIU, PATH, /usr/local/bin); build it from CRIU's tree"
say "criu: $REAL_CRIU $(criu_version "$REAL_CRIU"); tree: $CRIU_SRC"
[ -x "$PY" ] || die "$PY not found: zdtm needs Debian's python3 (set ZDTM_PYTHON)"
"$PY" -c 'import google.protobuf, yaml' 2>/dev/null ||
	die "$PY lacks protobuf or yaml: apt-get install python3-protobuf python3-yaml (or set ZDTM_PYTHON)"

# ---- the selection -------------------------------------------------------------------------------
# Read from CRIU's own CI script, so that the selection follows the tree that is tested.
CI_SCRIPT=$CRIU_SRC/scripts/ci/run-ci-tests.sh
CI_TESTS=$(sed -n "s/^LAZY_TESTS='\(.*\)'\$/\1/p" "$CI_SCRIPT" 2>/dev/null | head -n 1)
CI_EXCLUDE=$(sed -n 's/^LAZY_EXCLUDE=(\(.*\))$/\1/p' "$CI_SCRIPT" 2>/dev/null | head -n 1)
if [ -z "$CI_TESTS" ] || [ -z "$CI_EXCLUDE" ]; then
	# CRIU 4.2's values, should the CI script ever change shape.
	say "note: LAZY_TESTS/LAZY_EXCLUDE not found in $CI_SCRIPT; using CRIU 4.2's"
	CI_TESTS='.*(maps0|uffd-events|lazy-thp|futex|fork).*'
	CI_EXCLUDE='-x maps04 -x cmdlinenv00 -x maps007'
fi
read -r -a EXCLUDES <<<"$CI_EXCLUDE"
EXCLUDES+=(${EXTRA_EXCLUDES[@]+"${EXTRA_EXCLUDES[@]}"})
TESTS=${TESTS:-$CI_TESTS}

if ((SETUP)); then
	t0=$SECONDS
	# pycriu (zdtm imports it through test/pycriu -> lib/pycriu); `make lib` is slow even when there
	# is nothing to do, so only when the import fails.
	if ! (cd "$CRIU_SRC/test" && "$PY" -c 'import pycriu' 2>/dev/null); then
		say "make -C $CRIU_SRC lib (pycriu)"
		make -C "$CRIU_SRC" -j"$(nproc)" lib >"$CRIU_SRC/zdtm-lib.log" 2>&1 ||
			{ tail -n 20 "$CRIU_SRC/zdtm-lib.log" >&2; die "make lib failed (log: $CRIU_SRC/zdtm-lib.log)"; }
	fi
	# zdtm's helpers and its test library, then the programs of the selected tests (below); building
	# every test program of the suite takes minutes, and --build-all does it up front (what the
	# timing of "the zdtm build" in docs/zdtm.md is).
	say "building zdtm (log: $CRIU_SRC/zdtm-build.log)"
	zdtm_targets=(lib)
	((BUILD_ALL)) && zdtm_targets=()
	{ make -C "$CRIU_SRC/test" umount2 zdtm_ct && make -C "$CRIU_SRC/test/zdtm" -j"$(nproc)" ${zdtm_targets[@]+"${zdtm_targets[@]}"}; } \
		>"$CRIU_SRC/zdtm-build.log" 2>&1 ||
		{ tail -n 30 "$CRIU_SRC/zdtm-build.log" >&2; die "building zdtm failed (log: $CRIU_SRC/zdtm-build.log)"; }
	# zdtm.py only selects tests whose program is built (it lists executables): build those the
	# selection names. A fresh tree has none, and `-T` then selects nothing and "passes".
	if ! ((BUILD_ALL)); then
		for dir in static transition; do
			programs=()
			for c in "$CRIU_SRC/test/zdtm/$dir"/*.c; do
				t=zdtm/$dir/$(basename "$c" .c)
				[[ $t =~ ^($TESTS) ]] && programs+=("${t##*/}")
			done
			((${#programs[@]})) || continue
			make -C "$CRIU_SRC/test/zdtm/$dir" -j"$(nproc)" "${programs[@]}" >>"$CRIU_SRC/zdtm-build.log" 2>&1 ||
				{ tail -n 30 "$CRIU_SRC/zdtm-build.log" >&2; die "building the selected zdtm tests in zdtm/$dir failed (log: $CRIU_SRC/zdtm-build.log)"; }
		done
	fi
	say "zdtm build: $((SECONDS - t0)) s"
fi
(cd "$CRIU_SRC/test" && "$PY" -c 'import pycriu' 2>/dev/null) ||
	die "pycriu is not built in $CRIU_SRC (make -C $CRIU_SRC lib); run without --no-setup"
[ -x "$CRIU_SRC/test/zdtm_ct" ] || die "zdtm is not built in $CRIU_SRC/test; run without --no-setup"
((SETUP_ONLY)) && { say "setup done"; exit 0; }

for d in "${DAEMON_LIST[@]}"; do
	if [ "$d" != criu ]; then
		[ -f "$REPO/dist/src/cli/main.js" ] || die "faultline is not built ($REPO/dist/src/cli/main.js); npm run build"
	fi
done

# ---- run -----------------------------------------------------------------------------------------
OUT=${OUT:-/tmp/faultline-zdtm-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.tsv # mode daemon iteration test status(pass|fail|skip|error)
: >"$RESULTS"

# zdtm uses one dump directory and one port (12345) per test name: two runs at once would collide.
exec 9>"$CRIU_SRC/test/.faultline-zdtm.lock"
if ! flock -n 9; then
	say "another zdtm run holds $CRIU_SRC/test/.faultline-zdtm.lock; waiting up to ${ZDTM_LOCK_WAIT:-1800} s"
	flock -w "${ZDTM_LOCK_WAIT:-1800}" 9 || die "gave up waiting for the other zdtm run"
fi

# zdtm's lazy tests need userfaultfd for the unprivileged restored tasks (as CRIU's CI sets it) and
# CRIU's page server splices up to 4 MiB through a pipe. Both go back to what they were on exit.
OLD_UFFD=$(sysctl -n vm.unprivileged_userfaultfd 2>/dev/null || echo)
OLD_PIPE=$(sysctl -n fs.pipe-max-size)
restore_sysctls() {
	[ -n "$OLD_UFFD" ] && sysctl -qw vm.unprivileged_userfaultfd="$OLD_UFFD" || true
	sysctl -qw fs.pipe-max-size="$OLD_PIPE" || true
}
trap restore_sysctls EXIT
# On INT/TERM (a test's timeout, ^C): stop the running zdtm.py and what it started, by pid. Its
# test runners live in pid namespaces of their own (zdtm_ct); their init dying ends each namespace.
ZDTM_PID=
descendants() {
	local c
	for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
		echo "$c"
		descendants "$c"
	done
}
stop_zdtm() {
	[ -n "$ZDTM_PID" ] || return 0
	# shellcheck disable=SC2046 # a list of pids
	kill -TERM $(descendants "$ZDTM_PID") "$ZDTM_PID" 2>/dev/null || true
}
trap 'stop_zdtm; exit 130' INT TERM
[ -n "$OLD_UFFD" ] && sysctl -qw vm.unprivileged_userfaultfd=1
((OLD_PIPE >= 4194304)) || sysctl -qw fs.pipe-max-size=4194304

# zdtm_ct execs zdtm.py through `#!/usr/bin/env python3`: Debian's python must come first on PATH.
# node is resolved before that, so the wrapper runs the same node as this shell.
export FAULTLINE_NODE=${FAULTLINE_NODE:-$(command -v node || true)}
export FAULTLINE_REAL_CRIU=$REAL_CRIU
export PATH=$(dirname "$PY"):/usr/sbin:/sbin:/usr/bin:/bin:$PATH

mode_args() {
	case "$1" in
	local) echo --lazy-pages ;;
	remote) echo --remote-lazy-pages ;;
	tls) echo --remote-lazy-pages --tls ;;
	esac
}

# one zdtm.py run; appends its per-test results to $RESULTS; returns 1 when something failed
run_zdtm() {
	local mode=$1 daemon=$2 iter=$3
	shift 3
	local dir=$OUT/$mode/$daemon/$iter bin t0 rc=0 tap
	mkdir -p "$dir"
	[ "$daemon" = criu ] && bin=$REAL_CRIU || bin=$WRAPPER
	# which side the wrapper gives to faultline
	case "$daemon" in
	faultline) export FAULTLINE_ZDTM_ROUTE=both ;;
	faultline-lp) export FAULTLINE_ZDTM_ROUTE=lazy-pages ;;
	faultline-ps) export FAULTLINE_ZDTM_ROUTE=page-server ;;
	esac
	t0=$SECONDS
	export FAULTLINE_ZDTM_TRACE=$dir/calls.log # scripts/criu-faultline notes each call there
	# In the background and waited for, so that a TERM to this script (a test's timeout) can pass
	# the TERM on to zdtm.py instead of leaving it running without us. fd 9 (the lock) is closed
	# for zdtm: a process it leaves behind must not hold the lock.
	# shellcheck disable=SC2046 # mode_args is a word list on purpose
	(exec 9>&- && cd "$CRIU_SRC/test" && exec "$PY" zdtm.py run "$@" "${EXCLUDES[@]}" \
		--keep-going --report "$dir" --criu-bin "$bin" $(mode_args "$mode")) >"$dir/zdtm.log" 2>&1 &
	ZDTM_PID=$!
	wait "$ZDTM_PID" || rc=$?
	ZDTM_PID=
	tap=$dir/criu-testreport.tap
	if [ ! -s "$tap" ] || ! grep -q '^1\.\.' "$tap"; then
		# zdtm died before it could report (setup, import, or a crash): every test counts as failed.
		say "$mode $daemon #$iter: zdtm.py exited $rc without a report; tail of $dir/zdtm.log:"
		tail -n 25 "$dir/zdtm.log" | sed 's/^/    /' >&2
		printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$daemon" "$iter" "(zdtm run)" error >>"$RESULTS"
		return 1
	fi
	# TAP: "ok N - T", "ok N - T # SKIP why", "not ok N - T # flavor uns"
	awk -v m="$mode" -v d="$daemon" -v i="$iter" '
		/^ok [0-9]+ - / {
			st = "pass"; why = ""
			if (match($0, / # SKIP /)) { st = "skip"; why = substr($0, RSTART + RLENGTH) }
			print m "\t" d "\t" i "\t" $4 "\t" st "\t" why
		}
		/^not ok [0-9]+ - / { print m "\t" d "\t" i "\t" $5 "\tfail" }' "$tap" >"$dir/results.tsv"
	cat "$dir/results.tsv" >>"$RESULTS"
	local np nf ns nfl
	nfl=$(grep -c '^faultline ' "$dir/calls.log" 2>/dev/null || true)
	np=$(awk -F'\t' '$5 == "pass"' "$dir/results.tsv" | wc -l)
	nf=$(awk -F'\t' '$5 == "fail"' "$dir/results.tsv" | wc -l)
	ns=$(awk -F'\t' '$5 == "skip"' "$dir/results.tsv" | wc -l)
	say "$mode $daemon #$iter: $np passed, $nf failed, $ns skipped ($((SECONDS - t0)) s; $dir)"
	if [ "$iter" = 1 ] && ((np + nf + ns == 0)); then
		# An empty selection "passes" in zdtm: say it, and fail (a test program not built, a regex
		# that names nothing).
		say "$mode $daemon #$iter: zdtm ran no test: nothing matched -T '$TESTS' among the built test programs"
		printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$daemon" "$iter" "(zdtm run)" error >>"$RESULTS"
		return 1
	fi
	if [ "$daemon" != criu ] && ((np + nf > 0 && ${nfl:-0} == 0)); then
		# Tests ran but faultline never did: the wrapper was bypassed, and a pass would mean nothing.
		say "$mode $daemon #$iter: scripts/criu-faultline never started faultline (see $dir/calls.log)"
		printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$daemon" "$iter" "(zdtm run)" error >>"$RESULTS"
		return 1
	fi
	if ((nf)); then
		# Where to look: zdtm copies each failed test's dump directory (its criu and daemon logs)
		# into the report directory.
		awk -F'\t' '$5 == "fail" { print "    FAIL " $4 }' "$dir/results.tsv" >&2
		# ...but not when zdtm itself gave up on the test (a criu call timing out raises past that
		# copy): then take the logs from the dump directory it left, before the next run reuses it.
		local t logs it
		for t in $(awk -F'\t' '$5 == "fail" { print $4 }' "$dir/results.tsv"); do
			compgen -G "$dir/${t//\//_}_*/images" >/dev/null && continue
			logs=$dir/${t//\//_}_unknown/images
			for it in "$CRIU_SRC/test/dump/$t"/*/*/; do
				[ -d "$it" ] || continue
				mkdir -p "$logs/$(basename "$it")"
				cp "$it"/*.log "$logs/$(basename "$it")/" 2>/dev/null || true
			done
		done
		return 1
	fi
	((rc == 0)) || { say "$mode $daemon #$iter: zdtm.py exited $rc"; return 1; }
	return 0
}

say "selection: -T '$TESTS' ${EXCLUDES[*]} -f uns; modes: ${MODE_LIST[*]}; daemons: ${DAEMON_LIST[*]}; repeat: $REPEAT x '$REPEAT_TESTS'"
say "output: $OUT"
T_ALL=$SECONDS
stop=0
for mode in "${MODE_LIST[@]}"; do
	for daemon in "${DAEMON_LIST[@]}"; do
		# locally there is no page server: faultline-lp would be faultline, faultline-ps nothing
		[ "$mode" = local ] && [[ $daemon == faultline-* ]] && continue
		run_zdtm "$mode" "$daemon" 1 -f uns -p "$PARALLEL" -T "$TESTS" || { ((FAIL_FAST)) && stop=1 && break 2; }
		# Tests zdtm skipped for "no flavors" want the host or a plain pid+net namespace (the suid
		# ones): this root can dump those there, so run them in h and ns. One at a time: in the
		# host's network namespace two page servers would both want port 12345.
		mapfile -t hns < <(awk -F'\t' -v m="$mode" -v d="$daemon" \
			'$1 == m && $2 == d && $3 == 1 && $5 == "skip" && $6 == "no flavors" { print $4 }' "$RESULTS")
		if ((${#hns[@]})); then
			targs=()
			for t in "${hns[@]}"; do targs+=(-t "$t"); done
			run_zdtm "$mode" "$daemon" 1-h-ns -f h,ns -p 1 "${targs[@]}" || { ((FAIL_FAST)) && stop=1 && break 2; }
		fi
		((REPEAT > 1)) || continue
		# The fork-heavy tests again, by name: the ones of this selection that ran (not skipped).
		mapfile -t again < <(awk -F'\t' -v m="$mode" -v d="$daemon" -v re="^($REPEAT_TESTS)\$" \
			'$1 == m && $2 == d && $3 == 1 && $5 != "skip" && $4 ~ re { print $4 }' "$RESULTS")
		((${#again[@]})) || continue
		targs=()
		for t in "${again[@]}"; do targs+=(-t "$t"); done
		for ((i = 2; i <= REPEAT; i++)); do
			run_zdtm "$mode" "$daemon" "$i" -f uns -p "$PARALLEL" "${targs[@]}" || { ((FAIL_FAST)) && stop=1 && break 3; }
		done
	done
done
((stop)) && say "stopped at the first failure (--fail-fast)"

# ---- tables and verdict --------------------------------------------------------------------------
# A cell is pass / FAIL / skip for one run, "k/n" (passed/ran) for repeated tests.
report() {
	awk -F'\t' -v daemons="${DAEMON_LIST[*]}" -v modes="${MODE_LIST[*]}" '
	{
		key = $1 SUBSEP $4 SUBSEP $2
		if ($4 == "(zdtm run)") { err[$1, $2] = 1; next }
		if (!(($1, $4) in seen)) { seen[$1, $4] = 1; order[$1, ++n[$1]] = $4 }
		if ($5 == "skip") { skip[key] = 1; next }
		if ($3 ~ /-h-ns$/) hns[key] = 1
		ran[key]++
		if ($5 == "pass") ok[key]++
	}
	# faultline-lp and faultline-ps split the two sides of a page server: no column where there is none
	function shown(m, d) { return !(m == "local" && d ~ /^faultline-/) }
	function cell(m, t, d,   k, r, p, f) {
		k = m SUBSEP t SUBSEP d
		r = ran[k] + 0; p = ok[k] + 0
		if (r == 0) return (k in skip) ? "skip" : "-"
		f = (k in hns) ? " (h/ns)" : ""
		if (r == 1) return (p ? "pass" : "**FAIL**") f
		return ((p == r) ? p "/" r : "**" p "/" r "**") f
	}
	BEGIN { nd = split(daemons, D, " "); nm = split(modes, M, " "); bad = 0; hasref = 0
		for (di = 1; di <= nd; di++) if (D[di] == "criu") hasref = 1 }
	END {
		flag["local"] = "--lazy-pages"; flag["remote"] = "--remote-lazy-pages"; flag["tls"] = "--remote-lazy-pages --tls"
		for (mi = 1; mi <= nm; mi++) {
			m = M[mi]
			printf "\n### %s (`zdtm.py run %s -f uns`; \"(h/ns)\": `-f h,ns`)\n\n| test |", m, flag[m]
			for (di = 1; di <= nd; di++) if (shown(m, D[di])) printf " %s |", D[di]
			printf "\n|---|"
			for (di = 1; di <= nd; di++) if (shown(m, D[di])) printf "---|"
			printf "\n"
			for (di = 1; di <= nd; di++) { tot[D[di]] = 0; passed[D[di]] = 0 }
			# rows in name order (insertion sort: plain awk has no sort)
			for (j = 2; j <= n[m]; j++) {
				x = order[m, j]
				for (i = j - 1; i >= 1 && order[m, i] > x; i--) order[m, i + 1] = order[m, i]
				order[m, i + 1] = x
			}
			for (j = 1; j <= n[m]; j++) {
				t = order[m, j]
				printf "| %s |", t
				for (di = 1; di <= nd; di++) {
					d = D[di]; k = m SUBSEP t SUBSEP d
					if (!shown(m, d)) continue
					printf " %s |", cell(m, t, d)
					if (ran[k]) { tot[d]++; if (ok[k] == ran[k]) passed[d]++ }
				}
				printf "\n"
				# The verdict: with the reference in the run, every faultline column must pass what
				# criu passed; without it, each daemon must pass everything it ran.
				kc = m SUBSEP t SUBSEP "criu"
				for (di = 1; di <= nd; di++) {
					d = D[di]; k = m SUBSEP t SUBSEP d
					if (d == "criu" || !shown(m, d)) continue
					if (hasref) {
						if (ran[kc] && ok[kc] == ran[kc] && ran[k] && ok[k] < ran[k]) { bad++; why[bad] = m ": " t " passes with criu, fails with " d }
						if (ran[kc] && ok[kc] == ran[kc] && !ran[k] && !(k in skip) && !err[m, d]) { bad++; why[bad] = m ": " t " passes with criu, did not run with " d }
					} else if (ran[k] && ok[k] < ran[k]) { bad++; why[bad] = m ": " t " fails with " d }
				}
				if (!hasref && nd == 1 && D[1] == "criu" && ran[kc] && ok[kc] < ran[kc]) { bad++; why[bad] = m ": " t " fails with criu" }
			}
			printf "| **passed** |"
			for (di = 1; di <= nd; di++) {
				d = D[di]
				if (!shown(m, d)) continue
				if (err[m, d]) { printf " zdtm run failed |"; if (d != "criu" || nd == 1) { bad++; why[bad] = m ": the zdtm run with " d " failed" } }
				else printf " %d/%d |", passed[d], tot[d]
			}
			printf "\n"
		}
		printf "\n"
		for (i = 1; i <= bad; i++) print "REGRESSION " why[i]
		exit bad ? 1 : 0
	}' "$RESULTS"
}
set +e
report | tee "$OUT/results.md"
verdict=${PIPESTATUS[0]}
set -e
if ((verdict)); then
	say "FAIL: see the REGRESSION lines above; logs of failed tests: $OUT/<mode>/<daemon>/<n>/<test>_<flavour>/images/ ($((SECONDS - T_ALL)) s)"
	exit 1
fi
if [[ " ${DAEMON_LIST[*]} " == *" criu "* ]] && ((${#DAEMON_LIST[@]} > 1)); then
	say "OK: every test that passed with criu passed with faultline ($((SECONDS - T_ALL)) s)"
else
	say "OK: every test passed with ${DAEMON_LIST[*]} ($((SECONDS - T_ALL)) s)"
fi
