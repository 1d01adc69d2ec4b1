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

case "${1:-}" in
  demo)
    shift
    setup
    exec "$VENV/bin/firegrid" demo "$@"
    ;;
  test)
    shift
    setup
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
