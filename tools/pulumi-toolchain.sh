#!/usr/bin/env bash
# Build the Pulumi toolchain from Go modules (the CLI is not published on the package
# registries we reach, its Go modules are), into a cache reused across runs:
#
#   pulumi                        github.com/pulumi/pulumi/pkg/v3 cmd/pulumi (tools/pulumi-toolchain/)
#   pulumi-language-python        our minimal language host (tools/pulumi-language-python/), because
#                                 the upstream one is a nested module the proxy does not serve
#   pulumi-language-python-exec   } plain files of github.com/pulumi/pulumi/sdk/v3
#   pulumi-resource-pulumi-python } (the Python program runner and the dynamic provider launcher)
#   resource plugins command, docker: built when their provider modules are served; otherwise
#                                 the exact error is printed and the rest goes on
#
# The last line of stdout is the bin directory; <cache>/env.sh exports PATH, PULUMI_HOME and
# PULUMI_SKIP_UPDATE_CHECK. A second run with everything built prints the path in seconds.
#
#   bash tools/pulumi-toolchain.sh [--cache DIR] [--force]
#   env: XINFERENCE_OFFLINE_CACHE (default ~/.cache/xinference-offline)
set -euo pipefail

PULUMI_VERSION=3.274.1            # nearest pkg/v3 the proxy serves to the pinned SDK (pulumi==3.272.0)
COMMAND_PLUGIN_VERSION=1.2.1      # matches pulumi-command==1.2.1
DOCKER_PLUGIN_VERSION=5.2.0       # matches pulumi-docker==5.2.0

here=$(cd "$(dirname "$0")" && pwd)
cache=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) cache=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pulumi-toolchain: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v go >/dev/null || { echo "pulumi-toolchain: Go is not installed; the Pulumi CLI cannot be built here" >&2; exit 1; }

root="$cache/pulumi-v$PULUMI_VERSION"
bin="$root/bin"
mkdir -p "$bin" "$root/home" "$root/stamps"
versions="$root/versions.txt"
export GOFLAGS=-mod=mod CGO_ENABLED=0

log() { echo "pulumi-toolchain: $*" >&2; }

# stamp NAME INPUT...: the sha256 of the inputs; a component is rebuilt when it changes.
stamp_of() { local name=$1; shift; { echo "$name"; cat "$@"; } | sha256sum | cut -d' ' -f1; }
is_built() { [ "$force" = 0 ] && [ -x "$bin/$1" ] && [ "$(cat "$root/stamps/$1" 2>/dev/null)" = "$2" ]; }
record() {  # record NAME STAMP VERSION SECONDS
  echo "$2" > "$root/stamps/$1"
  { grep -v "^$1 " "$versions" 2>/dev/null || true; echo "$1 $3 built_in=${4}s"; } > "$versions.tmp"
  mv "$versions.tmp" "$versions"
}

# build NAME DIR PACKAGE LDFLAGS: go build into a temp file, then rename (never a half binary).
build() {
  local name=$1 dir=$2 package=$3 ldflags=$4 started tmp
  started=$(date +%s)
  tmp=$(mktemp "$bin/.$name.XXXXXX")
  log "building $name (this takes minutes the first time)"
  if (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$tmp" "$package"); then
    chmod +x "$tmp" && mv "$tmp" "$bin/$name"
    echo $(( $(date +%s) - started ))
  else
    rm -f "$tmp"
    return 1
  fi
}

# 1. The CLI.
cli_stamp=$(stamp_of pulumi "$here/pulumi-toolchain/go.mod" "$here/pulumi-toolchain/go.sum")
if ! is_built pulumi "$cli_stamp"; then
  secs=$(build pulumi "$here/pulumi-toolchain" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi \
    "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION") \
    || { log "FAILED: the pulumi CLI (github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION) did not build"; exit 1; }
  record pulumi "$cli_stamp" "v$PULUMI_VERSION" "$secs"
  log "pulumi v$PULUMI_VERSION built in ${secs}s"
fi

# 2. Our Python language host.
lang_dir="$here/pulumi-language-python"
lang_stamp=$(stamp_of pulumi-language-python "$lang_dir/main.go" "$lang_dir/go.mod" "$lang_dir/go.sum")
if ! is_built pulumi-language-python "$lang_stamp"; then
  secs=$(build pulumi-language-python "$lang_dir" . "-s -w -X main.version=$PULUMI_VERSION") \
    || { log "FAILED: pulumi-language-python did not build"; exit 1; }
  record pulumi-language-python "$lang_stamp" "$PULUMI_VERSION" "$secs"
fi

# 3. The SDK's plain files: the program runner and the dynamic provider launcher.
sdk_stamp=$(echo "sdk v$PULUMI_VERSION" | sha256sum | cut -d' ' -f1)
if ! is_built pulumi-language-python-exec "$sdk_stamp" || ! [ -x "$bin/pulumi-resource-pulumi-python" ]; then
  sdk_dir=$(cd "$here/pulumi-toolchain" && go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$sdk_dir" ] || { log "FAILED: could not download github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION"; exit 1; }
  for file in python/cmd/pulumi-language-python-exec python/dist/pulumi-resource-pulumi-python; do
    name=$(basename "$file")
    install -m 0755 "$sdk_dir/$file" "$bin/.$name.tmp" && mv "$bin/.$name.tmp" "$bin/$name"
  done
  record pulumi-language-python-exec "$sdk_stamp" "v$PULUMI_VERSION" 0
fi

# 4. Resource plugins: built only where their provider modules are served.
export PATH="$bin:$PATH" PULUMI_HOME="$root/home" PULUMI_SKIP_UPDATE_CHECK=1
try_plugin() {  # try_plugin NAME MODULE VERSION PACKAGE
  local name=$1 module=$2 version=$3 package=$4 out
  if pulumi plugin ls 2>/dev/null | grep -q "^$name .*resource.*$version"; then return 0; fi
  if [ -f "$root/stamps/plugin-$name-unavailable" ] && [ "$force" = 0 ]; then
    log "plugin $name v$version: not available ($(cat "$root/stamps/plugin-$name-unavailable"))"
    return 0
  fi
  local work; work=$(mktemp -d)
  if ! out=$(cd "$work" && go mod init plugin-build >/dev/null 2>&1 && go mod download -json "$module@v$version" 2>&1); then
    local reason; reason=$(echo "$out" | sed -n 's/.*"Error": "\(.*\)".*/\1/p' | head -1)
    log "plugin $name v$version: module $module@v$version is not served by the Go module proxy: ${reason:-$out}"
    echo "$module@v$version not served: ${reason:-unknown}" > "$root/stamps/plugin-$name-unavailable"
    rm -rf "$work"
    return 0
  fi
  local src; src=$(echo "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
  if (cd "$work/src" && go build -trimpath -o "$work/pulumi-resource-$name" "./$package"); then
    pulumi plugin install resource "$name" "$version" --file "$work/pulumi-resource-$name" >&2
    record "plugin-$name" "$version" "v$version" 0
  else
    log "plugin $name v$version: $module did not build (see the go output above)"
  fi
  rm -rf "$work"
}
try_plugin command github.com/pulumi/pulumi-command/provider "$COMMAND_PLUGIN_VERSION" cmd/pulumi-resource-command
try_plugin docker github.com/pulumi/pulumi-docker/provider/v5 "$DOCKER_PLUGIN_VERSION" cmd/pulumi-resource-docker

cat > "$root/env.sh.tmp" <<ENV
# Source this to use the toolchain built by tools/pulumi-toolchain.sh
export PATH="$bin:\$PATH"
export PULUMI_HOME="$root/home"
export PULUMI_SKIP_UPDATE_CHECK=1
ENV
mv "$root/env.sh.tmp" "$root/env.sh"
echo "$bin"
