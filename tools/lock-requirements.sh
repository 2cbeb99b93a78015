#!/usr/bin/env bash
# Regenerate requirements.lock from requirements.txt: every package the site's venv gets,
# pinned, with the sha256 of each of its files on PyPI (pip-compile --generate-hashes), so
# `bundle build` downloads with --require-hashes and `bundle install` installs with
# --require-hashes --no-index. pip-tools runs from its own throwaway venv: it is a tool of
# this one step, not a dependency of the project. Needs the package index (online machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
env -u PIP_FIND_LINKS "$tmp/venv/bin/pip" install -q --disable-pip-version-check pip-tools==7.6.2
# --allow-unsafe: should a dependency ever pull in pip or setuptools, it is locked like the rest.
# No PIP_* settings of this machine (a PIP_FIND_LINKS would add its local files' hashes): the
# hashes are those the index publishes.
env $(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/-u \1/p') CUSTOM_COMPILE_COMMAND="bash tools/lock-requirements.sh" \
  "$tmp/venv/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --output-file "$tmp/requirements.lock" requirements.txt
mv "$tmp/requirements.lock" requirements.lock.tmp && mv requirements.lock.tmp requirements.lock
echo "lock-requirements: wrote requirements.lock ($(grep -c '^[a-z]' requirements.lock) packages)" >&2
