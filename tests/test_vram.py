"""VRAM per GPU before anything is touched: the estimate against the pinned Xinference's own
cal-model-mem, and the rule that refuses a GPU its models overflow (stackspec/vram.py, stackspec/rules.py).

The three config.json fixtures are the published files of Qwen2.5-0.5B-Instruct,
Qwen2.5-7B-Instruct and Llama-3.1-8B-Instruct: the Qwen ones byte for byte (their sha256 is
the one Xinference's catalog records for them), and all three have the dimensions the catalog
holds for its model (the metadata cal-model-mem computes from when it runs offline).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from xinference.model.llm import match_llm
from xinference.model.llm.memory import (estimate_llm_gpu_memory, estimate_llm_gpu_memory_details,
                                         load_model_config_json)

from stackspec.config import ModelConfig
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.rules import server_budgets
from stackspec.vram import (DEFAULT_CONTEXT, OVERHEAD_MIB, WEIGHTS_FACTOR, estimate_vram, read_model_files)
from bundle.plan.report import write_report
from tests.stack_configs import docker_stack, namespaced

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "llm_configs"
# fixture directory -> (Xinference catalog name, size_in_billions as the catalog writes it)
CATALOG = {"Qwen2.5-0.5B-Instruct": ("qwen2.5-instruct", "0_5"), "Qwen2.5-7B-Instruct": ("qwen2.5-instruct", "7"),
           "Llama-3.1-8B-Instruct": ("llama-3.1-instruct", "8")}
DIMS = ("vocab_size", "num_attention_heads", "num_key_value_heads", "hidden_size", "intermediate_size",
        "num_hidden_layers")


@pytest.fixture(autouse=True)
def catalog_from_modelscope(monkeypatch):
    # Llama-3.1's catalog metadata is recorded for its modelscope source; nothing is downloaded either way.
    monkeypatch.setenv("XINFERENCE_MODEL_SRC", "modelscope")


def catalog_metadata(fixture: str):
    name, size = CATALOG[fixture]
    family = match_llm(model_name=name, model_format="pytorch", model_size_in_billions=size, quantization="none")
    return family.model_specs[0].model_metadata


def needed(est):
    """What the model itself needs: a reserving engine's (vLLM's) estimate keeps it beside its share."""
    return est.need if est.kind == "reserved" else est


def llm(fixture: str, **fields) -> ModelConfig:
    return ModelConfig.model_validate({"uid": fixture.lower(), "type": "LLM", "format": "pytorch", "gpus": [0],
                                       "size_in_billions": CATALOG[fixture][1], **fields})


@pytest.mark.parametrize("fixture", sorted(CATALOG))
def test_fixtures_are_the_published_configs(fixture):
    metadata = catalog_metadata(fixture)
    config = json.loads((CONFIGS / fixture / "config.json").read_text())
    assert {k: config[k] for k in DIMS} == {k: getattr(metadata, k) for k in DIMS}
    if fixture.startswith("Qwen"):
        assert hashlib.sha256((CONFIGS / fixture / "config.json").read_bytes()).hexdigest() == metadata.config_sha256


# (fixture, format, quantization, context length, kv-cache bits): what `xinference cal-model-mem` is given
CAL_MODEL_MEM = [("Qwen2.5-0.5B-Instruct", "pytorch", "none", 4096, 16),
                 ("Qwen2.5-7B-Instruct", "pytorch", "none", 8192, 16),
                 ("Qwen2.5-7B-Instruct", "gptq", "Int8", 4096, 8),
                 ("Llama-3.1-8B-Instruct", "pytorch", "none", 4096, 16),
                 ("Llama-3.1-8B-Instruct", "awq", "Int4", 2048, 16)]


@pytest.mark.parametrize("fixture,model_format,quantization,context,kv_bits", CAL_MODEL_MEM)
def test_estimate_is_within_10_percent_of_cal_model_mem(fixture, model_format, quantization, context, kv_bits):
    # cal-model-mem's own function, offline (allow_download=False: catalog metadata or nothing).
    name, size = CATALOG[fixture]
    theirs = estimate_llm_gpu_memory(size, quantization, context, model_format, name, kv_bits, allow_download=False)
    assert theirs is not None
    # An LLM without an engine is computed exactly as cal-model-mem does (it passes no engine).
    extra = {"context_length": context, **({"kv_cache_dtype": "fp8"} if kv_bits == 8 else {})}
    ours = estimate_vram(llm(fixture, format=model_format, quantization=quantization, extra=extra),
                         read_model_files(CONFIGS / fixture))
    expected_gb = theirs.total / 1024
    print(f"{fixture} {model_format} q={quantization} ctx={context} kv={kv_bits}: ours {ours.gb} GB, cal-model-mem "
          f"{expected_gb:.2f} GB ({(ours.gb - expected_gb) / expected_gb:+.1%})")
    assert ours.kind == "computed" and ours.how.startswith("computed from config.json")
    assert abs(ours.gb - expected_gb) <= 0.10 * expected_gb


@pytest.mark.parametrize("fixture,engine,context", [("Qwen2.5-7B-Instruct", "vllm", 32768),
                                                     ("Llama-3.1-8B-Instruct", "transformers", 4096),
                                                     ("Qwen2.5-0.5B-Instruct", "llama.cpp", 8192)])
def test_engine_aware_estimate_matches_xinference_from_the_local_config(fixture, engine, context):
    # The inner function cal-model-mem calls, given the parsed local config.json and the engine.
    info = load_model_config_json(str(CONFIGS / fixture / "config.json"))
    theirs = estimate_llm_gpu_memory_details(info, float(CATALOG[fixture][1].replace("_", ".")), "none", context,
                                             "pytorch", 16, engine=engine)
    ours = needed(estimate_vram(llm(fixture, engine=engine, extra={"context_length": context}),
                                read_model_files(CONFIGS / fixture)))
    expected_gb = theirs.total / 1024
    print(f"{fixture} {engine} ctx={context}: ours {ours.gb} GB, xinference {expected_gb:.2f} GB "
          f"({(ours.gb - expected_gb) / expected_gb:+.1%})")
    assert abs(ours.gb - expected_gb) <= 0.10 * expected_gb


def test_context_defaults_to_the_model_maximum_for_vllm_and_is_capped_otherwise():
    files = read_model_files(CONFIGS / "Llama-3.1-8B-Instruct")
    assert "131072 tokens, config.json's maximum" in needed(estimate_vram(llm("Llama-3.1-8B-Instruct", engine="vllm"),
                                                                          files)).how
    assert f"{DEFAULT_CONTEXT} tokens, default {DEFAULT_CONTEXT}" in estimate_vram(
        llm("Llama-3.1-8B-Instruct", engine="transformers"), files).how


def test_weights_on_disk_replace_the_size_and_split_across_gpus(tmp_path):
    model_dir = tmp_path / "qwen"
    shutil.copytree(CONFIGS / "Qwen2.5-7B-Instruct", model_dir)
    with open(model_dir / "model-00001-of-00001.safetensors", "wb") as f:
        f.truncate(8 * 1024 ** 3)  # sparse: 8 GiB by size, nothing on disk
    (model_dir / "pytorch_model.bin").write_bytes(b"x" * 1024)  # the same weights again: not counted
    files = read_model_files(model_dir)
    assert (files.weights_bytes, files.weight_files) == (8 * 1024 ** 3, 1)
    one = needed(estimate_vram(llm("Qwen2.5-7B-Instruct", engine="vllm", extra={"max_model_len": 8192}), files))
    two = needed(estimate_vram(llm("Qwen2.5-7B-Instruct", engine="vllm", gpus=[0, 1], extra={"max_model_len": 8192}),
                               files))
    assert "weights 8 (on disk)" in one.how and "8192 tokens, extra.max_model_len" in one.how
    assert two.gb < one.gb and "split over 2 GPUs" in two.how
    assert one.gb - two.gb == pytest.approx(4.2, abs=0.2)  # half of the weights + KV cache


def test_non_llm_is_its_weights_times_the_factor(tmp_path):
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "model.safetensors").write_bytes(b"\0" * (64 * 1024 ** 2))
    est = estimate_vram(ModelConfig(uid="emb", type="embedding", gpus=[0], path="emb"),
                        read_model_files(tmp_path / "emb"))
    assert est.kind == "computed" and est.how.startswith(f"weights 0.1 x {WEIGHTS_FACTOR:g}")
    assert est.gb == pytest.approx((64 * WEIGHTS_FACTOR + OVERHEAD_MIB) / 1024, abs=0.1)


def models_dir_with(tmp_path: Path, *fixtures: str) -> Path:
    for fixture in fixtures:
        shutil.copytree(CONFIGS / fixture, tmp_path / fixture)
    return tmp_path


def two_llms(models_dir: Path, **first) -> dict:
    return docker_stack(models_dir=str(models_dir), gpus=[{"id": 0, "vram_gb": 24}], models=[
        {"uid": "qwen", "name": "qwen2.5-instruct", "type": "LLM", "engine": "transformers", "format": "pytorch",
         "size_in_billions": 7, "gpus": [0], "path": "Qwen2.5-7B-Instruct", **first},
        {"uid": "llama", "name": "llama-3.1-instruct", "type": "LLM", "engine": "transformers", "format": "pytorch",
         "size_in_billions": 8, "gpus": [0], "path": "Llama-3.1-8B-Instruct"}])


def test_two_llms_that_cannot_share_a_24_gb_gpu_are_refused_at_plan(tmp_path):
    models_dir = models_dir_with(tmp_path, "Qwen2.5-7B-Instruct", "Llama-3.1-8B-Instruct")
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(two_llms(models_dir)))
    [problem] = [str(p) for p in info.value.problems]
    print(problem)
    assert problem.startswith("gpus[id=0].vram_gb = 24.0: GPU 0 needs ")
    assert (", over its 24 GB (estimates, refused above 20% over): "
            "qwen 17.7 GB (computed from config.json: weights 13.1 (7B at 16-bit)") in problem
    assert "; llama 19.5 GB (computed from config.json: weights 15 (8B at 16-bit)" in problem
    assert "fix: move a model to another GPU" in problem


def test_a_declared_vram_gb_wins_over_the_estimate(tmp_path):
    models_dir = models_dir_with(tmp_path, "Qwen2.5-7B-Instruct", "Llama-3.1-8B-Instruct")
    cfg = load_stack_config(namespaced(two_llms(models_dir, vram_gb=4)))
    [(_, budget)] = server_budgets(cfg)
    assert [(uid, e.gb, e.kind) for uid, e in budget.entries] == [("qwen", 4, "declared"), ("llama", 19.5, "computed")]
    assert budget.used_gb == 23.5 and not budget.over


def test_a_model_without_files_here_is_unknown_and_not_counted(tmp_path):
    models_dir = models_dir_with(tmp_path, "Llama-3.1-8B-Instruct")  # qwen's directory is not here
    cfg = load_stack_config(namespaced(two_llms(models_dir)))
    [(_, budget)] = server_budgets(cfg)
    assert budget.unknown == ("qwen",) and budget.used_gb == 19.5
    out = io.StringIO()
    write_report(cfg, "t", tmp_path / "Pulumi.t.yaml", None, out)
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert ["0", "qwen", "?", "unknown:", "no", "files", "here"] in lines
    assert ["0", "=", "total", "19.5", "of", "24,", "4.5", "free,", "1", "unknown", "not", "counted"] in lines


def test_a_remote_docker_hosts_models_are_not_read_here(tmp_path):
    # preview on the Pulumi machine of an ssh:// host: the same path here is not the host's.
    models_dir = models_dir_with(tmp_path, "Qwen2.5-7B-Instruct", "Llama-3.1-8B-Instruct")
    cfg = load_stack_config(namespaced({**two_llms(models_dir), "docker": {"host": "ssh://ops@gpu-node-2"}}))
    [(_, budget)] = server_budgets(cfg)
    assert budget.unknown == ("qwen", "llama")
    # ... unless the caller says where the files are (`bundle plan --bundle` points at the bundle's models/)
    with pytest.raises(ConfigError, match="GPU 0 needs 37.2 GB"):
        load_stack_config(namespaced({**two_llms(models_dir), "docker": {"host": "ssh://ops@gpu-node-2"}}),
                          model_dirs=lambda m: models_dir / m.path)


def test_cluster_servers_are_summed_per_server(tmp_path):
    models_dir = models_dir_with(tmp_path, "Qwen2.5-7B-Instruct", "Llama-3.1-8B-Instruct")
    stack = {"mode": "cluster", "image": {"name": "xprobe/xinference:v4.1.0", "tar": "/b/x.tar"},
             "models_dir": str(models_dir),
             "servers": [{"name": "gpu-a", "address": "10.0.0.1", "supervisor": True, "gpus": [{"id": 0, "vram_gb": 24}]},
                         {"name": "gpu-b", "address": "10.0.0.2", "gpus": [{"id": 0, "vram_gb": 24}]}],
             "models": [dict(m, server="gpu-a") for m in two_llms(models_dir)["models"]]}
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(stack))
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("servers[gpu-a].gpus[id=0].vram_gb = 24.0: GPU 0 of gpu-a needs 37.2 GB")
    stack["models"][1]["server"] = "gpu-b"  # one LLM per server: both fit
    cfg = load_stack_config(namespaced(stack))
    assert [(where, b.models, b.used_gb) for where, b in server_budgets(cfg)] == [("gpu-a", ("qwen",), 17.7),
                                                                                 ("gpu-b", ("llama",), 19.5)]


def test_odd_files_give_a_figure_or_unknown_never_an_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"hidden_size": "big", "num_key_value_heads": "x"}')
    (tmp_path / "m" / "w.safetensors").write_bytes(b"\0" * 1024)
    odd = estimate_vram(llm("Qwen2.5-7B-Instruct", size_in_billions="seven"), read_model_files(tmp_path / "m"))
    assert odd.kind == "computed" and "as a config.json without vocab_size" in odd.how
    (tmp_path / "m" / "w.safetensors").unlink()
    (tmp_path / "m" / "config.json").write_text("[not json")
    assert estimate_vram(llm("Qwen2.5-7B-Instruct", size_in_billions="seven"), read_model_files(tmp_path / "m")) \
        .how == "unknown: no weight files (an LLM without a readable config.json)"
