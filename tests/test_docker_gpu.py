"""The GPU reservation on real daemons, with no GPU: a private dockerd whose PATH holds a
stand-in `nvidia-container-runtime-hook` (it registers the NVIDIA device driver, so GPU device
requests start) and this machine's own engine, which has no NVIDIA runtime.

- the preflight: refuses the plain engine naming the runtime and the fix, accepts the stand-in,
  and leaves no probe container or image behind on either;
- `pulumi preview --stack gpu-node-1`, the product's own command, through the real CLI and
  plugins against the stand-in daemon: the image load, the container with a device request for
  host GPUs 0 and 1, and the four models with their container GPU indices;
- `pulumi up` creates that container there, and `docker inspect` shows exactly those ids;
- the same stack aimed at the plain engine fails at preview and at up before anything exists;
- dockerd stopped while an `up` runs: a clear error naming the docker host, nothing
  half-recorded, and the next `up` converges.

Models on GPUs cannot launch without a GPU, so `up` runs with the models left out (the
container is the GPU part). gpu-node-1's image name is pointed at the CPU image the tests
build; everything else is gpu-node-1's stack file.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from components.preflight import PROBE_IMAGE, gpu_runtime_problem
from tests.docker_engines import MAIN_DOCKER_HOST, TestDaemon, docker, inspect, require_main_engine
from tests.docker_site import NS, ROOT, DockerSite, free_port, image_tar, toolchain_bin

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

IMAGE = "xinference-offline/xinference-cpu:4.1.0"


def leftovers(host: str) -> tuple[bytes, bytes]:
    return (docker(host, "ps", "-aq", "--filter", "name=xinference-offline-gpu-probe").stdout.strip(),
            docker(host, "images", "-q", PROBE_IMAGE).stdout.strip())


@pytest.fixture(scope="module")
def gpu_daemon():
    require_main_engine()
    daemon = TestDaemon("gpu", gpu_hook=True).start()
    yield daemon
    daemon.stop()


def test_preflight_refuses_an_engine_without_an_nvidia_runtime_and_leaves_nothing():
    host = require_main_engine()
    problem = gpu_runtime_problem(host, [0, 1])
    assert problem is not None
    assert f"docker host {host} has no NVIDIA GPU runtime" in problem and "host GPUs 0,1" in problem
    assert "could not select device driver" in problem and "nvidia-container-toolkit" in problem
    assert leftovers(host) == (b"", b"")


def test_preflight_accepts_the_nvidia_device_driver_and_leaves_nothing(gpu_daemon):
    before = len(gpu_daemon.hook_calls())
    assert gpu_runtime_problem(gpu_daemon.host, [0, 1]) is None
    assert len(gpu_daemon.hook_calls()) == before + 1  # the probe really started with the driver's hook
    assert leftovers(gpu_daemon.host) == (b"", b"")


def gpu_node_1_config(docker_host: str, models_dir: Path, tar: Path) -> dict:
    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.gpu-node-1.yaml").read_text())["config"]
    config[f"{NS}:docker"] = {"host": docker_host}
    config[f"{NS}:image"] = {"name": IMAGE, "tar": str(tar)}
    config[f"{NS}:models_dir"] = str(models_dir)
    config[f"{NS}:container"].update({"name": f"xo-gpu-{uuid.uuid4().hex[:6]}", "port": free_port(),
                                      "bind_address": "127.0.0.1", "shm_size_mb": 1024,
                                      "healthcheck": {"interval_s": 5, "timeout_s": 5, "retries": 5,
                                                      "start_period_s": 300}})
    return config


def stand_in_models(models_dir: Path, config: dict) -> None:
    """Small stand-in directories where gpu-node-1's models and the VAD companion live."""
    for model in config[f"{NS}:models"]:
        for path in [model["path"], *(c["path"] for c in model.get("companions", []))]:
            (models_dir / path).mkdir(parents=True, exist_ok=True)
            (models_dir / path / "config.json").write_text(json.dumps({"stand_in_for": path}))


@pytest.fixture(scope="module")
def gpu_node_1(tmp_path_factory, gpu_daemon):
    root = tmp_path_factory.mktemp("gpu-node-1")
    tar = image_tar()
    site = DockerSite.from_checkout(root, "gpu-node-1", {}, toolchain_bin())
    site.config = gpu_node_1_config(gpu_daemon.host, root / "models", tar)
    stand_in_models(root / "models", site.config)
    site.write_stack(site.program / "stacks")
    site.select()
    yield site
    site.pulumi("destroy", "--yes", "--skip-preview", check=False)


def step_inputs(preview_json: str) -> dict[str, tuple[str, dict]]:
    return {s["urn"].split("::")[-1]: (s["op"], (s.get("newState") or {}).get("inputs", {}))
            for s in json.loads(preview_json)["steps"]}


def test_preview_of_gpu_node_1_reserves_host_gpus_0_and_1_and_maps_the_models(gpu_node_1):
    steps = step_inputs(gpu_node_1.pulumi("preview", "--json").stdout)
    op, container = steps["xinference-server-container"]
    assert op == "create"
    requested = [{k: v for k, v in r.items() if k != "__defaults"} for r in container["deviceRequests"]]
    assert requested == [{"capabilities": ["gpu"], "deviceIds": ["0", "1"], "driver": "nvidia"}]
    assert "gpus" not in container
    assert steps["xinference-image-load"][0] == "create"
    gpu_idx = {name: inputs.get("gpu_idx") for name, (op, inputs) in steps.items()
               if op == "create" and "model_uid" in inputs}
    assert gpu_idx == {"xinference-bce-embedding-base_v1": [0], "xinference-bce-reranker-base_v1": [0],
                       "xinference-CosyVoice-300M": [0], "xinference-SenseVoiceSmall": [1]}


def test_up_of_gpu_node_1_creates_the_container_with_exactly_those_device_ids(gpu_node_1, gpu_daemon):
    gpu_node_1.set_config(models=[])  # GPU models cannot launch without a GPU: the container is the GPU part
    gpu_node_1.pulumi("up", "--yes", "--skip-preview")
    name = gpu_node_1.config[f"{NS}:container"]["name"]
    state = inspect(gpu_daemon.host, name)
    requests_ = state["HostConfig"]["DeviceRequests"]
    assert [(r["Driver"], r["DeviceIDs"], r["Capabilities"], r["Count"]) for r in requests_] == \
        [("nvidia", ["0", "1"], [["gpu"]], 0)]
    assert state["State"]["Health"]["Status"] == "healthy"
    # the NVIDIA driver handed the container exactly those GPUs (seen by the runtime hook)
    calls = [call for call in gpu_daemon.hook_calls() if call["id"] == state["Id"]]
    assert calls and "NVIDIA_VISIBLE_DEVICES=0,1" in calls[-1]["env"], calls


def test_the_same_stack_on_an_engine_without_nvidia_runtime_fails_before_anything_exists(tmp_path):
    require_main_engine()
    site = DockerSite.from_checkout(tmp_path, "gpu-node-1-plain", {}, toolchain_bin())
    site.config = gpu_node_1_config(MAIN_DOCKER_HOST, tmp_path / "models", image_tar())
    stand_in_models(tmp_path / "models", site.config)
    site.write_stack(site.program / "stacks")
    site.select()
    for command in (["preview"], ["up", "--yes", "--skip-preview"]):
        proc = site.pulumi(*command, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "has no NVIDIA GPU runtime" in text and "nvidia-container-toolkit" in text
        assert "Traceback" not in text
    name = site.config[f"{NS}:container"]["name"]
    assert docker(MAIN_DOCKER_HOST, "ps", "-aq", "--filter", f"name=^/{name}$").stdout.strip() == b""
    exported = json.loads(site.pulumi("stack", "export").stdout)
    recorded = [r["type"] for r in exported["deployment"].get("resources") or []]
    assert recorded in ([], ["pulumi:pulumi:Stack"]), recorded  # nothing but the stack itself
    assert leftovers(MAIN_DOCKER_HOST) == (b"", b"")


def test_dockerd_stopped_during_up_names_the_host_and_the_next_up_converges(gpu_node_1, gpu_daemon):
    name = gpu_node_1.config[f"{NS}:container"]["name"]
    old_id = inspect(gpu_daemon.host, name)["Id"]
    new_port = free_port()
    gpu_node_1.set_config(container={**gpu_node_1.config[f"{NS}:container"], "port": new_port})  # a replacement
    up = subprocess.Popen([str(gpu_node_1.pulumi_bin / "pulumi"), "up", "--yes", "--skip-preview", "--stack",
                           gpu_node_1.stack, "--non-interactive"], cwd=gpu_node_1.program, env=gpu_node_1.env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The engine goes away while up runs (the CLI and program are starting): stopping it in the
    # middle of one API call instead gives whatever half-shut-down error the daemon answers.
    gpu_daemon.halt()
    output, _ = up.communicate(timeout=600)
    assert up.returncode != 0, output
    assert str(gpu_daemon.socket) in output, output  # the error names the docker host
    exported = json.loads(gpu_node_1.pulumi("stack", "export").stdout)
    assert not exported["deployment"].get("pending_operations"), exported["deployment"].get("pending_operations")
    recorded = [r for r in exported["deployment"]["resources"] if r["type"] == "docker:index/container:Container"]
    assert [r["id"] for r in recorded] == [old_id]  # the old container is still what the state holds

    gpu_daemon.start()
    gpu_node_1.pulumi("up", "--yes", "--skip-preview")
    state = inspect(gpu_daemon.host, name)
    assert state["HostConfig"]["PortBindings"]["9997/tcp"][0]["HostPort"] == str(new_port)
    assert state["State"]["Health"]["Status"] == "healthy"
    gpu_node_1.pulumi("preview", "--expect-no-changes")
