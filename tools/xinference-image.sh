#!/usr/bin/env bash
# Build a real CPU Xinference image with no container registry and `docker save` it to a tar, the
# same kind of file `docker save xprobe/xinference:<version>` gives a site.
#
#   usage: tools/xinference-image.sh [--tag NAME:TAG] [--label KEY=VALUE]... [--out PATH]
#                                    [--cache DIR] [--force] [-h|--help]
#
# The base image (default tag, no extra label) is built in steps, each printed as it runs:
#   wheels    `pip download` on the host of tools/xinference-image/requirements.txt (xinference
#             4.1.0, sentence-transformers and everything they need, pinned with sha256, for
#             CPython 3.11 manylinux x86_64; no triton), and the sdists of sdists.txt built into
#             pure-Python wheels; kept in <cache>/xinference-wheels-<digest12>/ for later builds
#   rootfs    mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates bookworm,
#             from the host's apt sources (/etc/apt/sources.list{,.d/*}; env
#             XINFERENCE_IMAGE_APT_SOURCES="FILE..." names others), no docs/man/locales, then
#             `docker import` (a local image: nothing is pulled)
#   install   tools/xinference-image/install.sh in a `--network none` container of that rootfs
#             (wheel dir mounted read-only): a venv /opt/xinference from those wheels by
#             `pip install --no-index` (no pip cache, no __pycache__), `pip check`, `import torch,
#             sentence_transformers, xinference`, and smoke.py: a tiny random BERT embedded and
#             reranked through sentence-transformers on CPU; `docker commit` of that container
#             (the one layer over the rootfs, nothing else)
#   image     `docker build` of tools/xinference-image/Dockerfile FROM that local image: PATH,
#             CMD xinference-local -H 0.0.0.0 --port 9997, EXPOSE 9997, org.opencontainers.image.*
#             labels (no build context, no layer)
#   save      `docker save` to the cache, sha256 computed while writing
# A --label or --tag variant is a small step on top of the cached base image (the base is
# built first when missing, and `docker load`ed from its tar when the engine lacks it): a
# `docker build` FROM the base with --label (labels), or a `docker tag` (tag only), then
# `docker save`.
#
# Cache: the wheel dir and each image are entries of tools/cache_entry.py, built once under a
# lock, stamped complete last (so an interrupted build never looks finished) and stamped
# last-used on each hit or build. Each recipe (this script's code without its comment lines,
# the Dockerfile, install.sh, smoke.py and the wheel files; then the options) has its digest;
# its result is <cache>/xinference-image-<digest12>/image.tar with image.json (tag, image id,
# image size, tar size and sha256, build seconds, what takes the space). A run whose recipe is
# cached prints the path at once and does not look at the engine (the program loads the tar).
# --prune-unused-since removes the entries a run did not use.
# Output: progress on stderr; the last line of stdout is the tar path (--out PATH when given).
# Exit status: 0 built or cached, 1 a step failed, 2 on a usage error.
#
# Options:
#   --tag NAME:TAG     image tag (default xinference-offline/xinference-cpu:4.1.0)
#   --label KEY=VALUE  add an image label (repeatable; a different recipe, so its own tar)
#   --out PATH         make the tar appear at PATH too: a hard link to the cached tar (never a
#                      copy; a symbolic link when PATH is on another file system)
#   --cache DIR        cache root (default $XINFERENCE_OFFLINE_CACHE or ~/.cache/xinference-offline)
#   --force            rebuild the image (and the base image under a variant); the hash-checked
#                      wheel dir is reused
#   --prune-unused-since EPOCH
#                      remove, instead of building, every image entry of the cache not used (built
#                      or found cached) since EPOCH (seconds), each with its image in the engine when
#                      one answers and no container holds it, and every wheel dir of other recipe
#                      files: .ci/run calls it after the tests pass, with the time it started, so a
#                      changed recipe does not leave 10 GB behind per change
#   -h, --help         this text
# Needs: a Docker engine (tools/docker-engine.sh start), mmdebstrap (run as root), python3 with
# pip and access to PyPI and the Debian mirror of the host's apt sources. Disk: ~2.5 GB of
# wheels, ~5 GB per tar, ~5 GB of image in the engine.
set -euo pipefail

# --- the recipe ---------------------------------------------------------------------------------
XINFERENCE_VERSION=4.1.0
DEFAULT_TAG=xinference-offline/xinference-cpu:$XINFERENCE_VERSION
SUITE=bookworm                 # Debian 12: python3 is 3.11, glibc 2.36
PY_VERSION=3.11
GLIBC_MINOR=36                 # wheels up to manylinux_2_36 run on bookworm
VENV=/opt/xinference

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_dir="$here/xinference-image"
self="$here/$(basename "${BASH_SOURCE[0]}")"
PROG=xinference-image
wheel_files=("$recipe_dir/requirements.txt" "$recipe_dir/sdists.txt")
recipe_files=("$recipe_dir/Dockerfile" "$recipe_dir/install.sh" "$recipe_dir/smoke.py" "${wheel_files[@]}")

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
log() { echo "$PROG: $*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s; }
human() { numfmt --to=si --suffix=B --format=%.2f "$1"; }  # 5.12GB: decimal units, as docker prints sizes
entries() { python3 "$here/cache_entry.py" "$@"; }
# ensure DIR DIGEST [--force] -- COMMAND...: the cache entry DIR, built by COMMAND DIR when missing
ensure() { local dir=$1 digest=$2; shift 2; entries ensure "$dir" --digest "$digest" --prog "$PROG" "$@"; }
image_cache() { python3 "$recipe_dir/image_cache.py" "$@"; }
# The steps below run as `xinference-image.sh --step NAME ARGS... DIR`, by ensure, under DIR's lock.

# --- the steps ----------------------------------------------------------------------------------
apt_sources() {  # the host's apt source files that hold an entry, as mmdebstrap MIRROR arguments
  local f
  if [ -n "${XINFERENCE_IMAGE_APT_SOURCES:-}" ]; then
    for f in $XINFERENCE_IMAGE_APT_SOURCES; do [ -f "$f" ] || die "XINFERENCE_IMAGE_APT_SOURCES: no file $f"; echo "$f"; done
    return 0
  fi
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -Eq '^[[:space:]]*(deb[[:space:]]|URIs:)' "$f" && echo "$f"
  done
  return 0
}

step_wheels() {  # step_wheels DIR: fill DIR with the hash-checked wheels of the recipe files
  local dir=$1 t0 platforms=() v n attempt
  t0=$(now)
  for v in $(seq "$GLIBC_MINOR" -1 5); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  n=$(grep -c '^[A-Za-z0-9]' "$recipe_dir/requirements.txt")
  log "wheels: pip download of $n pinned wheels for CPython $PY_VERSION manylinux x86_64 (~2.8 GB)"
  # A download that fails its pinned sha256 or breaks off is tried again (seen here: one 519 MB
  # wheel arrived with another hash once, and whole the next time). The wheels already in $dir
  # stay: pip checks each against its hash and fetches only what is missing or wrong.
  for attempt in 1 2 3; do
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --python-version "$PY_VERSION" --implementation cp --abi "cp${PY_VERSION/./}" "${platforms[@]}" \
        -r "$recipe_dir/requirements.txt" -d "$dir" >&2 && break
    [ "$attempt" = 3 ] && die "wheels: pip download failed 3 times (its output above)"
    log "wheels: pip download failed (attempt $attempt of 3, its output above); trying again, keeping the $(ls "$dir" | grep -c '\.whl$' || true) wheels already checked"
    sleep $(( attempt * 10 ))
  done
  if grep -q '^[A-Za-z0-9]' "$recipe_dir/sdists.txt"; then
    log "wheels: building the sdists of sdists.txt ($(grep '^[A-Za-z0-9]' "$recipe_dir/sdists.txt" | cut -d' ' -f1 | paste -sd' ' -))"
    python3 -m pip wheel --quiet --no-deps --require-hashes -r "$recipe_dir/sdists.txt" -w "$dir/sdist-wheels" >&2 \
      || die "wheels: building the sdists of sdists.txt failed (its output above)"
    for v in "$dir"/sdist-wheels/*.whl; do
      case "$v" in *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$v" "$dir/" ;;
        *) die "wheels: $(basename "$v") is not a pure-Python wheel: it cannot be built on the host for the image" ;;
      esac
    done
    rmdir "$dir/sdist-wheels"
  fi
  n=$(( n + $(grep -c '^[A-Za-z0-9]' "$recipe_dir/sdists.txt" || true) ))
  [ "$(ls "$dir"/*.whl | wc -l)" = "$n" ] || die "wheels: expected $n wheels, got $(ls "$dir"/*.whl | wc -l)"
  chmod 755 "$dir"
  log "wheels: $n wheels, $(du -sh "$dir" | cut -f1) in $(( $(now) - t0 )) s -> $dir"
}

needs_engine() {
  for c in docker python3 sha256sum; do command -v "$c" >/dev/null 2>&1 || die "'$c' is not on PATH"; done
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine answers (start one: bash tools/docker-engine.sh start)"
}

# save IMAGE DIR: docker save IMAGE (by tag) to DIR/image.tar; prints its sha256
save() {
  local ref=$1 dir=$2 t0 sum
  t0=$(now)
  log "save: docker save $ref ($(human "$(docker image inspect -f '{{.Size}}' "$ref")") image) to $dir/image.tar"
  sum=$(docker save "$ref" | tee "$dir/image.tar.part" | sha256sum | cut -d' ' -f1)
  mv -f "$dir/image.tar.part" "$dir/image.tar"
  log "save: done in $(( $(now) - t0 )) s ($(human "$(stat -c %s "$dir/image.tar")") tar)"
  echo "$sum"
}

step_base() {  # step_base DIGEST WHEELS_DIR WHEELS_DIGEST DIR: the base image, tagged DEFAULT_TAG
  local digest=$1 wheels=$2 wheels_digest=$3 dir=$4 work="$4/.work" started t0 rootfs sources=() cid installed sum
  started=$(now)
  log "building the base image (recipe ${digest:0:12}) into $dir"
  needs_engine
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
  ensure "$wheels" "$wheels_digest" -- bash "$self" --step wheels
  mkdir -p "$work/out"
  cid="xinference-image-build-$$"
  # shellcheck disable=SC2064  # the names are known now
  trap "docker rm -f $cid >/dev/null 2>&1 || true; rm -rf '$work'" EXIT

  mapfile -t sources < <(apt_sources)
  [ ${#sources[@]} -gt 0 ] || die "no apt sources on this host (/etc/apt/sources.list{,.d}); set XINFERENCE_IMAGE_APT_SOURCES"
  t0=$(now)
  log "rootfs: mmdebstrap --variant=apt $SUITE (python3, python3-venv, ca-certificates) from ${sources[*]}"
  mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/tmp/*' \
    "$SUITE" "$work/root.tar" "${sources[@]}" >&2 \
    || die "rootfs: mmdebstrap failed (its output above)"
  log "rootfs: $(human "$(stat -c %s "$work/root.tar")") in $(( $(now) - t0 )) s; docker import"
  rootfs=$(docker import --message "Debian $SUITE root filesystem (mmdebstrap, tools/xinference-image.sh)" "$work/root.tar")
  rm -f "$work/root.tar"
  log "rootfs: image $rootfs ($(human "$(docker image inspect -f '{{.Size}}' "$rootfs")")) in $(( $(now) - t0 )) s"

  t0=$(now)
  log "install: pip install --no-index of $(ls "$wheels"/*.whl | wc -l) wheels into $VENV in a --network none container (a few minutes)"
  docker run --name "$cid" --network none -v "$wheels:/wheels:ro" -v "$recipe_dir:/recipe:ro" \
      -v "$work/out:/out" "$rootfs" /bin/sh /recipe/install.sh "$VENV" >&2 \
    || die "install: failed in the build container (its output above)"
  log "install: done in $(( $(now) - t0 )) s; what takes the space (KiB):"
  sed 's/^/  /' "$work/out/breakdown.txt" >&2
  t0=$(now)
  log "install: docker commit of the container (a few GB layer)"
  installed=$(docker commit -m "tools/xinference-image.sh: venv $VENV from tools/xinference-image/requirements.txt" "$cid") \
    || die "install: docker commit failed"
  docker rm "$cid" >/dev/null
  log "install: committed in $(( $(now) - t0 )) s"

  t0=$(now)
  log "image: docker build of tools/xinference-image/Dockerfile FROM it as $DEFAULT_TAG"
  docker build -q --build-arg "INSTALLED=$installed" --build-arg "XINFERENCE_VERSION=$XINFERENCE_VERSION" \
      --build-arg "SUITE=$SUITE" --build-arg "PY_VERSION=$PY_VERSION" --build-arg "RECIPE=${digest:0:12}" \
      -t "$DEFAULT_TAG" - < "$recipe_dir/Dockerfile" >/dev/null || die "image: docker build failed (its output above)"
  log "image: done in $(( $(now) - t0 )) s"
  sum=$(save "$DEFAULT_TAG" "$dir")
  image_cache write "$dir" --kind base --tag "$DEFAULT_TAG" --tar-sha256 "$sum" --started "$started" \
    --recipe "$digest" --breakdown "$work/out/breakdown.txt"
}

step_variant() {  # step_variant BASE_DIR DIGEST TAG [LABEL...] DIR
  local base=$1 digest=$2 tag=$3 started t0 base_id sum flags=() l
  local labels=("${@:4:$#-4}") dir=${!#}
  started=$(now)
  log "building the variant (recipe ${digest:0:12}: tag $tag${labels[*]:+, labels ${labels[*]}}) into $dir"
  needs_engine
  base_id=$(image_cache load "$base")
  t0=$(now)
  if [ ${#labels[@]} = 0 ]; then
    log "variant: docker tag $base_id $tag"
    docker tag "$base_id" "$tag"
  else
    for l in "${labels[@]}"; do flags+=(--label "$l"); done
    log "variant: docker build FROM the base with ${labels[*]} as $tag"
    docker build -q "${flags[@]}" -t "$tag" - <<< "FROM $base_id" >/dev/null || die "variant: docker build failed"
  fi
  log "variant: done in $(( $(now) - t0 )) s"
  sum=$(save "$tag" "$dir")
  image_cache write "$dir" --kind variant --tag "$tag" --tar-sha256 "$sum" --started "$started" \
    --recipe "$digest" --base "$base" ${flags[@]+"${flags[@]}"}
}

if [ "${1:-}" = --step ]; then
  name=$2; shift 2
  "step_$name" "$@"
  exit 0
fi

# --- the command line ---------------------------------------------------------------------------
cache_root=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
tag=$DEFAULT_TAG
labels=()
out=
force=()
prune_since=
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || { log "$1 needs a value (see --help)"; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tag)
      need_arg "$@"
      [[ "$2" =~ ^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$ ]] \
        || { log "--tag wants NAME:TAG (lower-case name), not '$2'"; exit 2; }
      tag=$2; [[ "$tag" == *:* ]] || tag="$tag:latest"
      shift 2 ;;
    --label)
      need_arg "$@"
      [[ "$2" =~ ^[A-Za-z0-9][A-Za-z0-9._/-]*= ]] || { log "--label wants KEY=VALUE, not '$2'"; exit 2; }
      labels+=("$2"); shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --cache) need_arg "$@"; cache_root=$2; shift 2 ;;
    --force) force=(--force); shift ;;
    --prune-unused-since)
      need_arg "$@"
      [[ "$2" =~ ^[0-9]+$ ]] || { log "--prune-unused-since wants seconds since the epoch (date +%s), not '$2'"; exit 2; }
      prune_since=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument '$1' (see --help)"; exit 2 ;;
  esac
done
case "$cache_root" in /*) ;; *) cache_root="$PWD/$cache_root" ;; esac
[ -z "$out" ] || case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

wheels_digest=$(entries digest --file "${wheel_files[0]}" --file "${wheel_files[1]}")
wheels="$cache_root/xinference-wheels-${wheels_digest:0:12}"
if [ -n "$prune_since" ]; then
  exec python3 "$recipe_dir/image_cache.py" prune "$cache_root" --since "$prune_since" --keep-wheels "$wheels"
fi

# The script's code counts, its comment lines do not (a reworded comment must not cost a rebuild).
recipe_parts=(--text "xinference-image base" --code "$self")
for f in "${recipe_files[@]}"; do recipe_parts+=(--file "$f"); done
base_digest=$(entries digest "${recipe_parts[@]}")
base="$cache_root/xinference-image-${base_digest:0:12}"
build_base() {
  ensure "$base" "$base_digest" "$@" -- bash "$self" --step base "$base_digest" "$wheels" "$wheels_digest"
}
if [ "$tag" = "$DEFAULT_TAG" ] && [ ${#labels[@]} = 0 ]; then
  entry=$base
  build_base ${force[@]+"${force[@]}"}
else
  label_parts=()
  for l in ${labels[@]+"${labels[@]}"}; do label_parts+=(--text "label=$l"); done
  digest=$(entries digest --text "xinference-image variant of $base_digest" --text "tag=$tag" \
             ${label_parts[@]+"${label_parts[@]}"})
  entry="$cache_root/xinference-image-${digest:0:12}"
  if [ ${#force[@]} = 1 ] || ! entries complete "$entry" --digest "$digest"; then
    build_base ${force[@]+"${force[@]}"}  # the variant's build needs it
  fi
  ensure "$entry" "$digest" ${force[@]+"${force[@]}"} -- \
    bash "$self" --step variant "$base" "$digest" "$tag" ${labels[@]+"${labels[@]}"}
fi

# the tar path last on stdout (a hard link at --out when asked)
tar="$entry/image.tar"
if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  if [ "$(stat -c %d:%i "$out" 2>/dev/null)" != "$(stat -c %d:%i "$tar")" ]; then
    # A hard link where one file system holds both, else a symbolic link: never a copy of GBs.
    if ! ln -f "$tar" "$out.tmp.$$" 2>/dev/null; then
      log "$out is on another file system than the cache: linking it symbolically to $tar"
      ln -sf "$tar" "$out.tmp.$$"
    fi
    mv -Tf "$out.tmp.$$" "$out"
  fi
  tar=$out
fi
echo "$tar"
