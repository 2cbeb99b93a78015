"""Pure placement and launch-spec functions: host GPU ids -> container indices, env, endpoint, VRAM."""

from __future__ import annotations

import pytest

from stackspec.launch import container_env, endpoint_url, launch_specs, model_dir_on_server
from stackspec.load import load_stack_config
from stackspec.placement import container_gpu_indices, docker_device_requests, docker_gpu_request, vram_budgets
from stackspec.vram import VramEstimate
from tests.stack_configs import TRUSTED, docker_stack, namespaced, reference_models


@pytest.mark.parametrize("server, model, expected", [
    ([0, 1], [0], [0]),
    ([0, 1], [1], [1]),
    ([2, 3], [3], [1]),          # the container sees host GPUs 2,3 as 0,1
    ([3, 2], [2, 3], [0, 1]),    # order of the stack file does not matter: PCI bus order
    ([1, 4, 6], [6, 1], [2, 0]),
])
def test_host_gpu_ids_map_to_container_indices(server, model, expected):
    assert container_gpu_indices(server, model) == expected


def test_unknown_host_gpu_is_an_error():
    with pytest.raises(ValueError, match=r"GPU\(s\) \[5\] are not among the server's GPUs \[0, 1\]"):
        container_gpu_indices([0, 1], [5])


def test_docker_gpu_request_names_exactly_the_server_gpus():
    assert docker_gpu_request([3, 2]) == "device=2,3"
    assert docker_gpu_request([]) is None


def test_device_request_lists_every_gpu_id_and_no_count():
    # one request, both ids, no count: the daemon refuses a request with both (what `gpus="device=0,1"` became)
    assert docker_device_requests([1, 0, 1]) == [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    assert docker_device_requests([]) == []


def test_vram_budget_sums_models_per_gpu():
    declared = lambda gb: VramEstimate(gb, "declared", "declared")  # noqa: E731
    unknown = VramEstimate(None, "unknown", "unknown: no files here")
    budgets = vram_budgets([(0, 24.0), (1, None)], [("a", [0], declared(10.0)), ("b", [0, 1], declared(8.0)),
                                                   ("c", [1], unknown)])
    assert [(b.gpu, b.used_gb, b.models, b.unknown, b.over) for b in budgets] == [
        (0, 18.0, ("a", "b"), (), False),
        (1, 8.0, ("b", "c"), ("c",), False),
    ]
    assert vram_budgets([(0, 10.0)], [("a", [0], declared(10.5))])[0].over


def test_launch_specs_of_a_remapped_server():
    models = [{"uid": "llm", "name": "qwen2.5-instruct", "type": "LLM", "engine": "vllm", "gpus": [2, 3],
               "path": "qwen"},
              {"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": 3, "path": "/data/m/emb"},
              {"uid": "off", "name": "bge-small-en-v1.5", "type": "embedding", "enabled": False, "path": "x"}]
    cfg = load_stack_config(namespaced(docker_stack(gpus=[2, 3], models=models, models_dir="/data/m")))
    specs = launch_specs(cfg, {"emb": "d1"})
    assert [(s.model_uid, s.model_name, s.gpu_idx, s.host_gpus, s.model_path, s.weights_digest) for s in specs] == [
        ("llm", "qwen2.5-instruct", [0, 1], [2, 3], "/root/.xinference/models/qwen", ""),
        ("emb", "bge-small-en-v1.5", [1], [3], "/root/.xinference/models/emb", "d1"),
    ]


def test_existing_mode_uses_server_paths_and_gpu_ids():
    cfg = load_stack_config(namespaced({"mode": "existing", "endpoint": "http://127.0.0.1:9997/",
                                        "gpus": [2], "models_dir": "/srv/models",
                                        "models": [{"uid": "e", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [2],
                                                    "path": "e"}]}))
    spec, = launch_specs(cfg, {})
    assert spec.gpu_idx == [2] and spec.model_path == "/srv/models/e"
    assert endpoint_url(cfg) == "http://127.0.0.1:9997"
    assert model_dir_on_server(cfg, cfg.models[0]) == "/srv/models/e"


def test_offline_env_defaults_and_overrides():
    env = container_env(load_stack_config(namespaced(docker_stack())))
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    # the reference stack's audio models carry packages: virtualenvs on, installed offline only
    assert env["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "1" and env["XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL"] == "1"
    custom = {"dimensions": 384, "max_tokens": 256, "language": ["en"]}
    embedding_only = load_stack_config(namespaced(docker_stack(models=[
        {"uid": "e", "name": "my-minilm", "type": "embedding", "gpus": [0], "path": "e", "custom": custom}])))
    # nothing to install (a custom model that declares no virtualenv packages): virtualenvs stay off
    # (a venv that pip-installs is fatal offline)
    assert container_env(embedding_only)["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "0"
    assert env["XINFERENCE_AUTH_ADVANCED"] == "0" and env["XINFERENCE_MODEL_SRC"] == "modelscope"
    cfg = load_stack_config(namespaced(docker_stack(container={"env": {"XINFERENCE_MODEL_SRC": "huggingface",
                                                                        "HF_ENDPOINT": 1, **TRUSTED}})),)
    env = container_env(cfg)
    assert env["XINFERENCE_MODEL_SRC"] == "huggingface" and env["HF_ENDPOINT"] == "1"
    secured = load_stack_config(namespaced(docker_stack(auth=True, api_key="k")), secret_keys={"api_key"})
    assert "XINFERENCE_AUTH_ADVANCED" not in container_env(secured)


@pytest.mark.parametrize("host, expected", [
    ("unix:///var/run/docker.sock", "http://127.0.0.1:9997"),
    ("ssh://ops@gpu-node-2", "http://gpu-node-2:9997"),
    ("tcp://10.1.2.3:2376", "http://10.1.2.3:9997"),
])
def test_endpoint_follows_the_docker_host(host, expected):
    assert endpoint_url(load_stack_config(namespaced(docker_stack(docker={"host": host})))) == expected


def test_reference_models_all_fit():
    cfg = load_stack_config(namespaced(docker_stack(models=reference_models())))
    assert [len(launch_specs(cfg, {}))] == [4]


def test_healthcheck_durations_are_written_as_the_engine_reads_them_back():
    from components.container import go_duration

    assert [go_duration(s) for s in (0, 5, 59, 60, 120, 300, 3599, 3600, 3725)] == \
        ["0s", "5s", "59s", "1m0s", "2m0s", "5m0s", "59m59s", "1h0m0s", "1h2m5s"]
