#!/usr/bin/env bash
# Build the stand-in of the official slim Xinference image (xprobe/xinference:v4.x) as a thin
# layer over the CPU image of tools/xinference-image.sh, and `docker save` it to a tar.
#
#   usage: tools/xinference-image-slim.sh [--out PATH] [--cache DIR] [--force] [-h|--help]
#
# Steps, each printed as it runs:
#   base      tools/xinference-image.sh (its cached tar, built when missing), loaded into the
#             engine when the engine lacks it
#   wheels    `pip download` of tools/xinference-image/slim-requirements.txt (torchaudio,
#             torchcodec: the official runtime set has them, the CPU image does not; ~12 MB)
#   slim      tools/xinference-image/slim.py in a `--network none` container of the base: what
#             the official image lacks is uninstalled (sentence-transformers: no engine in it), the
#             two wheels installed, the torch family's dist-info Version relabelled with the CUDA
#             local label the PyTorch index's wheels carry (+cu<XY>: a test image's rewrite of its
#             metadata, the code is PyPI's), the venv made the system site dir (why: slim.py's
#             docstring); then a fresh interpreter checks the result
#   commit    `docker commit` with the env the official image's CUDA base sets (CUDA_VERSION,
#             NVIDIA_REQUIRE_CUDA=cuda>=X.Y) and org.opencontainers.image.* labels
#   save      `docker save` to the cache, sha256 computed while writing
# Cache: <cache>/xinference-image-slim-<digest12>/image.tar and image.json (kind "variant", so
# tools/xinference-image.sh --prune-unused-since removes it before its base), a cache entry of
# tools/cache_entry.py keyed by the base's recipe, this script's code and the two recipe files.
# A cached run prints the path at once.
# Output: progress on stderr; the last line of stdout is the tar path (--out PATH when given).
# Exit status: 0 built or cached, 1 a step failed, 2 on a usage error.
set -euo pipefail

TAG=xinference-offline/xinference-slim:4.1.0
VENV=/opt/xinference
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_dir="$here/xinference-image"
self="$here/$(basename "${BASH_SOURCE[0]}")"
PROG=xinference-image-slim
log() { echo "$PROG: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

now() { date +%s; }
entries() { python3 "$here/cache_entry.py" "$@"; }
image_cache() { python3 "$recipe_dir/image_cache.py" "$@"; }

# step_slim BASE_ENTRY DIGEST DIR: the stand-in image in the cache entry DIR (run by
# `cache_entry.py ensure`, under DIR's lock, as `xinference-image-slim.sh --step BASE_ENTRY DIGEST DIR`)
step_slim() {
  local base=$1 digest=$2 dir=$3 work="$3/.work" started t0 base_id cid="xinference-image-slim-$$" cuda sum
  started=$(now)
  # shellcheck disable=SC2064  # the names are known now
  trap "docker rm -f $cid >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  base_id=$(image_cache load "$base")
  t0=$(now)
  log "wheels: pip download of slim-requirements.txt"
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: --python-version 3.11 \
      --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
      -r "$recipe_dir/slim-requirements.txt" -d "$work/wheels" >&2 || die "wheels: pip download failed"
  mkdir -p "$work/out"
  # A fresh interpreter checks what slim.py made: the system Python (no venv), no engine, the
  # torch family labelled, xinference, torch and uv found.
  check="import sys, importlib.metadata as m, importlib.util as u; assert sys.prefix == sys.base_prefix, sys.prefix
assert u.find_spec('sentence_transformers') is None
assert all('+cu' in m.version(n) for n in ('torch', 'torchvision', 'torchaudio', 'torchcodec'))
import torch, xinference, uv
print('slim: system python', sys.version.split()[0], 'torch', m.version('torch'), 'uv', uv.find_uv_bin())"
  log "slim: slim.py in a --network none container of the base"
  docker run --name "$cid" --network none -e PYTHONDONTWRITEBYTECODE=1 -e PIP_ROOT_USER_ACTION=ignore \
      -v "$work/wheels:/wheels:ro" -v "$recipe_dir:/recipe:ro" -v "$work/out:/out" "$base_id" \
      /bin/sh -c "$VENV/bin/python /recipe/slim.py $VENV /wheels /out && $VENV/bin/python -c \"\$0\"" "$check" >&2 \
    || die "slim: the slim step failed (its output above)"
  sed 's/^/slim: /' "$work/out/slim.txt" >&2
  cuda=$(sed -n 's/^cuda //p' "$work/out/slim.txt")
  # A commit: slim.py changes the base's own files (uninstalls, relabels), which no COPY can say.
  docker commit -m "tools/xinference-image-slim.sh over $base_id" \
    --change "ENV CUDA_VERSION=$cuda" --change "ENV NVIDIA_REQUIRE_CUDA=cuda>=$cuda" \
    --change 'LABEL org.opencontainers.image.title="xinference-slim-standin"' \
    --change 'LABEL org.opencontainers.image.description="stand-in of the official slim Xinference 4.1.0 image: no engine, torch family relabelled +cu (tools/xinference-image-slim.sh)"' \
    "$cid" "$TAG" >/dev/null || die "commit: docker commit failed"
  docker rm "$cid" >/dev/null
  log "slim: done in $(( $(now) - t0 )) s"
  t0=$(now)
  log "save: docker save $TAG to $dir/image.tar"
  sum=$(docker save "$TAG" | tee "$dir/image.tar.part" | sha256sum | cut -d' ' -f1)
  mv -f "$dir/image.tar.part" "$dir/image.tar"
  log "save: done in $(( $(now) - t0 )) s"
  image_cache write "$dir" --kind variant --tag "$TAG" --tar-sha256 "$sum" --started "$started" \
    --recipe "$digest" --base "$base" --lines "slim=$work/out/slim.txt"
}
if [ "${1:-}" = --step ]; then
  shift
  step_slim "$@"
  exit 0
fi

cache_root=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
out=
force=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--cache) [ $# -ge 2 ] && [ -n "$2" ] || { log "$1 needs a value (see --help)"; exit 2; }
      if [ "$1" = --out ]; then out=$2; else cache_root=$2; fi; shift 2 ;;
    --force) force=(--force); shift ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument '$1' (see --help)"; exit 2 ;;
  esac
done
case "$cache_root" in /*) ;; *) cache_root="$PWD/$cache_root" ;; esac

base_tar=$(bash "$here/xinference-image.sh" --cache "$cache_root" | tail -n 1) || die "base: tools/xinference-image.sh failed"
base=$(dirname "$base_tar")
digest=$(entries digest --text "$(image_cache field "$base" recipe)" --code "$self" \
           --file "$recipe_dir/slim.py" --file "$recipe_dir/slim-requirements.txt")
entry="$cache_root/xinference-image-slim-${digest:0:12}"
entries ensure "$entry" --digest "$digest" --prog "$PROG" ${force[@]+"${force[@]}"} \
  -- bash "$self" --step "$base" "$digest"
if [ -n "$out" ]; then  # a link at --out: never a copy of GBs
  mkdir -p "$(dirname "$out")"
  ln -f "$entry/image.tar" "$out.tmp.$$" 2>/dev/null || ln -sf "$entry/image.tar" "$out.tmp.$$"
  mv -Tf "$out.tmp.$$" "$out"
  echo "$out"
else
  echo "$entry/image.tar"
fi
