#!/usr/bin/env bash
# Build the Pulumi toolchain from Go modules into a cache reused across runs. The CLI is not
# a binary on the package registries an air-gapped workflow can rely on; its Go modules are.
#
#   usage: tools/pulumi-toolchain.sh [--cache DIR | --dir DIR] [--src NAME=PATH]...
#                                    [--plugin-src DIR] [--check] [--venv DIR] [--force] [-h|--help]
#
# Builds, each with its own stamp (a second run with everything built only prints the path):
#   pulumi                        github.com/pulumi/pulumi/pkg/v3 cmd/pulumi, from the wrapper
#                                 module tools/pulumi-toolchain/ (pkg/v3 + sdk/v3, upstream replaces)
#   pulumi-language-python        tools/pulumi-language-python/ (this repo's host: the upstream one
#                                 is a nested module the Go module proxy does not serve)
#   pulumi-language-python-exec   } plain files of github.com/pulumi/pulumi/sdk/v3, copied next to
#   pulumi-resource-pulumi-python } the CLI (the program runner, the dynamic provider launcher)
#   resource plugins command 1.2.1 and docker 5.1.0 (what pulumi-command / pulumi-docker in
#                                 requirements.txt need), installed into <dir>/home/plugins at those
#                                 versions; each is built from, in this order: --src NAME=PATH, the
#                                 archive pulumi-NAME-v<version>.tar.gz of the --plugin-src folder
#                                 (unpacked, for docker patched, in <cache>/plugin-src/<sha256>/),
#                                 the Go module proxy (which does not serve them here); a plugin
#                                 that has no source or does not build is reported, the rest goes on
#
# Output: the last line of stdout is the bin directory, so
#     PATH="$(tools/pulumi-toolchain.sh | tail -1):$PATH"
# or source <dir>/env.sh (PATH, PULUMI_HOME=<dir>/home, PULUMI_SKIP_UPDATE_CHECK=1).
# <dir>/versions.txt lists each component, its version, its source and its build seconds.
# Exit status: 0 when the CLI and the Python language host are there (plugins may be missing),
# 1 when either failed, 2 on a usage error.
#
# Options:
#   --cache DIR      cache root (default $XINFERENCE_OFFLINE_CACHE or ~/.cache/xinference-offline);
#                    the toolchain goes to DIR/pulumi-v<version>
#   --dir DIR        the toolchain directory itself (env PULUMI_TOOLCHAIN_DIR)
#   --src NAME=PATH  build resource plugin NAME (command, docker) from a local source instead of
#                    its archive and the module proxy: a git repository of the provider (its tag
#                    v<version> is used) or a source tree (its provider/ directory or the provider
#                    module itself); env PULUMI_TOOLCHAIN_SRC_COMMAND, PULUMI_TOOLCHAIN_SRC_DOCKER
#   --plugin-src DIR the plugins' source archives (default: ../shared/plugin-src of the repo
#                    root; env PULUMI_TOOLCHAIN_PLUGIN_SRC); a changed archive (sha256) rebuilds
#   --check          then smoke-test: `pulumi version`, and `pulumi up` of a one-output Python
#                    project on a file backend in a temp dir, with the virtualenv of --venv
#   --venv DIR       virtualenv with the pulumi package for --check (default: this repo's venv/)
#   --force          rebuild everything, retry plugins found unavailable before
#   -h, --help       this text
# A plugin found unavailable is not retried for a day (its reason is printed on every run).
# Go: GOFLAGS=-mod=mod -buildvcs=false, CGO_ENABLED=0, -trimpath; the module cache is Go's own
# (GOMODCACHE), so downloads persist between runs; the build cache is DIR/.go-build (unless
# GOCACHE is set), removed once everything is built.
set -euo pipefail

# --- pinned versions --------------------------------------------------------------------------
PULUMI_SDK_TARGET=3.272.0   # requirements.txt: pulumi==3.272.0
# The proxy serves github.com/pulumi/pulumi/pkg/v3 at ... v3.252.0 v3.260.0 v3.274.1 only
# (v3.261.0-v3.274.0, v3.272.0 included, answer 403 "This module version is not available");
# v3.274.1 is the nearest served release to the SDK (a newer CLI runs older SDKs; sdk/v3 is
# served at v3.274.1 too, so CLI, SDK module and runner files all come from one release).
PULUMI_VERSION=3.274.1
COMMAND_VERSION=1.2.1       # pulumi-command==1.2.1
DOCKER_VERSION=5.1.0        # pulumi-docker==5.1.0 (../shared/plugin-src has no 5.2.0 source)
# The provider modules live in the provider/ directory of their repositories, which tag only
# v<ver> and sdk/v<ver>, never provider/v<ver>: so besides the version itself we ask for the
# pseudo-version of the commit tagged v<ver> where we know it (pulumi-command v1.2.1 is commit
# 7f3eb6f3b77c, 2026-03-03T23:59:22Z).
COMMAND_MODULE=github.com/pulumi/pulumi-command/provider
COMMAND_REFS="v$COMMAND_VERSION v0.0.0-20260303235922-7f3eb6f3b77c"
DOCKER_MODULE=github.com/pulumi/pulumi-docker/provider/v5
DOCKER_REFS="v$DOCKER_VERSION"

# Builds from the archives with an empty Go build cache (modules already downloaded), measured on
# 2 cores: command 171 s; docker 134 s for generate.go + 187 s (the progress lines quote these).
COMMAND_BUILD_MINUTES=3
DOCKER_BUILD_MINUTES=5

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
PROG=pulumi-toolchain

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
log() { echo "$PROG: $*" >&2; }
die() { log "$*"; exit 1; }

cache_root=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
root=${PULUMI_TOOLCHAIN_DIR:-}
force=0
check=0
venv="$repo/venv"
src_command=${PULUMI_TOOLCHAIN_SRC_COMMAND:-}
src_docker=${PULUMI_TOOLCHAIN_SRC_DOCKER:-}
plugin_src=${PULUMI_TOOLCHAIN_PLUGIN_SRC:-$repo/../shared/plugin-src}
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || { log "$1 needs a value (see --help)"; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) need_arg "$@"; cache_root=$2; root=; shift 2 ;;
    --dir) need_arg "$@"; root=$2; shift 2 ;;
    --src)
      need_arg "$@"
      case "$2" in
        command=?*) src_command=${2#command=} ;;
        docker=?*) src_docker=${2#docker=} ;;
        *) log "--src wants command=PATH or docker=PATH, not '$2'"; exit 2 ;;
      esac
      shift 2 ;;
    --plugin-src) need_arg "$@"; plugin_src=$2; shift 2 ;;
    --check) check=1; shift ;;
    --venv) need_arg "$@"; venv=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument '$1' (see --help)"; exit 2 ;;
  esac
done

command -v go >/dev/null 2>&1 || die "Go is not installed (the 'go' command is not on PATH): the Pulumi CLI cannot be built here"

root=${root:-$cache_root/pulumi-v$PULUMI_VERSION}
mkdir -p "$root"
root=$(cd "$root" && pwd)
bin="$root/bin"
home="$root/home"
stamps="$root/stamps"
mkdir -p "$bin" "$home" "$stamps"

# One run at a time per toolchain directory (CI and a test may both call this).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/.lock"
  flock -n 9 || { log "another run is building in $root; waiting for it"; flock 9; }
  rm -rf "$root"/.work.*  # left by an interrupted run (never renamed into place)
fi

export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
# The Go build cache is this toolchain's own and goes once everything is built: 3.3 GB after a
# cold build of the CLI and both plugins, needed again only when a pin or a source archive
# changes (that rebuild starts cold: the minutes the progress lines quote). A failed run keeps
# it for the retry; a GOCACHE the caller set is theirs and stays.
own_gocache=0
if [ -z "${GOCACHE:-}" ]; then export GOCACHE="$root/.go-build"; own_gocache=1; fi
export PULUMI_HOME="$home" PULUMI_SKIP_UPDATE_CHECK=1 PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PATH="$bin:$PATH"

run_tmp=$(mktemp -d "$root/.work.XXXXXX")  # inside the toolchain dir: finished files are renamed into place
trap 'rm -rf "$run_tmp"' EXIT
workdir() { mktemp -d "$run_tmp/XXXXXX"; }

now() { date +%s; }
hash_of() { sha256sum | cut -d' ' -f1; }
# recipe_of TEXT FILE...: what a component is built from; it is rebuilt when this changes.
recipe_of() { local text=$1; shift; { echo "$text"; [ $# -eq 0 ] || cat "$@"; } | hash_of; }
is_current() {  # is_current NAME RECIPE FILE...: built from this recipe and its files are there
  local name=$1 recipe=$2; shift 2
  [ "$force" = 0 ] && [ "$(cat "$stamps/$name" 2>/dev/null)" = "$recipe" ] || return 1
  local f; for f in "$@"; do [ -x "$f" ] || return 1; done
}
# put FILE TEXT: write a small file by rename (a reader never sees half of it)
put() { printf '%s\n' "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"; }
# done_ NAME RECIPE VERSION SOURCE SECONDS: stamp it and keep its versions.txt line.
done_() {
  put "$stamps/$1.line" "$(printf '%s\t%s\t%s\t%s' "$1" "$3" "$5" "$4")"
  put "$stamps/$1" "$2"
}
failed() {  # failed NAME VERSION SOURCE REASON: a versions.txt line saying why it is missing
  rm -f "$stamps/$1"
  put "$stamps/$1.line" "$(printf '%s\t%s\t%s\t%s' "$1" "$2" "-" "$3: NOT BUILT: $4")"
}
write_versions() {
  {
    echo "# Pulumi toolchain built by tools/pulumi-toolchain.sh in $root"
    echo "# target Python SDK pulumi==$PULUMI_SDK_TARGET; CLI v$PULUMI_VERSION (nearest github.com/pulumi/pulumi/pkg/v3 the Go module proxy serves); $(go env GOVERSION)"
    printf '# component\tversion\tbuild_seconds\tsource\n'
    local n
    for n in pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python \
             plugin-command plugin-docker; do
      [ ! -f "$stamps/$n.line" ] || cat "$stamps/$n.line"
    done
  } > "$root/versions.txt.tmp"
  mv "$root/versions.txt.tmp" "$root/versions.txt"
}
# json_field FIELD < `go mod download -json` output
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" | head -n 1 | sed 's/\\n\\t/ /g; s/\\n/ /g; s/\\"/"/g'; }
# module_download MODULE@VERSION: prints the JSON; status 1 (and the JSON with "Error") when not served
module_download() { (cd "$root" && go mod download -json "$1" 2>&1); }
# replaces_of GO.MOD: its replace directives that point at modules (not at local directories)
replaces_of() {
  go mod edit -json "$1" | tr -d ' \t\n' | grep -o '{"Old":{[^}]*},"New":{[^}]*}}' \
    | grep -v '"New":{"Path":"\.' | sort || true
}

status=0

# --- 1. the pulumi CLI ----------------------------------------------------------------------------
wrapper="$here/pulumi-toolchain"
cli_src="github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION cmd/pulumi"
ldflags_cli="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
cli_recipe=$(recipe_of "pulumi $PULUMI_VERSION $ldflags_cli" "$wrapper/go.mod" "$wrapper/go.sum" "$wrapper/tools.go")
build_cli() {
  local work started out upstream_mod
  started=$(now)
  work=$(workdir)
  cp "$wrapper/go.mod" "$wrapper/go.sum" "$wrapper/tools.go" "$work/"
  # The wrapper must carry the upstream pkg/go.mod's replaces (other than its local ../sdk).
  if ! out=$(module_download "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION"); then
    log "FAILED: github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION is not served: $(echo "$out" | json_field Error)"
    return 1
  fi
  upstream_mod=$(echo "$out" | json_field GoMod)
  if [ "$(replaces_of "$upstream_mod")" != "$(replaces_of "$work/go.mod")" ]; then
    log "FAILED: tools/pulumi-toolchain/go.mod does not carry the replace directives of the upstream pkg/go.mod ($upstream_mod):"
    log "  upstream: $(replaces_of "$upstream_mod" | tr '\n' ' ')"
    log "  wrapper:  $(replaces_of "$work/go.mod" | tr '\n' ' ')"
    return 1
  fi
  log "building pulumi v$PULUMI_VERSION ($cli_src; 10+ minutes on 2 cores with a cold Go build cache)"
  if ! (cd "$work" && go build -trimpath -ldflags "$ldflags_cli" -o "$work/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) >&2; then
    log "FAILED: the pulumi CLI ($cli_src) did not build (go's error above)"
    return 1
  fi
  if ! out=$("$work/pulumi" version </dev/null 2>&1) || [ "$out" != "v$PULUMI_VERSION" ]; then
    log "FAILED: the built pulumi does not run as v$PULUMI_VERSION: 'pulumi version' said: $out"
    return 1
  fi
  mv -f "$work/pulumi" "$bin/pulumi"
  local secs=$(( $(now) - started ))
  done_ pulumi "$cli_recipe" "v$PULUMI_VERSION" "$cli_src via tools/pulumi-toolchain/" "$secs"
  log "pulumi v$PULUMI_VERSION built in ${secs}s"
}
if is_current pulumi "$cli_recipe" "$bin/pulumi"; then
  :
elif ! build_cli; then
  failed pulumi "v$PULUMI_VERSION" "$cli_src" "see the log of tools/pulumi-toolchain.sh"
  status=1
fi

# --- 2. the Python language host ------------------------------------------------------------------
lang="$repo/tools/pulumi-language-python"
lang_src="tools/pulumi-language-python (this repo; built against sdk/v3@v$PULUMI_VERSION)"
ldflags_lang="-s -w -X main.version=$PULUMI_VERSION"
lang_files=()
if [ -d "$lang" ]; then
  while IFS= read -r f; do lang_files+=("$f"); done < <(find "$lang" -maxdepth 1 -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort)
fi
lang_recipe=$(recipe_of "pulumi-language-python $PULUMI_VERSION $ldflags_lang" "${lang_files[@]+"${lang_files[@]}"}")
build_lang() {
  local work started
  started=$(now)
  [ -f "$lang/go.mod" ] || { log "FAILED: pulumi-language-python: $lang/go.mod is missing"; return 1; }
  work=$(workdir)
  cp "${lang_files[@]}" "$work/"
  log "building pulumi-language-python ($lang_src)"
  if ! (cd "$work" && go build -trimpath -ldflags "$ldflags_lang" -o "$work/pulumi-language-python" .) >&2; then
    log "FAILED: pulumi-language-python did not build (go's error above)"
    return 1
  fi
  mv -f "$work/pulumi-language-python" "$bin/pulumi-language-python"
  local secs=$(( $(now) - started ))
  done_ pulumi-language-python "$lang_recipe" "$PULUMI_VERSION" "$lang_src" "$secs"
  log "pulumi-language-python built in ${secs}s"
}
if is_current pulumi-language-python "$lang_recipe" "$bin/pulumi-language-python"; then
  :
elif ! build_lang; then
  failed pulumi-language-python "$PULUMI_VERSION" "$lang_src" "see the log of tools/pulumi-toolchain.sh"
  status=1
fi

# --- 3. the SDK's plain files ---------------------------------------------------------------------
sdk_mod="github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION"
sdk_recipe=$(recipe_of "sdk files $sdk_mod")
copy_sdk_files() {
  local out dir work started file name
  started=$(now)
  if ! out=$(module_download "$sdk_mod"); then
    log "FAILED: $sdk_mod is not served: $(echo "$out" | json_field Error)"
    return 1
  fi
  dir=$(echo "$out" | json_field Dir)
  work=$(workdir)
  for file in python/cmd/pulumi-language-python-exec python/dist/pulumi-resource-pulumi-python; do
    name=$(basename "$file")
    [ -f "$dir/$file" ] || { log "FAILED: $sdk_mod has no $file"; return 1; }
    install -m 0755 "$dir/$file" "$work/$name"
    mv -f "$work/$name" "$bin/$name"
    done_ "$name" "$sdk_recipe" "v$PULUMI_VERSION" "$sdk_mod $file" "$(( $(now) - started ))"
  done
  log "copied pulumi-language-python-exec and pulumi-resource-pulumi-python from $sdk_mod"
}
if is_current pulumi-language-python-exec "$sdk_recipe" "$bin/pulumi-language-python-exec" \
   && is_current pulumi-resource-pulumi-python "$sdk_recipe" "$bin/pulumi-resource-pulumi-python"; then
  :
elif ! copy_sdk_files; then
  failed pulumi-language-python-exec "v$PULUMI_VERSION" "$sdk_mod" "see the log of tools/pulumi-toolchain.sh"
  failed pulumi-resource-pulumi-python "v$PULUMI_VERSION" "$sdk_mod" "see the log of tools/pulumi-toolchain.sh"
  status=1
fi

# --- 4. resource plugins --------------------------------------------------------------------------
# src_identity PATH: what a local source is, for the recipe (a git commit or a digest of go.mod/go.sum)
src_identity() {
  local path=$1 tag=$2
  if git -C "$path" rev-parse --git-dir >/dev/null 2>&1; then
    echo "git $(git -C "$path" rev-parse -q --verify "$tag^{commit}" 2>/dev/null || echo "no-$tag")"
  else
    cat "$path"/provider/go.mod "$path"/provider/go.sum "$path"/go.mod "$path"/go.sum 2>/dev/null | hash_of
  fi
}
# src_tree PATH TAG MODULE DEST: put the provider module's source in DEST (or print why not)
src_tree() {
  local path=$1 tag=$2 module=$3 dest=$4 sub=""
  [ -e "$path" ] || { echo "$path does not exist"; return 1; }
  if git -C "$path" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$path" rev-parse -q --verify "$tag^{commit}" >/dev/null \
      || { echo "the git repository $path has no tag $tag"; return 1; }
    mkdir -p "$dest.git"
    git -C "$path" archive "$tag" | tar -x -C "$dest.git" || { echo "git archive $tag failed in $path"; return 1; }
    path="$dest.git"
  fi
  for sub in provider .; do
    if [ -f "$path/$sub/go.mod" ] && [ "$(go mod edit -json "$path/$sub/go.mod" | json_field Path)" = "$module" ]; then
      cp -r "$path/$sub" "$dest" && chmod -R u+w "$dest" && return 0
    fi
  done
  echo "$path holds no module $module (looked at provider/go.mod and go.mod)"
  return 1
}
# archive_tree ARCHIVE DIGEST DEST: the archive's source tree in DEST (or print why not). The archive
# is unpacked once into <cache>/plugin-src/<sha256>/ (by rename, so never half there), where the
# patches/ of a bridged provider are applied to its upstream/ (a plain tree: `patch -p1`).
archive_tree() {
  local archive=$1 digest=$2 dest=$3 cached="$cache_root/plugin-src/$2" tmp top p out tops
  if [ ! -f "$cached/.unpacked" ]; then
    mkdir -p "$cache_root/plugin-src" || { echo "cannot create $cache_root/plugin-src"; return 1; }
    find "$cache_root/plugin-src" -maxdepth 1 -name '.unpack.*' -mmin +120 -exec rm -rf {} + 2>/dev/null || true
    tmp=$(mktemp -d "$cache_root/plugin-src/.unpack.XXXXXX")
    log "unpacking $(basename "$archive") (sha256 $digest) into $cached"
    if ! out=$(tar -xzf "$archive" -C "$tmp" 2>&1); then
      rm -rf "$tmp"; echo "tar could not unpack it: $out"; return 1
    fi
    for top in "$tmp"/*/; do
      top=${top%/}
      [ -d "$top/patches" ] && [ -d "$top/upstream" ] || continue
      for p in "$top"/patches/*.patch; do
        [ -f "$p" ] || continue
        log "  applying patches/$(basename "$p") to upstream/ (patch -p1)"
        if ! out=$(cd "$top/upstream" && patch -p1 --forward --batch < "$p" 2>&1); then
          rm -rf "$tmp"
          echo "patches/$(basename "$p") does not apply to upstream/: $(echo "$out" | tail -n 5 | tr '\n' ' ')"
          return 1
        fi
      done
    done
    : > "$tmp/.unpacked"
    # another run that unpacked the same archive first wins; this copy goes
    mv -T "$tmp" "$cached" 2>/dev/null || rm -rf "$tmp"
    [ -f "$cached/.unpacked" ] || { echo "could not put the unpacked tree at $cached"; return 1; }
  fi
  tops=("$cached"/*/)
  top=$cached
  if [ "${#tops[@]}" = 1 ] && [ -d "${tops[0]}" ]; then top=${tops[0]%/}; fi
  cp -r "$top" "$dest" && chmod -R u+w "$dest" || { echo "could not copy $top to $dest"; return 1; }
}
# module_dir TREE MODULE: prints the directory of TREE (provider/ or TREE itself) that is MODULE
module_dir() {
  local sub
  for sub in provider .; do
    if [ -f "$1/$sub/go.mod" ] && [ "$(go mod edit -json "$1/$sub/go.mod" | json_field Path)" = "$2" ]; then
      (cd "$1/$sub" && pwd)
      return 0
    fi
  done
  return 1
}
# go_errors LOG: the first lines of a go command's error output, on one line
go_errors() { grep -v -e '^#' -e '^go: downloading ' "$1" | head -n 15 | tr '\n' ' '; }
# plugin NAME VERSION MODULE PACKAGE VERSION_VAR REFS SRC MINUTES
plugin() {
  local name=$1 version=$2 module=$3 package=$4 version_var=$5 refs=$6 src=$7 minutes=$8
  local plugin_dir="$home/plugins/resource-$name-v$version" stamp_name="plugin-$name"
  local recipe ref out dir started work moddir="" reason="" source="" archive="" digest="" note=""
  # Without a --src, the archive of --plugin-src is the source: its digest is part of the recipe,
  # so a changed archive rebuilds. Installed at this version from the same place is done (--force
  # rebuilds it).
  if [ -z "$src" ] && [ -f "$plugin_src/pulumi-$name-v$version.tar.gz" ]; then
    archive="$(cd "$plugin_src" && pwd)/pulumi-$name-v$version.tar.gz"
    digest=$(hash_of < "$archive")
  fi
  recipe=$(recipe_of "plugin $name $version $module $package $version_var${digest:+ archive sha256 $digest}")
  if is_current "$stamp_name" "$recipe" "$plugin_dir/pulumi-resource-$name"; then return 0; fi
  # Found unavailable from the same place: not retried for a day (a new --src or archive is tried at once).
  local unavailable="$stamps/$stamp_name.unavailable" attempt
  attempt=$(recipe_of "$recipe $refs src=${src:+$(cd "$src" 2>/dev/null && pwd) $(src_identity "$src" "v$version")}")
  if [ "$force" = 0 ] && [ -f "$unavailable" ] && [ "$(head -n 1 "$unavailable")" = "$attempt" ] \
     && [ -z "$(find "$unavailable" -mmin +1440)" ]; then
    log "plugin $name v$version: NOT BUILT (found $(date -r "$unavailable" '+%F %T'); --force retries): $(tail -n +2 "$unavailable" | tr '\n' ' ')"
    return 0
  fi
  started=$(now)
  work=$(workdir)
  if [ -n "$src" ]; then
    if reason=$(src_tree "$src" "v$version" "$module" "$work/src"); then
      source="$module from $src (tag v$version)"
      moddir="$work/src"
    else
      reason="--src $name=$src: $reason"
    fi
  elif [ -n "$archive" ]; then
    if ! reason=$(archive_tree "$archive" "$digest" "$work/tree"); then
      reason="$archive: $reason"
    elif ! moddir=$(module_dir "$work/tree" "$module"); then
      reason="$archive (sha256 $digest) holds no module $module (looked at provider/go.mod and go.mod)"
    else
      source="$module from $archive (sha256 $digest)"
      note=" (about $minutes minutes on 2 cores with a cold Go build cache, more if Go must download modules)"
    fi
  else
    for ref in $refs; do
      if out=$(module_download "$module@$ref"); then
        dir=$(echo "$out" | json_field Dir)
        if [ -n "$dir" ] && cp -r "$dir" "$work/src" && chmod -R u+w "$work/src"; then
          source="$module@$ref"
          moddir="$work/src"
          break
        fi
        reason="${reason:+$reason; }$module@$ref was downloaded but its source could not be copied from '$dir'"
        continue
      fi
      reason="${reason:+$reason; }$module@$ref is not served: $(echo "$out" | json_field Error)"
    done
  fi
  if [ -z "$source" ]; then
    plugin_unavailable "$name" "$version" "$attempt" "$module" "$reason"
    return 0
  fi
  # -X on a variable that does not exist is silently ignored: make sure the tree declares it.
  local version_pkg=${version_var%.*}
  if [ "${version_pkg#"$module"/}" = "$version_pkg" ] \
     || ! grep -Eqs "^[[:space:]]*(var[[:space:]]+)?${version_var##*.}[[:space:]]+(=|string)" "$moddir/${version_pkg#"$module"/}"/*.go; then
    plugin_unavailable "$name" "$version" "$attempt" "$module" \
      "$source declares no variable ${version_var##*.} in package $version_pkg (for -ldflags -X)"
    return 0
  fi
  # A bridged provider embeds its schema (with the version in it), which its generate.go writes.
  local cmd_dir="$moddir/$package"
  if [ -f "$cmd_dir/generate.go" ] && [ ! -f "$cmd_dir/schema-embed.json" ] \
     && grep -qs 'schema-embed.json' "$cmd_dir"/main.go; then
    log "plugin $name v$version: writing $package/schema-embed.json (VERSION=$version go run generate.go; about 2 minutes with a cold Go build cache)"
    if ! (cd "$cmd_dir" && VERSION=$version go run -trimpath generate.go) > "$work/generate.log" 2>&1 \
       || [ ! -s "$cmd_dir/schema-embed.json" ]; then
      plugin_unavailable "$name" "$version" "$attempt" "$module" \
        "$source: VERSION=$version go run generate.go failed: $(go_errors "$work/generate.log")"
      return 0
    fi
  fi
  log "building plugin $name v$version from $source$note"
  # Built inside the provider module itself, so its own go.mod (with its replace directives) applies.
  if ! (cd "$moddir" && go build -trimpath -ldflags "-s -w -X $version_var=$version" \
          -o "$work/pulumi-resource-$name" "./$package") > "$work/build.log" 2>&1; then
    plugin_unavailable "$name" "$version" "$attempt" "$module" \
      "$source does not build: $(go_errors "$work/build.log")"
    return 0
  fi
  # The binary runs and says what it is: the schema it serves names this plugin at this version.
  if ! out=$(pulumi package get-schema "$work/pulumi-resource-$name" </dev/null 2>"$work/schema.err") \
     || [ "$(echo "$out" | json_field name)" != "$name" ] || [ "$(echo "$out" | json_field version)" != "$version" ]; then
    plugin_unavailable "$name" "$version" "$attempt" "$module" \
      "the built binary does not serve a schema of $name $version (pulumi package get-schema: name '$(echo "$out" | json_field name)', version '$(echo "$out" | json_field version)'; $(head -c 600 "$work/schema.err" | tr '\n' ' '))"
    return 0
  fi
  log "plugin $name v$version: installing into $plugin_dir (pulumi plugin install resource $name $version --file ...)"
  if ! out=$(pulumi plugin install resource "$name" "$version" --file "$work/pulumi-resource-$name" --reinstall </dev/null 2>&1); then
    plugin_unavailable "$name" "$version" "$attempt" "$module" "pulumi plugin install failed: $out"
    return 0
  fi
  if ! out=$(pulumi plugin ls </dev/null 2>&1) \
     || ! echo "$out" | awk -v n="$name" -v v="$version" '$1 == n && $2 == "resource" && $3 == v {f = 1} END {exit !f}' \
     || [ ! -x "$plugin_dir/pulumi-resource-$name" ]; then
    plugin_unavailable "$name" "$version" "$attempt" "$module" \
      "installed, but 'pulumi plugin ls' does not list $name resource $version (or $plugin_dir/pulumi-resource-$name is missing): $(echo "$out" | tr '\n' ' ')"
    return 0
  fi
  rm -f "$unavailable"
  local secs=$(( $(now) - started ))
  done_ "$stamp_name" "$recipe" "v$version" "$source -> $plugin_dir" "$secs"
  log "plugin $name v$version built and installed in ${secs}s"
}
plugin_unavailable() {  # NAME VERSION ATTEMPT MODULE REASON
  log "plugin $1 v$2: NOT BUILT: $5"
  put "$stamps/plugin-$1.unavailable" "$(printf '%s\n%s' "$3" "$5")"
  failed "plugin-$1" "v$2" "$4" "$5"
}
if [ -x "$bin/pulumi" ]; then
  plugin command "$COMMAND_VERSION" "$COMMAND_MODULE" cmd/pulumi-resource-command \
    "$COMMAND_MODULE/pkg/version.Version" "$COMMAND_REFS" "$src_command" "$COMMAND_BUILD_MINUTES"
  plugin docker "$DOCKER_VERSION" "$DOCKER_MODULE" cmd/pulumi-resource-docker \
    "$DOCKER_MODULE/pkg/version.Version" "$DOCKER_REFS" "$src_docker" "$DOCKER_BUILD_MINUTES"
else
  log "resource plugins skipped: they are installed with the pulumi CLI, which is missing"
fi

write_versions
cat > "$root/env.sh.tmp" <<ENV
# Source this to use the Pulumi toolchain built by tools/pulumi-toolchain.sh
export PATH="$bin:\$PATH"
export PULUMI_HOME="$home"
export PULUMI_SKIP_UPDATE_CHECK=1
ENV
mv "$root/env.sh.tmp" "$root/env.sh"

# --- 5. --check: the CLI runs a Python program end to end ----------------------------------------
smoke_test() {
  local out tmp
  out=$(pulumi version </dev/null 2>&1) && [ "$out" = "v$PULUMI_VERSION" ] \
    || { log "CHECK FAILED: 'pulumi version' said: $out"; return 1; }
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import pulumi' 2>/dev/null \
    || { log "CHECK FAILED: $venv is not a virtualenv with the pulumi package (--venv DIR)"; return 1; }
  tmp=$(workdir)
  mkdir -p "$tmp/state" "$tmp/home" "$tmp/project"
  cat > "$tmp/project/Pulumi.yaml" <<YAML
name: toolchain-smoke
runtime:
  name: python
  options:
    toolchain: pip
    virtualenv: $(cd "$venv" && pwd)
YAML
  echo 'import pulumi; pulumi.export("x", 1)' > "$tmp/project/__main__.py"
  if ! (cd "$tmp/project" && export PULUMI_HOME="$tmp/home" PULUMI_CONFIG_PASSPHRASE=x CI=true &&
         pulumi login "file://$tmp/state" && pulumi stack init test &&
         pulumi up --yes --non-interactive --skip-preview && pulumi stack output x) </dev/null >"$tmp/log" 2>&1 \
     || [ "$(tail -n 1 "$tmp/log")" != 1 ]; then
    log "CHECK FAILED: pulumi up of a one-output Python project ($tmp/project):"
    sed 's/^/    /' "$tmp/log" >&2
    return 1
  fi
  log "check: pulumi v$PULUMI_VERSION ran a Python program (pulumi up, stack output x = 1)"
}
if [ "$check" = 1 ] && [ "$status" = 0 ]; then
  smoke_test || status=1
fi

if [ "$status" = 0 ] && [ "$own_gocache" = 1 ] && [ -d "$GOCACHE" ]; then
  log "removing the Go build cache $GOCACHE ($(du -sh "$GOCACHE" | cut -f1)): everything is built"
  rm -rf "$GOCACHE"
fi
missing=$(grep -c 'NOT BUILT' "$root/versions.txt" || true)
[ "$missing" = 0 ] || log "$missing component(s) not built: see $root/versions.txt"
[ "$status" = 0 ] || exit "$status"
echo "$bin"
