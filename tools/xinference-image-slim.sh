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
# tools/xinference-image.sh --prune-unused-since removes it before its base), keyed by the base's
# recipe, this script's code and the two recipe files. A cached run prints the path at once.
# Output: progress on stderr; the last line of stdout is the tar path (--out PATH when given).
# Exit status: 0 built or cached, 1 a step failed, 2 on a usage error.
set -euo pipefail

TAG=xinference-offline/xinference-slim:4.1.0
VENV=/opt/xinference
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_dir="$here/xinference-image"
PROG=xinference-image-slim
log() { echo "$PROG: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

cache_root=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
out=
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--cache) [ $# -ge 2 ] && [ -n "$2" ] || { log "$1 needs a value (see --help)"; exit 2; }
      if [ "$1" = --out ]; then out=$2; else cache_root=$2; fi; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument '$1' (see --help)"; exit 2 ;;
  esac
done
case "$cache_root" in /*) ;; *) cache_root="$PWD/$cache_root" ;; esac

now() { date +%s; }
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
publish() {  # the tar path last on stdout (a link at --out: never a copy of GBs)
  touch "$(dirname "$1")/last-used"
  if [ -n "$out" ]; then
    mkdir -p "$(dirname "$out")"
    ln -f "$1" "$out.tmp.$$" 2>/dev/null || ln -sf "$1" "$out.tmp.$$"
    mv -Tf "$out.tmp.$$" "$out"
    echo "$out"
  else
    echo "$1"
  fi
}

started=$(now)
base_tar=$(bash "$here/xinference-image.sh" --cache "$cache_root" | tail -n 1) || die "base: tools/xinference-image.sh failed"
base_json="$(dirname "$base_tar")/image.json"
digest=$({ field "$base_json" recipe; grep -v '^[[:space:]]*#' "${BASH_SOURCE[0]}";
           cat "$recipe_dir/slim.py" "$recipe_dir/slim-requirements.txt"; } | sha256sum | cut -c1-12)
entry="$cache_root/xinference-image-slim-$digest"
if [ "$force" = 0 ] && [ -f "$entry/image.json" ] && [ -f "$entry/image.tar" ] \
   && [ "$(stat -c %s "$entry/image.tar")" = "$(field "$entry/image.json" tar_size)" ]; then
  log "cached: $entry/image.tar"
  publish "$entry/image.tar"
  exit 0
fi

work=$(mktemp -d "$cache_root/.work.xinference-image-slim.XXXXXX")
cid="xinference-image-slim-$$"
trap 'docker rm -f "$cid" >/dev/null 2>&1 || true; rm -rf "$work"; rm -f "$entry"/*.part' EXIT
base_id=$(field "$base_json" image_id)
if ! docker image inspect "$base_id" >/dev/null 2>&1; then
  t0=$(now)
  log "base: $base_id is not in the engine: docker load -i $base_tar"
  docker load -q -i "$base_tar" >&2 || die "base: docker load failed"
  log "base: loaded in $(( $(now) - t0 )) s"
fi
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
docker commit -m "tools/xinference-image-slim.sh over $base_id" \
  --change "ENV CUDA_VERSION=$cuda" --change "ENV NVIDIA_REQUIRE_CUDA=cuda>=$cuda" \
  --change 'LABEL org.opencontainers.image.title="xinference-slim-standin"' \
  --change 'LABEL org.opencontainers.image.description="stand-in of the official slim Xinference 4.1.0 image: no engine, torch family relabelled +cu (tools/xinference-image-slim.sh)"' \
  "$cid" "$TAG" >/dev/null || die "commit: docker commit failed"
docker rm "$cid" >/dev/null
layer=$(( $(docker image inspect -f '{{.Size}}' "$TAG") - $(docker image inspect -f '{{.Size}}' "$base_id") ))
log "slim: done in $(( $(now) - t0 )) s; the image is $layer bytes larger than the base (negative: smaller)"
mkdir -p "$entry"
t0=$(now)
log "save: docker save $TAG to $entry/image.tar"
sum=$(docker save "$TAG" | tee "$entry/image.tar.part" | sha256sum | cut -d' ' -f1)
mv -f "$entry/image.tar.part" "$entry/image.tar"
log "save: done in $(( $(now) - t0 )) s"
python3 - "$entry/image.json.part" "$TAG" "$(docker image inspect -f '{{.Id}}' "$TAG")" "$entry/image.tar" \
    "$sum" "$(( $(now) - started ))" "$digest" "$base_json" "$work/out/slim.txt" "$layer" <<'EOF'
import json, os, sys, time
path, tag, iid, tar, sha, secs, recipe, base, slim, layer = sys.argv[1:]
base = json.load(open(base))
doc = {"tag": tag, "image_id": iid, "tar": tar, "tar_size": os.path.getsize(tar), "tar_sha256": sha,
       "build_seconds": int(secs), "kind": "variant", "recipe": recipe, "size_over_base": int(layer),
       "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "base": {"tar": base["tar"], "image_id": base["image_id"], "recipe": base["recipe"]},
       "slim": open(slim).read().splitlines()}
json.dump(doc, open(path, "w"), indent=2)
EOF
mv -f "$entry/image.json.part" "$entry/image.json"
log "built in $(field "$entry/image.json" build_seconds) s"
publish "$entry/image.tar"
