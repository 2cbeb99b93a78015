"""Cluster stacks: placement rules, the supervisor/worker graph under mocks, and `plan`'s placement."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bundle.cli import main
from stackspec.errors import ConfigError
from stackspec.launch import launch_specs
from stackspec.load import load_stack_config
from stackspec.stack_file import from_stack_file
from tests.stack_configs import namespaced
from tests.test_program import CONTAINER, run_program

ROOT = Path(__file__).resolve().parent.parent


def cluster(**overrides) -> dict:
    cfg = {
        "mode": "cluster",
        "image": {"name": "xprobe/xinference:v4.1.0", "tar": "/bundle/x.tar", "tar_sha256": "b" * 64},
        "servers": [
            {"name": "gpu-a", "address": "10.0.0.1", "supervisor": True, "docker": {"host": "ssh://ops@10.0.0.1"},
             "gpus": [{"id": 0, "vram_gb": 24}, {"id": 1, "vram_gb": 24}]},
            {"name": "gpu-b", "address": "10.0.0.2", "docker": {"host": "ssh://ops@10.0.0.2"},
             "gpus": [{"id": 2, "vram_gb": 48}, {"id": 3, "vram_gb": 48}]},
        ],
        "models": [
            {"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "server": "gpu-a", "gpus": [1], "path": "emb",
             "vram_gb": 2},
            {"uid": "rerank", "name": "bce-reranker-base_v1", "type": "rerank", "server": "gpu-b", "gpus": [3], "path": "rerank",
             "vram_gb": 2},
        ],
    }
    cfg.update(overrides)
    return cfg


def problems(cfg: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(cfg))
    return [str(p) for p in info.value.problems]


def test_placement_maps_to_worker_ip_and_container_gpu_index():
    specs = launch_specs(load_stack_config(namespaced(cluster())), {})
    assert [(s.model_uid, s.server, s.worker_ip, s.host_gpus, s.gpu_idx) for s in specs] == [
        ("emb", "gpu-a", "10.0.0.1", [1], [1]),
        ("rerank", "gpu-b", "10.0.0.2", [3], [1]),  # gpu-b's worker sees host GPUs 2,3 as 0,1
    ]


def test_model_on_an_unknown_server_or_gpu():
    cfg = cluster()
    cfg["models"][0]["server"] = "gpu-c"
    cfg["models"][1]["gpus"] = [1]
    found = problems(cfg)
    assert found[0].startswith("models[0].server = 'gpu-c': not a server of this cluster")
    assert "use one of ['gpu-a', 'gpu-b']" in found[0]
    assert found[1].startswith("models[1].gpus = [1]: GPU 1 is not a GPU of gpu-b; fix: use one of [2, 3]")


def test_over_budget_gpu_is_per_server():
    cfg = cluster()
    cfg["models"].append({"uid": "big", "name": "bge-small-en-v1.5", "type": "embedding", "server": "gpu-a", "gpus": [1],
                          "path": "b", "vram_gb": 23})
    found = problems(cfg)
    assert len(found) == 1 and found[0].startswith("servers[gpu-a].gpus[id=1].vram_gb = 24.0")
    assert "GPU 1 of gpu-a needs 25 GB, over its 24 GB: emb 2 GB (declared); big 23 GB (declared)" in found[0]


def test_cluster_shape_rules():
    cfg = cluster(gpus=[0])
    cfg["servers"][1]["supervisor"] = True
    cfg["servers"][1]["address"] = "10.0.0.1"
    del cfg["models"][0]["server"]
    found = problems(cfg)
    assert any(f.startswith("gpus = '...': in cluster mode each server has its own") for f in found)
    assert any(f.startswith("servers = ['gpu-a', 'gpu-b']: 2 servers have supervisor: true") for f in found)
    assert any(f.startswith("servers[].address = '10.0.0.1': used by 2 servers") for f in found)
    assert any(f.startswith("models[0].server = None: cluster mode places every model on a server") for f in found)


def test_server_fields_outside_cluster_mode():
    found = problems({"mode": "existing", "endpoint": "http://127.0.0.1:9997", "servers": [],
                      "models": [{"uid": "e", "name": "bge-small-en-v1.5", "type": "embedding", "path": "/m/e",
                                  "server": "gpu-a"}]})
    assert found == [
        "servers = '...': only used in cluster mode (mode is existing); fix: set mode: cluster, or remove servers",
        "models[0].server = 'gpu-a': only used in cluster mode (mode is existing); fix: remove server, or set mode: cluster",
    ]


@pytest.fixture(scope="module")
def graph():
    return run_program(cluster())


def test_one_supervisor_and_a_worker_per_server(graph):
    mocks, exports = graph
    containers = {c.name: c.inputs for c in mocks.of_type(CONTAINER)}
    assert sorted(containers) == ["xinference-gpu-a-worker-container", "xinference-gpu-b-worker-container",
                                  "xinference-supervisor-container"]
    sup = containers["xinference-supervisor-container"]
    assert sup["command"][:3] == ["xinference-supervisor", "-H", "10.0.0.1"] and "deviceRequests" not in sup
    assert sup["networkMode"] == "host"
    worker_b = containers["xinference-gpu-b-worker-container"]
    assert worker_b["command"][:3] == ["xinference-worker", "-e", "http://10.0.0.1:9997"]
    assert worker_b["deviceRequests"] == [{"driver": "nvidia", "deviceIds": ["2", "3"], "capabilities": ["gpu"]}]
    assert worker_b["networkMode"] == "host"
    assert exports["endpoint"] == "http://10.0.0.1:9997"


def test_each_server_gets_its_docker_provider_and_image_once(graph):
    mocks, _ = graph
    hosts = sorted(p.inputs["host"] for p in mocks.of_type("pulumi:providers:docker"))
    assert hosts == ["ssh://ops@10.0.0.1", "ssh://ops@10.0.0.2"]
    assert len(mocks.of_type("pulumi-python:dynamic/docker_engine:EngineImage")) == 2


def test_models_follow_their_worker(graph):
    mocks, exports = graph
    models = mocks.models()
    assert models["rerank"].inputs["worker_ip"] == "10.0.0.2" and models["rerank"].inputs["gpu_idx"] == [1]
    # Replacing gpu-b's worker relaunches only the models placed on it.
    assert models["rerank"].inputs["container_id"] == "xinference-gpu-b-worker-container-id"
    assert models["emb"].inputs["container_id"] == "xinference-gpu-a-worker-container-id"
    assert models["emb"].inputs["endpoint"] == "http://10.0.0.1:9997"
    assert exports["models"][1]["server"] == "gpu-b"


def test_plan_prints_the_cluster_placement():
    out = io.StringIO()
    assert main(["plan", "--stack", "site-a-cluster", "--stacks-dir", str(ROOT / "stacks")], out=out) == 0
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert ["qwen2.5-instruct-7b", "LLM", "gpu-b", "(10.20.0.12)", "0", "0", "40",
            "/root/.xinference/models/Qwen2.5-7B-Instruct"] in lines
    # vLLM takes 0.9 of the 48 GB GPU (Xinference's default), whatever its declared 40 GB need
    assert ["gpu-b", "0", "qwen2.5-instruct-7b", "43.2", "vllm", "reserves", "0.9"] in [line[:7] for line in lines]
    assert ["gpu-b", "0", "=", "total", "43.2", "of", "48,", "4.8", "free"] in lines


def test_committed_cluster_stack_is_valid():
    cfg = from_stack_file(ROOT / "stacks" / "Pulumi.site-a-cluster.yaml")
    assert [s.name for s in cfg.servers] == ["gpu-a", "gpu-b"] and cfg.supervisor.name == "gpu-a"


def test_the_ports_a_cluster_binds_on_each_servers_address_and_the_settings_that_move_them():
    from stackspec.launch import cluster_bound_ports, container_command, healthcheck_command

    cfg = load_stack_config(namespaced(cluster(container={"port": 9997})))
    assert [(server.address, role, port, key) for server, role, port, key in cluster_bound_ports(cfg)] == [
        ("10.0.0.1", "supervisor", 9997, "container.port"), ("10.0.0.1", "supervisor", 9999, "container.supervisor_port"),
        ("10.0.0.1", "worker", 30001, "container.worker_port"), ("10.0.0.2", "worker", 30001, "container.worker_port")]
    moved = load_stack_config(namespaced(cluster(container={"port": 8000, "supervisor_port": 8001, "worker_port": 8002})))
    assert [port for _, _, port, _ in cluster_bound_ports(moved)] == [8000, 8001, 8002, 8002]
    assert container_command("supervisor", "10.0.0.1", port=8000, actor_port=8001) == [
        "xinference-supervisor", "-H", "10.0.0.1", "--port", "8000", "--supervisor-port", "8001"]
    assert container_command("worker", "10.0.0.2", "http://10.0.0.1:8000", actor_port=8002)[-2:] == ["--worker-port", "8002"]
    assert "('10.0.0.2', 8002)" in healthcheck_command("worker", "10.0.0.2", 8002)[-1]


def test_the_three_ports_of_the_supervisors_server_must_differ():
    assert problems(cluster(container={"worker_port": 9999})) == [
        "container.worker_port = 9999: is also container.supervisor_port: the supervisor's server binds both on its "
        "address; fix: give container.worker_port a port of its own"]
    assert problems(cluster(container={"port": 9997, "supervisor_port": 9997})) == [
        "container.supervisor_port = 9997: is also container.port: the supervisor's server binds both on its "
        "address; fix: give container.supervisor_port a port of its own"]
