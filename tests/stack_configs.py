"""Stack configs used across the program tests (plain dicts, as in a stack file)."""

from __future__ import annotations

import copy

NS = "xinference-offline"
# the reference job's CosyVoice-300M loads only on a worker that trusts its config's code (stackspec/rules.py)
TRUSTED = {"XINFERENCE_TRUST_REMOTE_CODE": "1"}


def reference_models() -> list[dict]:
    return [
        {"uid": "bce-embedding-base_v1", "type": "embedding", "gpus": [0], "path": "bce-embedding-base_v1", "vram_gb": 2},
        {"uid": "bce-reranker-base_v1", "type": "rerank", "gpus": [0], "path": "bce-reranker-base_v1", "vram_gb": 2},
        {"uid": "CosyVoice-300M", "type": "audio", "gpus": [0], "path": "CosyVoice-300M", "vram_gb": 6},
        {"uid": "SenseVoiceSmall", "type": "audio", "gpus": [1], "path": "SenseVoiceSmall", "vram_gb": 3,
         "extra": {"vad_model": "/root/.xinference/models/fsmn-vad"}},
    ]


def docker_stack(**overrides) -> dict:
    """A valid docker-mode config (un-namespaced keys); overrides replace whole keys."""
    base = {
        "image": {"name": "xprobe/xinference:v4.1.0", "tar": "/bundle/images/xinference.tar",
                  "tar_sha256": "a" * 64},
        "gpus": [{"id": 0, "vram_gb": 24}, {"id": 1, "vram_gb": 24}],
        "models_dir": "/data/docker_models",
        "models": reference_models(),
        "container": {"env": dict(TRUSTED)},
    }
    base.update(copy.deepcopy(overrides))
    if isinstance(base.get("container"), dict):  # a container override keeps the trust unless it sets env itself
        base["container"].setdefault("env", dict(TRUSTED))
    return base


def namespaced(cfg: dict) -> dict:
    return {f"{NS}:{k}": v for k, v in cfg.items()}
