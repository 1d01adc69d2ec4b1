#!/usr/bin/env bash
# FireGrid's two entry points on a fresh machine: `demo` (the main job) and `test`.
# Each sets up what it needs: a venv in .venv, the package with its dev tools, and
# (inside the commands) the local emulator stack.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv

setup() {
  command -v "$PYTHON" >/dev/null || PYTHON=python3
  if ! command -v java >/dev/null; then
    echo "FireGrid's local stack needs Java 17+ for the Firestore emulator:" >&2
    echo "  apt-get install -y openjdk-17-jre-headless" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.firegrid-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing firegrid and its dev tools (torch 2.13.0 CPU)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    touch "$stamp"
  fi
}

# The browser tests drive Debian's chromium headless. As root (CI, a fresh
# machine) it is installed here; otherwise the command to run is printed.
browser() {
  command -v "${FIREGRID_CHROMIUM:-chromium}" >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium for the browser tests"
    apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "The browser tests need chromium: sudo apt-get install -y chromium" >&2
    exit 1
  fi
}

case "${1:-}" in
  demo)
    shift
    setup
    exec "$VENV/bin/firegrid" demo "$@"
    ;;
  test)
    shift
    setup
    browser
    echo "==> ruff"
    "$VENV/bin/ruff" check shared functions tests bench
    "$VENV/bin/ruff" format --check shared functions tests bench
    echo "==> mypy"
    "$VENV/bin/mypy"
    echo "==> pytest (starts the emulator stack itself)"
    exec "$VENV/bin/pytest" "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
