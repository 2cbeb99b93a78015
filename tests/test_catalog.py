"""The pinned Xinference catalog, offline (issue 14, item 1): stackspec/xinference_catalog.json is what
tools/xinference_catalog.py extracts from the installed xinference package, byte for byte."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "stackspec" / "xinference_catalog.json"
sys.path.insert(0, str(ROOT / "tools"))
import xinference_catalog  # noqa: E402


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def test_a_fresh_extraction_is_the_shipped_file(tmp_path):
    pytest.importorskip("xinference", reason="xinference is not installed (requirements-test.txt)")
    out = tmp_path / "catalog.json"
    assert xinference_catalog.main(["--out", str(out)]) == 0
    assert out.read_bytes() == CATALOG.read_bytes(), "run: venv/bin/python tools/xinference_catalog.py"
    assert xinference_catalog.main(["--check"]) == 0


def test_it_records_the_pinned_version(shipped):
    pinned = next(line.split("==")[1].split()[0] for line in (ROOT / "requirements-test.txt").read_text().splitlines()
                  if line.startswith("xinference=="))
    assert shipped["xinference"] == pinned


@pytest.mark.parametrize("model_type, name", [("embedding", "bce-embedding-base_v1"), ("rerank", "bce-reranker-base_v1"),
                                              ("audio", "CosyVoice-300M"), ("audio", "SenseVoiceSmall"),
                                              ("LLM", "qwen2.5-instruct"), ("embedding", "bge-small-en-v1.5")])
def test_the_seed_stacks_models_are_in_it(shipped, model_type, name):
    record = shipped["models"][model_type][name]
    assert record["type"] == model_type and record["hubs"], record


def test_a_record_keeps_what_the_checks_need(shipped):
    sense = shipped["models"]["audio"]["SenseVoiceSmall"]
    assert "funasr==1.2.7" in sense["packages"] and "PyTorch" in sense["engines"] and "pytorch" in sense["formats"]
    qwen = shipped["models"]["LLM"]["qwen2.5-instruct"]
    assert {"pytorch", "awq", "gptq", "ggufv2"} <= set(qwen["formats"]) and "7" in qwen["sizes"]
    assert "vllm" in qwen["engines"] and "q4_k_m" in qwen["quantizations"]
    assert shipped["models"]["embedding"]["bce-embedding-base_v1"]["engines"] == ["sentence_transformers", "vllm"]
