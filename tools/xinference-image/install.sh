#!/bin/sh
# The install step of tools/xinference-image.sh, run as root in a `--network none` container of
# the imported Debian root filesystem, then committed as the image's one layer over it (the
# Dockerfile states the image's config). Argument: the venv path.
# Mounts: /wheels the hash-checked wheels (read-only), /recipe this directory (read-only),
# /out for pip-check.txt, smoke.log and breakdown.txt (what takes the space, KiB).
set -eu
VENV=$1
export PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m venv --without-pip "$VENV"
# pip from its own wheel (not Debian's ensurepip): every wheel of the dir, no resolver, no index.
pip_whl=$(ls /wheels/pip-*.whl)
"$VENV/bin/python" "$pip_whl/pip" install --quiet --no-index --no-deps --no-compile --only-binary=:all: /wheels/*.whl
# Complete except triton (left out of the recipe on purpose).
if ! "$VENV/bin/pip" check > /out/pip-check.txt 2>&1; then
  if grep -v "requires triton, which is not installed" /out/pip-check.txt | grep -q .; then
    cat /out/pip-check.txt >&2; echo "install: pip check failed" >&2; exit 1
  fi
fi
PATH="$VENV/bin:$PATH"
for c in python3 xinference-local xinference-supervisor xinference-worker; do
  command -v "$c" >/dev/null || { echo "install: $c is not on PATH" >&2; exit 1; }
done
python3 - >&2 <<'PY'
import urllib.request, torch, sentence_transformers, transformers, xinference
from sentence_transformers.cross_encoder import CrossEncoder
from xinference.model.embedding.sentence_transformers.core import SentenceTransformerEmbeddingModel
from xinference.model.rerank.sentence_transformers.core import SentenceTransformerRerankModel
print("install: xinference", xinference.__version__, "torch", torch.__version__,
      "sentence-transformers", sentence_transformers.__version__, "transformers", transformers.__version__,
      "cuda available:", torch.cuda.is_available())
PY
xinference-local --help >/dev/null
if ! HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 python3 /recipe/smoke.py > /out/smoke.log 2>&1; then
  cat /out/smoke.log >&2; echo "install: the embedding/rerank check failed" >&2; exit 1
fi
grep '^smoke:' /out/smoke.log | sed 's/^/install: /' >&2
# No byte code, caches or temp files in the image (Debian's own stdlib byte code stays).
find / -xdev \( -path /proc -o -path /sys -o -path /wheels -o -path /recipe -o -path /out \
  -o -path "/usr/lib/python3*" \) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
rm -rf /root/.cache /root/.config /root/.local /tmp/* /tmp/.[!.]* /var/tmp/* 2>/dev/null || true
sp=$(echo "$VENV"/lib/python3*/site-packages)
{ for d in / "$VENV" /usr; do du -skx "$d"; done | sed 's|^|total |'
  du -sk "$sp"/* | sort -rn | head -n 15 | sed 's|^|site |'
  { du -sk "$sp"/nvidia/*; du -sk "$sp"/nvidia/cu*/lib/*; } | sort -rn | head -n 12 | sed 's|^|nvidia |'
  du -sk "$sp"/torch/* | sort -rn | head -n 4 | sed 's|^|torch |'; } > /out/breakdown.txt
