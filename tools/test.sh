#!/usr/bin/env bash
# The test command of the README and of CI: set up, build the Pulumi toolchain (cached; only
# where Go exists), then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --test
if [ -f tools/pulumi-toolchain.sh ] && command -v go >/dev/null 2>&1; then
  bin_dir=$(bash tools/pulumi-toolchain.sh | tail -n 1)
  if [ -f "$bin_dir/../env.sh" ]; then
    # shellcheck disable=SC1091
    . "$bin_dir/../env.sh"
  else
    export PATH="$bin_dir:$PATH"
  fi
else
  echo "test: no Go toolchain here, the Pulumi CLI cannot be built; end-to-end tests will skip" >&2
fi
exec venv/bin/python -m pytest "$@"
