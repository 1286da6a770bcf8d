#!/usr/bin/env bash
# Installs tools some tests need. Idempotent: does nothing when they are already present.
# - criu >= 4 (the real program, for the interoperability tests, the zdtm subset and the bench):
#   built from ../shared/criu (CRIU 4.2's source and build.sh) when that folder exists, as on CI.
#   Debian's packaged criu (3.17) does not start on these kernels, so it is never used as criu.
# - crit (Debian package `criu`): decodes images written by faultline's writer, as an
#   independent check of the format. Only its crit is used.
# - chromium (Debian's; never a downloaded browser): renders the bench report in a test.
set -u
here=$(cd "$(dirname "$0")" && pwd)
shared_criu=$(cd "$here/../.." && pwd)/shared/criu

criu_major() { "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\).*/\1/p' | head -n 1; }
have_criu4() {
  local c
  for c in "${FAULTLINE_CRIU:-}" "$(command -v criu 2>/dev/null)" /usr/local/bin/criu; do
    [ -n "$c" ] && [ -x "$c" ] && [ "$(criu_major "$c")" -ge 4 ] 2>/dev/null && { echo "$c"; return 0; }
  done
  return 1
}
if c=$(have_criu4); then
  echo "setup-test-deps: criu $("$c" --version | sed -n 's/^Version: *//p') at $c"
elif [ -x "$shared_criu/build.sh" ] || [ -f "$shared_criu/build.sh" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-test-deps: building CRIU from $shared_criu needs root; the real-CRIU tests will fail here (they must run where ../shared/criu exists)" >&2
  else
    echo "setup-test-deps: building CRIU 4.2 from $shared_criu (about a minute; log in \$CRIU_SRC/build.log)"
    bash "$shared_criu/build.sh" || echo "setup-test-deps: building CRIU failed; the real-CRIU tests will fail" >&2
  fi
else
  echo "setup-test-deps: no criu >= 4 and no ../shared/criu to build it from: the tests that need real CRIU will say they are skipped"
fi
# zdtm (CRIU's own suite, a subset of which npm test runs): its packages, pycriu and test library,
# built here rather than inside a test's time budget (about a minute on a fresh machine).
if have_criu4 >/dev/null && [ -f "${CRIU_SRC:-/opt/criu-4.2}/test/zdtm.py" ] && [ "$(id -u)" -eq 0 ]; then
  bash "$here/zdtm.sh" --setup-only >/tmp/faultline-zdtm-setup.log 2>&1 \
    && echo "setup-test-deps: zdtm ready in ${CRIU_SRC:-/opt/criu-4.2}/test" \
    || echo "setup-test-deps: zdtm setup failed (log: /tmp/faultline-zdtm-setup.log); the zdtm test will fail" >&2
fi

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "setup-test-deps: installing Debian's chromium (for the bench report test)"
  apt-get install -y chromium >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1; } \
    || echo "setup-test-deps: could not install chromium; the report rendering test will say it is skipped" >&2
fi

if command -v crit >/dev/null 2>&1; then
  echo "setup-test-deps: crit already installed ($(command -v crit))"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-test-deps: crit is missing and apt-get is not available; install CRIU's crit tool by hand (tests that need it will be skipped)" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup-test-deps: crit is missing and installing it needs root (run: apt-get install -y criu)" >&2
    exit 1
  fi
fi

echo "setup-test-deps: installing criu (for crit) with apt-get"
if ! $SUDO apt-get install -y criu; then
  echo "setup-test-deps: 'apt-get install criu' failed; retrying after apt-get update" >&2
  if ! { $SUDO apt-get update && $SUDO apt-get install -y criu; }; then
    echo "setup-test-deps: could not install criu; tests that need crit will be skipped" >&2
    exit 1
  fi
fi
command -v crit >/dev/null 2>&1 || { echo "setup-test-deps: criu installed but crit not on PATH" >&2; exit 1; }
echo "setup-test-deps: crit installed ($(command -v crit))"
