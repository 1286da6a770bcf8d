#!/usr/bin/env bash
# Installs tools some tests need. Idempotent: does nothing when they are already present.
# - crit (Debian package `criu`): decodes images written by faultline's writer, as an
#   independent check of the format. Only crit is used; criu itself does not run here.
# - chromium (Debian's; never a downloaded browser): renders the bench report in a test.
set -u

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
