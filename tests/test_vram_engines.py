"""VRAM rules that match the engines (stackspec/vram.py, stackspec/placement.py, stackspec/vram_rules.py).

vLLM and SGLang take a share of each whole GPU when they start (gpu_memory_utilization,
mem_fraction_static), whatever the model's size: two of them at their defaults cannot share a
GPU. A declared figure refuses a GPU it overflows; a computed one refuses only beyond the stated
margin of its error and is otherwise said, with the figure and how it was had.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from bundle.plan.report import write_report
from stackspec.config import ModelConfig
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.placement import COMPUTED_MARGIN
from stackspec.rules import server_budgets, vram_warnings
from stackspec.vram import estimate_vram, read_model_files
from tests.stack_configs import docker_stack, namespaced

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "llm_configs"


def vllm(uid: str, **fields) -> dict:
    return {"uid": uid, "name": "qwen2.5-instruct", "type": "LLM", "engine": "vllm", "format": "pytorch",
            "size_in_billions": "0_5", "gpus": [0], "path": uid, **fields}


def embedding(uid: str, **fields) -> dict:
    return {"uid": uid, "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [0], "path": uid, **fields}


def stack(models: list[dict], gpu_gb=80, models_dir="/data/none") -> dict:
    gpus = [{"id": 0, "vram_gb": gpu_gb}] if gpu_gb is not None else [0]
    return namespaced(docker_stack(gpus=gpus, models=models, models_dir=str(models_dir)))


def refusal(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_stack_config(raw)
    [problem] = [str(p) for p in info.value.problems]
    print(problem)
    return problem


def test_two_vllm_models_on_one_gpu_are_refused_naming_both_shares():
    problem = refusal(stack([vllm("qwen-a"), vllm("qwen-b")]))
    assert problem.startswith("gpus[id=0] = 1.8: GPU 0 is reserved 1.8 times over: ")
    assert ("qwen-a: vllm reserves 0.9 of each GPU (gpu_memory_utilization not set: Xinference's default); "
            "qwen-b: vllm reserves 0.9 of each GPU") in problem
    assert "fix: give each reserving engine its share (extra.gpu_memory_utilization for vllm" in problem


def test_two_vllm_models_are_refused_even_where_the_gpus_memory_is_not_declared():
    assert "GPU 0 is reserved 1.8 times over" in refusal(stack([vllm("qwen-a"), vllm("qwen-b")], gpu_gb=None))


def test_shares_that_add_up_to_one_fit_and_are_counted_against_the_gpu():
    cfg = load_stack_config(stack([vllm("qwen-a", extra={"gpu_memory_utilization": 0.5}),
                                   vllm("qwen-b", extra={"gpu_memory_utilization": 0.45})]))
    [(_, budget)] = server_budgets(cfg)
    assert budget.reserved_share == 0.95 and budget.used_gb == 76.0 and not budget.over
    assert [e.how for _, e in budget.entries] == ["vllm reserves 0.5 of each GPU (extra.gpu_memory_utilization)",
                                                  "vllm reserves 0.45 of each GPU (extra.gpu_memory_utilization)"]


def test_one_vllm_model_beside_an_embedding_model_fits(tmp_path):
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "model.safetensors").write_bytes(b"\0" * (400 * 1024 ** 2))
    cfg = load_stack_config(stack([vllm("qwen"), embedding("emb")], models_dir=tmp_path))
    [(_, budget)] = server_budgets(cfg)
    figures = [(uid, budget.figure_gb(e), e.kind) for uid, e in budget.entries]
    assert figures == [("qwen", 72.0, "reserved"), ("emb", 1.3, "computed")]
    assert not budget.over and not budget.tight and vram_warnings(cfg) == []
    out = io.StringIO()
    write_report(cfg, "t", tmp_path / "Pulumi.t.yaml", None, out)
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert ["0", "=", "total", "73.3", "of", "80,", "6.7", "free"] in lines


def test_an_embedding_model_that_leaves_vllm_less_than_its_share_is_refused_when_declared():
    problem = refusal(stack([vllm("qwen"), embedding("emb", vram_gb=9)]))
    assert problem.startswith("gpus[id=0].vram_gb = 80.0: GPU 0 needs 81 GB, over its 80 GB: qwen 72 GB (vllm reserves")
    assert "(estimates" not in problem and "emb 9 GB (declared)" in problem


def test_estimates_a_little_over_are_said_and_far_over_are_refused(tmp_path):
    def weights(uid: str, gib: float) -> dict:
        (tmp_path / uid).mkdir(exist_ok=True)
        with open(tmp_path / uid / "model.safetensors", "wb") as f:
            f.truncate(int(gib * 1024 ** 3))  # sparse: the size counts, no bytes on disk
        return embedding(uid)

    # 2 x (5 GiB x 1.5 + 0.65) = 16.4 GB on a 16 GB GPU: over by 2.5%, inside the margin
    tight = stack([weights("a", 5), weights("b", 5)], gpu_gb=16, models_dir=tmp_path)
    cfg = load_stack_config(tight)
    [note] = vram_warnings(cfg)
    print(note)
    assert note.startswith(f"GPU 0 may need 16.4 GB, over its 16 GB by estimates within the {COMPUTED_MARGIN:.0%} margin")
    assert "a 8.2 GB (weights 5 x 1.5 + overhead)" in note and "declare each model's vram_gb" in note
    out = io.StringIO()
    write_report(cfg, "t", tmp_path / "Pulumi.t.yaml", None, out)
    assert "TIGHT (estimates over it, within their margin)" in out.getvalue()
    assert f"WARNING {note}" in out.getvalue()
    # 2 x (7 GiB x 1.5 + 0.65) = 22.4 GB: 40% over, refused, saying they are estimates
    problem = refusal(stack([weights("a", 7), weights("b", 7)], gpu_gb=16, models_dir=tmp_path))
    assert problem.startswith("gpus[id=0].vram_gb = 16.0: GPU 0 needs 22.4 GB, over its 16 GB (estimates, refused "
                              f"above {COMPUTED_MARGIN:.0%} over)")


def test_a_declared_figure_over_the_gpu_refuses_however_little():
    problem = refusal(stack([embedding("a", vram_gb=8), embedding("b", vram_gb=8.5)], gpu_gb=16))
    assert problem.startswith("gpus[id=0].vram_gb = 16.0: GPU 0 needs 16.5 GB, over its 16 GB: a 8 GB (declared)")


def test_a_vllm_share_too_small_for_its_model_is_refused_or_said(tmp_path):
    shutil.copytree(CONFIGS / "Qwen2.5-7B-Instruct", tmp_path / "qwen")
    qwen = vllm("qwen", size_in_billions=7, extra={"max_model_len": 8192, "gpu_memory_utilization": 0.15})
    # needs 15.4 GB (cal-model-mem's terms at 8192 tokens); 0.15 of 80 GB is 12: far short, refused
    problem = refusal(stack([qwen], gpu_gb=80, models_dir=tmp_path))
    assert problem.startswith("gpus[id=0].vram_gb = 80.0: qwen needs 15.4 GB (computed from config.json: ")
    assert "but its engine reserves only 12 GB of GPU 0" in problem
    qwen["extra"]["gpu_memory_utilization"] = 0.18  # 14.4 GB: short by an estimate within the margin, said
    [note] = vram_warnings(load_stack_config(stack([qwen], gpu_gb=80, models_dir=tmp_path)))
    assert note.startswith("qwen may need 15.4 GB (computed from config.json: ") and "more than the 14.4 GB" in note
    qwen["extra"]["gpu_memory_utilization"] = 0.5
    assert vram_warnings(load_stack_config(stack([qwen], gpu_gb=80, models_dir=tmp_path))) == []


def test_sglang_reserves_its_servers_default_by_tensor_parallel_size():
    one = ModelConfig.model_validate(vllm("a", engine="sglang"))
    four = ModelConfig.model_validate(vllm("b", engine="sglang", gpus=[0, 1, 2, 3]))
    assert (estimate_vram(one, None).share, estimate_vram(four, None).share) == (0.88, 0.85)
    own = ModelConfig.model_validate(vllm("c", engine="sglang", extra={"mem_fraction_static": 0.4}))
    assert estimate_vram(own, None).how == "sglang reserves 0.4 of each GPU (extra.mem_fraction_static)"


def test_a_reserving_models_need_stays_what_its_files_say():
    files = read_model_files(CONFIGS / "Qwen2.5-7B-Instruct")
    est = estimate_vram(ModelConfig.model_validate(vllm("qwen", size_in_billions=7, extra={"max_model_len": 8192})), files)
    assert est.kind == "reserved" and est.share == 0.9 and est.need.kind == "computed"
    assert "8192 tokens, extra.max_model_len" in est.need.how
