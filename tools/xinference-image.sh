#!/usr/bin/env bash
# Build a real CPU Xinference image with no container registry and `docker save` it to a tar, the
# same kind of file `docker save xprobe/xinference:<version>` gives a site.
#
#   usage: tools/xinference-image.sh [--tag NAME:TAG] [--label KEY=VALUE]... [--out PATH]
#                                    [--cache DIR] [--force] [-h|--help]
#
# The base image (default tag, no extra label) is built in steps, each printed as it runs:
#   rootfs    mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates bookworm,
#             from the host's apt sources (/etc/apt/sources.list{,.d/*}; env
#             XINFERENCE_IMAGE_APT_SOURCES="FILE..." names others), no docs/man/locales, then
#             `docker import`
#   wheels    `pip download` on the host of tools/xinference-image/requirements.txt (xinference
#             4.1.0, sentence-transformers and everything they need, pinned with sha256, for
#             CPython 3.11 manylinux x86_64; no triton), and the sdists of sdists.txt built into
#             pure-Python wheels; kept in <cache>/xinference-wheels-<digest12>/ for later builds
#   install   tools/xinference-image/install.sh in a `--network none` container of that rootfs
#             (wheel dir mounted read-only): a venv /opt/xinference from those wheels by
#             `pip install --no-index` (no pip cache, no __pycache__), `pip check`, `import torch,
#             sentence_transformers, xinference`, and smoke.py: a tiny random BERT embedded and
#             reranked through sentence-transformers on CPU
#   commit    `docker commit`: ENV PATH=/opt/xinference/bin:..., CMD xinference-local -H 0.0.0.0
#             --port 9997, EXPOSE 9997, org.opencontainers.image.* labels
#   save      `docker save` to the cache, sha256 computed while writing
# A --label or --tag variant is a small step on top of the cached base image (the base is
# built first when missing, and `docker load`ed from its tar when the engine lacks it): a
# `docker commit --change LABEL` of a container of the base (labels), or a `docker tag` (tag
# only), then `docker save`.
#
# Cache: each recipe (this script's code without its comment lines, the files of
# tools/xinference-image/, the options)
# has its digest; its result is <cache>/xinference-image-<digest12>/image.tar with image.json
# (tag, image id, image size, tar size and sha256, build seconds, what takes the space). A run
# whose recipe is cached prints the path at once and does not look at the engine (the program
# loads the tar). Tars and image.json are written under temporary names and renamed, so an
# interrupted build never leaves a tar that looks finished. Each hit or build stamps the entry's
# last-used file; --prune-unused-since removes the entries a run did not use.
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
IMAGE_PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PORT=9997

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_dir="$here/xinference-image"
self="$here/$(basename "${BASH_SOURCE[0]}")"
PROG=xinference-image

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
log() { echo "$PROG: $*" >&2; }
die() { log "$*"; exit 1; }

cache_root=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
tag=$DEFAULT_TAG
labels=()
out=
force=0
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
    --force) force=1; shift ;;
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

now() { date +%s; }
hash_of() { sha256sum | cut -d' ' -f1; }
wheel_files=("$recipe_dir/requirements.txt" "$recipe_dir/sdists.txt")
recipe_files=("${wheel_files[@]}" "$recipe_dir/install.sh" "$recipe_dir/smoke.py")
# The script's code counts, its comment lines do not (a reworded comment must not cost a rebuild).
base_digest=$({ echo "xinference-image base"; grep -v '^[[:space:]]*#' "$self"; cat "${recipe_files[@]}"; } | hash_of)
if [ "$tag" = "$DEFAULT_TAG" ] && [ ${#labels[@]} = 0 ]; then
  digest=$base_digest
else
  digest=$({ echo "xinference-image variant of $base_digest"; echo "tag=$tag";
             for l in ${labels[@]+"${labels[@]}"}; do printf 'label=%s\n' "$l"; done; } | hash_of)
fi
entry_of() { echo "$cache_root/xinference-image-${1:0:12}"; }
entry=$(entry_of "$digest")
base_entry=$(entry_of "$base_digest")

human() {  # human BYTES: e.g. 5.12 GB (decimal units, as docker prints sizes)
  awk -v b="$1" 'BEGIN { split("B KB MB GB TB", u); i = 1
                         while (b >= 1000 && i < 5) { b /= 1000; i++ }
                         if (i == 1) printf "%d B", b; else printf "%.2f %s", b, u[i] }'
}
# json_get FILE KEY: a top-level string or number of one of our image.json files
json_get() {
  sed -n -e "s/^  \"$2\": \"\([^\"]*\)\",\{0,1\}\$/\1/p" -e "s/^  \"$2\": \([0-9][0-9]*\),\{0,1\}\$/\1/p" \
    "$1" 2>/dev/null | head -n 1
}
# is_done ENTRY: image.json written (last) and the tar there with its recorded size
is_done() {
  local size
  size=$(json_get "$1/image.json" tar_size)
  [ -n "$size" ] && [ -f "$1/image.tar" ] && [ "$(stat -c %s "$1/image.tar")" = "$size" ]
}
# publish TAR: print the tar path last on stdout (a hard link at --out when asked); stamps the
# entry as used (what --prune-unused-since keeps)
publish() {
  local tar=$1
  touch "$(dirname "$tar")/last-used"
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
}

# lock_cache: hold the cache's build lock (fd 9) until exit, waiting for a run that holds it;
# false where flock is missing
lock_cache() {
  command -v flock >/dev/null 2>&1 || return 1
  exec 9>"$cache_root/.xinference-image.lock"
  flock -n 9 || { log "another run is building in $cache_root; waiting for it"; flock 9; }
}
# wheels_entry: the wheel dir of the recipe's wheel files
wheels_entry() { echo "$cache_root/xinference-wheels-$(cat "${wheel_files[@]}" | hash_of | cut -c1-12)"; }
# prune SINCE: remove the image entries not used since SINCE, and the wheel dirs of other recipes
prune() {
  local since=$1 e used id err freed=0 size wheels_keep stale=() kept=0 kept_ids=" "
  last_used() { stat -c %Y "$1/last-used" 2>/dev/null || stat -c %Y "$1/image.json" 2>/dev/null || stat -c %Y "$1"; }
  for e in "$cache_root"/xinference-image-*/; do
    [ -d "$e" ] || continue
    e=${e%/}
    if [ "$(last_used "$e")" -lt "$since" ]; then
      # variants first: docker refuses to remove a base image while a variant built on it is there
      if [ "$(json_get "$e/image.json" kind || true)" = variant ]; then stale=("$e" ${stale[@]+"${stale[@]}"})
      else stale+=("$e"); fi
    else kept=$((kept + 1)); kept_ids+="$(json_get "$e/image.json" image_id || true) "; fi  # a tag-only variant shares its base's id
  done
  for e in ${stale[@]+"${stale[@]}"}; do
    used=$(last_used "$e")
    size=$(du -sb "$e" | cut -f1)
    id=$(json_get "$e/image.json" image_id || true)  # none when a build was cut off before it
    rm -rf "$e"
    freed=$((freed + size))
    log "prune: removed $e ($(human "$size"), last used $(date -u -d "@$used" +%Y-%m-%dT%H:%M:%SZ))"
    if [ -n "$id" ] && [[ "$kept_ids" == *" $id "* ]]; then
      log "prune: its image $id stays in the engine: a kept entry has it too"
    elif [ -n "$id" ] && docker image inspect "$id" >/dev/null 2>&1; then
      # Without -f: an image a container still holds stays, and docker says which container.
      if err=$(docker rmi "$id" 2>&1 >/dev/null); then
        log "prune: removed its image $id from the engine"
      else
        log "prune: its image $id stays in the engine: $(tr '\n' ' ' <<< "$err")"
      fi
    fi
  done
  wheels_keep=$(wheels_entry)
  for e in "$cache_root"/xinference-wheels-*/; do
    [ -d "$e" ] || continue
    e=${e%/}
    [ "$e" = "$wheels_keep" ] && continue
    size=$(du -sb "$e" | cut -f1)
    rm -rf "$e"
    freed=$((freed + size))
    log "prune: removed $e ($(human "$size"): the wheels of other recipe files)"
  done
  log "prune: $(human "$freed") freed; $kept image entries used since $(date -u -d "@$since" +%Y-%m-%dT%H:%M:%SZ) kept"
}

if [ -n "$prune_since" ]; then
  [ -d "$cache_root" ] || { log "prune: no cache at $cache_root: nothing to do"; exit 0; }
  lock_cache || true  # never under a build that is writing an entry
  prune "$prune_since"
  exit 0
fi

if [ "$force" = 0 ] && is_done "$entry"; then
  log "cached: $entry/image.tar ($(json_get "$entry/image.json" tag), $(json_get "$entry/image.json" tar_size) bytes)"
  publish "$entry/image.tar"
  exit 0
fi

# --- building -----------------------------------------------------------------------------------
for c in docker python3 sha256sum; do
  command -v "$c" >/dev/null 2>&1 || die "'$c' is not on PATH"
done
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers (start one: bash tools/docker-engine.sh start)"

mkdir -p "$cache_root"
cache_root=$(cd "$cache_root" && pwd)
entry=$(entry_of "$digest")
base_entry=$(entry_of "$base_digest")
# One build at a time per cache (a variant needs the base another run may be building).
if lock_cache; then
  rm -rf "$cache_root"/.work.xinference-image.*  # left by an interrupted run
  if [ "$force" = 0 ] && is_done "$entry"; then   # that run may have built it
    log "cached: $entry/image.tar"; publish "$entry/image.tar"; exit 0
  fi
fi
work=$(mktemp -d "$cache_root/.work.xinference-image.XXXXXX")
containers=()
cleanup() {
  local c
  for c in ${containers[@]+"${containers[@]}"}; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  rm -f "$entry"/*.part "$base_entry"/*.part 2>/dev/null || true
}
trap cleanup EXIT

image_size() { docker image inspect -f '{{.Size}}' "$1"; }

# save_image ENTRY IMAGE STARTED KIND EXTRA_JSON_FILE: docker save IMAGE (by tag) into ENTRY,
# then its image.json
save_image() {
  local dir=$1 ref=$2 started=$3 kind=$4 extra=$5 t0 sum id size tar_size secs
  mkdir -p "$dir"
  rm -f "$dir/image.json" "$dir"/*.part
  t0=$(now)
  id=$(docker image inspect -f '{{.Id}}' "$ref")
  size=$(image_size "$ref")
  log "save: docker save $ref ($(human "$size") image) to $dir/image.tar"
  sum=$(docker save "$ref" | tee "$dir/image.tar.part" | hash_of)
  mv -f "$dir/image.tar.part" "$dir/image.tar"
  tar_size=$(stat -c %s "$dir/image.tar")
  secs=$(( $(now) - started ))
  log "save: done in $(( $(now) - t0 )) s ($(human "$tar_size") tar)"
  docker image inspect -f '{{json .Config.Labels}}' "$ref" > "$work/labels.json"
  python3 - "$dir/image.json.part" "$kind" "$ref" "$id" "$size" "$dir/image.tar" "$tar_size" "$sum" \
            "$secs" "$digest" "$work/labels.json" "$extra" <<'EOF'
import json, sys, time
path, kind, tag, iid, size, tar, tar_size, sha, secs, recipe, labels, extra = sys.argv[1:]
doc = {"tag": tag, "image_id": iid, "image_size": int(size), "tar": tar,
       "tar_size": int(tar_size), "tar_sha256": sha, "build_seconds": int(secs),
       "kind": kind, "recipe": recipe, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "labels": json.load(open(labels))}
doc.update(json.load(open(extra)))
with open(path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF
  mv -f "$dir/image.json.part" "$dir/image.json"
}

summary() {  # summary ENTRY
  local j=$1/image.json
  log "image $(json_get "$j" tag) $(json_get "$j" image_id): $(human "$(json_get "$j" image_size)") in the engine"
  log "tar $1/image.tar: $(human "$(json_get "$j" tar_size)"), sha256 $(json_get "$j" tar_sha256)"
  log "built in $(json_get "$j" build_seconds) s"
}

# --- the base image -----------------------------------------------------------------------------
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

build_rootfs() {  # prints the id of the imported root filesystem image
  local t0 sources=()
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
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
  docker import --message "Debian $SUITE root filesystem (mmdebstrap, tools/xinference-image.sh)" "$work/root.tar" \
    | sed 's/^sha256://; s/^/sha256:/'
  rm -f "$work/root.tar"
}

wheels_dir() {  # fill (once) and print the hash-checked wheel dir of the recipe files
  local d t0 tmp platforms=() v n attempt
  d=$(wheels_entry)
  if [ -f "$d/.complete" ]; then
    log "wheels: cached in $d ($(ls "$d"/*.whl | wc -l) wheels, $(du -sh "$d" | cut -f1))"
    echo "$d"; return 0
  fi
  t0=$(now)
  tmp=$(mktemp -d "$work/wheels.XXXXXX")  # renamed into place when complete
  for v in $(seq "$GLIBC_MINOR" -1 5); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  n=$(grep -c '^[A-Za-z0-9]' "$recipe_dir/requirements.txt")
  log "wheels: pip download of $n pinned wheels for CPython $PY_VERSION manylinux x86_64 (~2.8 GB)"
  # A download that fails its pinned sha256 or breaks off is tried again (seen here: one 519 MB
  # wheel arrived with another hash once, and whole the next time). The wheels already in $tmp
  # stay: pip checks each against its hash and fetches only what is missing or wrong.
  for attempt in 1 2 3; do
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --python-version "$PY_VERSION" --implementation cp --abi "cp${PY_VERSION/./}" "${platforms[@]}" \
        -r "$recipe_dir/requirements.txt" -d "$tmp" >&2 && break
    [ "$attempt" = 3 ] && { rm -rf "$tmp"; die "wheels: pip download failed 3 times (its output above)"; }
    log "wheels: pip download failed (attempt $attempt of 3, its output above); trying again, keeping the $(ls "$tmp" | grep -c '\.whl$' || true) wheels already checked"
    sleep $(( attempt * 10 ))
  done
  if grep -q '^[A-Za-z0-9]' "$recipe_dir/sdists.txt"; then
    log "wheels: building the sdists of sdists.txt ($(grep '^[A-Za-z0-9]' "$recipe_dir/sdists.txt" | cut -d' ' -f1 | paste -sd' ' -))"
    python3 -m pip wheel --quiet --no-deps --require-hashes -r "$recipe_dir/sdists.txt" -w "$tmp/sdist-wheels" >&2 \
      || { rm -rf "$tmp"; die "wheels: building the sdists of sdists.txt failed (its output above)"; }
    for v in "$tmp"/sdist-wheels/*.whl; do
      case "$v" in *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$v" "$tmp/" ;;
        *) rm -rf "$tmp"; die "wheels: $(basename "$v") is not a pure-Python wheel: it cannot be built on the host for the image" ;;
      esac
    done
    rmdir "$tmp/sdist-wheels"
  fi
  n=$(( n + $(grep -c '^[A-Za-z0-9]' "$recipe_dir/sdists.txt" || true) ))
  [ "$(ls "$tmp"/*.whl | wc -l)" = "$n" ] || { rm -rf "$tmp"; die "wheels: expected $n wheels, got $(ls "$tmp"/*.whl | wc -l)"; }
  touch "$tmp/.complete"; chmod 755 "$tmp"
  rm -rf "$d"; mv -T "$tmp" "$d"
  log "wheels: $n wheels, $(du -sh "$d" | cut -f1) in $(( $(now) - t0 )) s -> $d"
  echo "$d"
}

build_base() {
  local started t0 rootfs wheels cid changes=() n
  started=$(now)
  wheels=$(wheels_dir)
  t0=$(now)
  rootfs=$(build_rootfs)
  log "rootfs: image $rootfs ($(human "$(image_size "$rootfs")")) in $(( $(now) - t0 )) s"
  t0=$(now)
  cid="xinference-image-build-$$"
  containers+=("$cid")
  mkdir -p "$work/out"
  log "install: pip install --no-index of $(ls "$wheels"/*.whl | wc -l) wheels into $VENV in a --network none container (a few minutes)"
  docker run --name "$cid" --network none -v "$wheels:/wheels:ro" -v "$recipe_dir:/recipe:ro" \
      -v "$work/out:/out" "$rootfs" /bin/sh /recipe/install.sh "$VENV" >&2 \
    || die "install: failed in the build container (its output above)"
  log "install: done in $(( $(now) - t0 )) s; what takes the space (KiB):"
  sed 's/^/  /' "$work/out/breakdown.txt" >&2
  t0=$(now)
  changes=(
    --change "ENV PATH=$IMAGE_PATH"
    --change "ENV LANG=C.UTF-8"
    --change "WORKDIR /"
    --change "CMD [\"xinference-local\", \"-H\", \"0.0.0.0\", \"--port\", \"$PORT\"]"
    --change "EXPOSE $PORT"
    --change "LABEL org.opencontainers.image.title=\"xinference-cpu\""
    --change "LABEL org.opencontainers.image.version=\"$XINFERENCE_VERSION\""
    --change "LABEL org.opencontainers.image.description=\"Xinference $XINFERENCE_VERSION for CPU: Debian $SUITE, Python $PY_VERSION, PyPI torch without triton; built offline by tools/xinference-image.sh\""
    --change "LABEL org.opencontainers.image.base.name=\"debian:$SUITE\""
    --change "LABEL org.opencontainers.image.licenses=\"Apache-2.0\""
    --change "LABEL xinference-offline.recipe=\"${base_digest:0:12}\""
  )
  log "commit: docker commit $cid as $DEFAULT_TAG (a few GB layer)"
  docker commit -m "tools/xinference-image.sh: venv $VENV from tools/xinference-image/requirements.txt" \
    "${changes[@]}" "$cid" "$DEFAULT_TAG" >/dev/null || die "commit: docker commit failed"
  docker rm "$cid" >/dev/null
  log "commit: done in $(( $(now) - t0 )) s"
  python3 - "$work/out/breakdown.txt" "$work/extra.json" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split(None, 2) for l in open(sys.argv[1]) if l.strip()]
doc = {"breakdown_kib": {k: {p: int(s) for kk, s, p in rows if kk == k} for k in ("total", "site", "nvidia", "torch")}}
json.dump(doc, open(sys.argv[2], "w"))
EOF
  save_image "$base_entry" "$DEFAULT_TAG" "$started" base "$work/extra.json"
}

build_variant() {
  local started t0 base_id cid change=() l key value
  started=$(now)
  base_id=$(json_get "$base_entry/image.json" image_id)
  if ! docker image inspect "$base_id" >/dev/null 2>&1; then
    t0=$(now)
    log "variant: the base image $base_id is not in the engine: docker load -i $base_entry/image.tar"
    docker load -q -i "$base_entry/image.tar" >&2 || die "variant: docker load of the base tar failed"
    log "variant: loaded in $(( $(now) - t0 )) s"
  fi
  t0=$(now)
  if [ ${#labels[@]} = 0 ]; then
    log "variant: docker tag $base_id $tag"
    docker tag "$base_id" "$tag"
  else
    for l in "${labels[@]}"; do
      key=${l%%=*}; value=${l#*=}
      value=${value//\\/\\\\}; value=${value//\"/\\\"}; value=${value//\$/\\\$}
      change+=(--change "LABEL \"$key\"=\"$value\"")
    done
    cid="xinference-image-variant-$$"
    containers+=("$cid")
    docker create --name "$cid" --network none "$base_id" >/dev/null
    log "variant: docker commit of the base with ${labels[*]} as $tag"
    docker commit -m "tools/xinference-image.sh: label variant of ${base_digest:0:12}" "${change[@]}" "$cid" "$tag" \
      >/dev/null || die "variant: docker commit failed"
    docker rm "$cid" >/dev/null
  fi
  log "variant: done in $(( $(now) - t0 )) s"
  python3 - "$base_entry/image.json" "$work/extra.json" "${labels[@]+"${labels[@]}"}" <<'EOF'
import json, sys
base = json.load(open(sys.argv[1]))
json.dump({"base": {"tar": base["tar"], "image_id": base["image_id"], "recipe": base["recipe"]},
           "extra_labels": sys.argv[3:], "breakdown_kib": base.get("breakdown_kib")}, open(sys.argv[2], "w"))
EOF
  save_image "$entry" "$tag" "$started" variant "$work/extra.json"
}

if [ "$digest" = "$base_digest" ] || [ "$force" = 1 ] || ! is_done "$base_entry"; then
  log "building the base image (recipe ${base_digest:0:12}) into $base_entry"
  build_base
  summary "$base_entry"
fi
if [ "$digest" != "$base_digest" ]; then
  log "building the variant (recipe ${digest:0:12}: tag $tag${labels[*]:+, labels ${labels[*]}}) into $entry"
  build_variant
  summary "$entry"
fi
publish "$entry/image.tar"
