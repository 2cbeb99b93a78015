#!/usr/bin/env bash
# The test command of the README and of CI: set up, then run the whole suite. Extra arguments
# go to pytest. Every slow step is cached under ~/.cache/xinference-offline (or
# $XINFERENCE_OFFLINE_CACHE) by a digest of its inputs, so a second run starts the tests at once:
#   the venv (tools/setup.sh), a Docker engine (tools/docker-engine.sh: installed with apt and
#   started when none answers), the Pulumi CLI and its docker/command plugins
#   (tools/pulumi_toolchain.py, Go builds), the CPU Xinference image tar (tools/xinference-image.sh).
# The image build (mostly downloads and disk) runs beside the Go builds (mostly CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}
mkdir -p "$cache"
step() { echo "test: [$(date +%T)] $*" >&2; }

step "python venv"
bash tools/setup.sh --test

# One run at a time: the engine tests stop the engine and remove the shared image, so two runs
# would break each other; holding the lock also means nothing of an earlier run is still live.
exec 9>"$cache/test-run.lock"
if ! flock -n 9; then step "another tools/test.sh run holds $cache/test-run.lock: waiting for it"; flock 9; fi

image_pid=
engine=0
if bash tools/docker-engine.sh start; then
  engine=1
  step "CPU Xinference image, in the background (log: $cache/xinference-image.log)"
  bash tools/xinference-image.sh > "$cache/xinference-image.log" 2>&1 &
  image_pid=$!
else
  step "no Docker engine can run here: the docker tests will skip, saying so"
fi

if [ -f tools/pulumi_toolchain.py ] && command -v go >/dev/null 2>&1; then
  step "Pulumi CLI and plugins"
  bin_dir=$(python3 tools/pulumi_toolchain.py | tail -n 1)
  if [ -f "$bin_dir/../env.sh" ]; then
    # shellcheck disable=SC1091
    . "$bin_dir/../env.sh"
  else
    export PATH="$bin_dir:$PATH"
  fi
else
  step "no Go toolchain here, the Pulumi CLI cannot be built; end-to-end tests will skip"
fi

if [ -n "$image_pid" ]; then
  step "waiting for the image build"
  if ! wait "$image_pid"; then
    # The docker tests run the same script and fail with its error; show it here too.
    step "the image build failed; the end of its log:"; tail -n 30 "$cache/xinference-image.log" >&2
  else
    step "image ready: $(tail -n 1 "$cache/xinference-image.log")"
  fi
fi

if [ "$engine" = 1 ]; then
  # A run killed midway (kill -9, a timeout) leaves containers that come back with the engine and
  # hold their ports, private dockerds and gigabytes under /tmp: remove them first.
  step "what killed test runs left behind (tests/leftovers.py)"
  venv/bin/python -m tests.leftovers "$PWD" || step "tests/leftovers.py failed (its error is above); the tests run anyway"
fi

# Two lanes side by side: the tests that drive the Docker engine (one at a time: some stop the engine,
# remove the shared image, or load 5 GB) and all the others (CPU: lint, types, a real Xinference on
# CPU, the pulumi CLI against it). The engine lane spends much of its time waiting on the engine and
# the containers' health, so the other lane's CPU work fills those waits. A selection of one's own
# (-m, -k, paths) runs as one lane.
for arg in "$@"; do
  case $arg in -m|-k|-m*|-k*|tests*|*.py*) step "pytest, one lane (a selection was given)"
    exec venv/bin/python -m pytest -m "" "$@" ;;
  esac
done
# short temp roots: some tests pin messages that show a temp path whole only up to 80 characters
lanes=$(mktemp -d "${TMPDIR:-/tmp}/xol.XXXX")
step "pytest, two lanes: -m docker (here) and -m 'not docker' (beside it; log $lanes/other.log, printed at the end)"
venv/bin/python -m pytest -m "not docker" -p no:cacheprovider --basetemp "$lanes/o" "$@" \
  > "$lanes/other.log" 2>&1 &
other=$!
engine_rc=0
venv/bin/python -m pytest -m docker --basetemp "$lanes/e" "$@" || engine_rc=$?
other_rc=0
wait "$other" || other_rc=$?
step "the other lane (-m 'not docker'), exit $other_rc:"
cat "$lanes/other.log"
step "lanes: docker exit $engine_rc, the others exit $other_rc"
# pytest's 5 (nothing selected) is not a failure of a lane that happens to be empty here
for rc in $engine_rc $other_rc; do
  case $rc in 0|5) ;; *) step "a lane failed: its tests' temp dirs stay in $lanes"; exit "$rc" ;; esac
done
rm -rf "$lanes"
