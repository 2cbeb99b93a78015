"""stackspec/engine_packages.py against the pinned xinference's own functions: for every family of the
catalog, every engine it names (and a few it does not), every format, on CPU and two CUDA
versions, the list is the one the worker would hand xoscar. Then what the seed's models carry."""

from __future__ import annotations

import pytest

from stackspec.catalog import pinned_catalog
from stackspec.config import ModelConfig
from stackspec.engine_packages import canonical_name, model_packages, stack_packages, xinference_packages
from stackspec.launch import container_env, launch_specs
from stackspec.load import load_stack_config
from tests.stack_configs import docker_stack, namespaced

CATALOG = pinned_catalog()


def xinference_list(packages, engine, model_format, cuda_version):
    """The steps of xinference/core/worker.py _prepare_virtual_env, with the pinned package's functions."""
    from xinference.core.utils import filter_virtualenv_packages_by_markers, merge_virtual_env_packages
    from xinference.core.virtual_env_manager import (expand_engine_dependency_placeholders,
                                                     get_engine_model_format_virtualenv_packages,
                                                     get_engine_virtualenv_packages)

    engine = engine.lower() if engine else None
    defaults = get_engine_model_format_virtualenv_packages(engine, model_format)
    if engine == "trt-llm":
        defaults = get_engine_virtualenv_packages(engine) + defaults
    if not packages and not defaults:
        return []
    merged = merge_virtual_env_packages(expand_engine_dependency_placeholders(defaults + list(packages), engine), None)
    return filter_virtualenv_packages_by_markers(merged, engine, cuda_version, "linux")


def test_every_catalog_family_engine_and_format_gives_xinference_s_own_list():
    pytest.importorskip("xinference")
    checked, differ = 0, []
    for records in CATALOG.models.values():
        for record in records.values():
            for engine in dict.fromkeys([None, *record.engines, "vllm", "transformers", "llama.cpp", "trt-llm"]):
                cudas = (None, "12.8", "13.0") if engine in ("sglang", "vllm", "trt-llm") else (None,)
                for model_format in [None, *record.formats]:
                    for cuda in cudas:
                        ours = xinference_packages(CATALOG, record.packages, engine, model_format, cuda)
                        theirs = xinference_list(record.packages, engine, model_format, cuda)
                        checked += 1
                        if ours != theirs:
                            differ.append((record.name, engine, model_format, cuda, ours, theirs))
    assert checked > 6000
    assert differ == []


def test_the_seed_audio_models_carry_their_packages_and_leave_torch_to_the_image():
    sense = model_packages(ModelConfig(uid="SenseVoiceSmall", type="audio"), CATALOG)
    assert sense.requirements == ("funasr==1.2.7",)
    assert sense.from_image == ("torch", "torchaudio", "numpy")
    assert sense.wanted
    cosy = model_packages(ModelConfig(uid="CosyVoice-300M", type="audio"), CATALOG)
    assert "lightning>=2.0.0" in cosy.requirements and "diffusers==0.29.0" in cosy.requirements
    assert set(cosy.from_image) == {"torch", "numpy"}


def test_an_engine_placeholder_expands_for_that_engine_only():
    def packages(engine):
        return model_packages(ModelConfig(uid="bce-embedding-base_v1", type="embedding", engine=engine), CATALOG)

    st = packages("sentence_transformers")
    assert st.requirements == ("sentence_transformers", "einops", "transformers>=4.53.3", "accelerate>=0.28.0",
                               "peft>0.17.1")
    assert st.from_image == ("torchvision", "torch")
    assert packages("vllm").requirements == ("vllm>=0.11.2",)


def test_an_embedding_or_rerank_model_with_no_engine_is_planned_on_xinference_s_default():
    """xinference/model/embedding/core.py and rerank/core.py run such a model on sentence_transformers
    (a GGUF-only rerank family on llama.cpp); the worker installs an engine's packages only when the
    launch names it, so the plan names it and the launch does too."""
    pytest.importorskip("xinference")
    import inspect

    from xinference.model.embedding import core as embedding_core
    from xinference.model.rerank import core as rerank_core

    assert 'model_engine = "sentence_transformers"' in inspect.getsource(embedding_core.create_embedding_model_instance)
    assert '"llama.cpp"\n            if model_family.model_specs[0].model_format == "ggufv2"\n            else ' \
           '"sentence_transformers"' in inspect.getsource(rerank_core.create_rerank_model_instance)
    for uid, model_type in (("bce-embedding-base_v1", "embedding"), ("bce-reranker-base_v1", "rerank")):
        planned = model_packages(ModelConfig(uid=uid, type=model_type), CATALOG)
        named = model_packages(ModelConfig(uid=uid, type=model_type, engine="sentence_transformers"), CATALOG)
        record = CATALOG.get(model_type, uid)
        assert planned.engine == "sentence_transformers" and planned.requirements == named.requirements
        assert list(planned.requirements) + [f"#system_{n}#" for n in planned.from_image] == \
            xinference_list(record.packages, "sentence_transformers", "pytorch", None)
    gguf = model_packages(ModelConfig(uid="r", name="bce-reranker-base_v1", type="rerank", format="ggufv2"), CATALOG)
    assert gguf.engine == "llama.cpp"
    assert model_packages(ModelConfig(uid="SenseVoiceSmall", type="audio"), CATALOG).engine is None


def test_a_model_that_carries_packages_is_launched_with_its_engine_named():
    models = [{"uid": "bce-embedding-base_v1", "type": "embedding", "gpus": [0], "path": "bce"},
              {"uid": "my-emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [0], "path": "e",
               "engine": "sentence_transformers"}]
    specs = {s.model_uid: s for s in launch_specs(load_stack_config(namespaced(docker_stack(models=models,
                                                                                            gpus=[{"id": 0}]))), {})}
    assert specs["bce-embedding-base_v1"].model_engine == "sentence_transformers"
    assert specs["bce-embedding-base_v1"].extra["enable_virtual_env"] is True
    off = load_stack_config(namespaced(docker_stack(models=models, gpus=[{"id": 0}],
                                                    container={"env": {"XINFERENCE_ENABLE_VIRTUAL_ENV": "0"}})))
    # virtualenvs off (an image with the engine baked in): launched as configured, nothing named
    assert launch_specs(off, {})[0].model_engine is None


def test_the_image_s_cuda_decides_the_cuda_markers():
    sglang = ModelConfig(uid="q", name="qwen2.5-instruct", type="LLM", engine="sglang", format="pytorch")
    on_cu13 = model_packages(sglang, CATALOG, cuda_version="13.0").requirements
    assert "nvidia-cusparselt-cu13==0.8.0" in on_cu13 and "sgl_kernel" not in on_cu13
    assert "sgl_kernel" in model_packages(sglang, CATALOG, cuda_version="12.8").requirements
    assert not any("cusparselt" in r or "sgl_kernel" in r for r in model_packages(sglang, CATALOG).requirements)


def test_a_format_adds_the_engine_s_format_packages():
    gptq = model_packages(ModelConfig(uid="q", name="qwen2.5-instruct", type="LLM", engine="Transformers",
                                      format="gptq"), CATALOG)
    assert gptq.requirements[:3] == ("gptqmodel", "optimum", "datasets>=3.4.0")
    assert "transformers>=4.53.3" in gptq.requirements


def test_a_custom_model_carries_what_its_virtualenv_declares():
    custom = ModelConfig(uid="mine", type="embedding", custom={"dimensions": 384, "max_tokens": 256, "language": ["en"],
                                                              "virtualenv": {"packages": ["inflect==7.6.0",
                                                                                          "#system_numpy#"]}})
    packages = model_packages(custom, CATALOG)
    assert packages.requirements == ("inflect==7.6.0",) and packages.from_image == ("numpy",)
    plain = ModelConfig(uid="mine", type="embedding", custom={"dimensions": 384, "max_tokens": 256, "language": ["en"]})
    assert not model_packages(plain, CATALOG).wanted


def test_a_stack_that_turns_virtualenvs_off_carries_nothing_and_launches_without_them():
    models = [{"uid": "SenseVoiceSmall", "type": "audio", "gpus": [0], "path": "SenseVoiceSmall",
               "extra": {"vad_model": "/root/.xinference/models/fsmn-vad"}}]
    on = load_stack_config(namespaced(docker_stack(models=models, gpus=[{"id": 0}])))
    assert [p.uid for p in stack_packages(on)] == ["SenseVoiceSmall"]
    assert container_env(on)["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "1"
    off = load_stack_config(namespaced(docker_stack(models=models, gpus=[{"id": 0}],
                                                    container={"env": {"XINFERENCE_ENABLE_VIRTUAL_ENV": "0"}})))
    assert stack_packages(off) == [] and container_env(off)["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "0"
    assert "XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL" not in container_env(off)
    assert launch_specs(off, {})[0].extra == {"vad_model": "/root/.xinference/models/fsmn-vad"}


@pytest.mark.parametrize("line, name", [("funasr==1.2.7", "funasr"), ("HyperPyYAML", "hyperpyyaml"),
                                        ("sentence_transformers", "sentence-transformers"),
                                        ("autoawq!=0.2.6 ; sys_platform=='linux'", "autoawq"),
                                        ("#system_torch#", ""), ("https://x.example/a-1-py3-none-any.whl", "")])
def test_canonical_names(line, name):
    assert canonical_name(line) == name
