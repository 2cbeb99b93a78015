"""components/docker_cli.py against the real engine: does a container exist, asked with no shell."""

from __future__ import annotations

import uuid

import pytest

from components.docker_cli import container_exists, container_running, empty_image_tar
from tests.docker_engines import docker, require_main_engine
from tests.remote_engine import busybox_image

pytestmark = pytest.mark.docker  # the machine's real engine


def empty_image(host: str) -> str:
    name = f"xinference-offline-test/empty:{uuid.uuid4().hex[:6]}"
    docker(host, "import", "-", name, stdin=empty_image_tar())
    return name


def test_container_exists_is_true_then_false_after_removal_and_none_when_the_engine_is_away(tmp_path):
    host = require_main_engine()
    image = empty_image(host)
    try:
        container = docker(host, "create", image, "/none").stdout.decode().strip()
        assert container_exists(host, container) is True
        docker(host, "rm", "-f", container)
        assert container_exists(host, container) is False
        assert container_exists(f"unix://{tmp_path}/no-engine.sock", container) is None
        assert container_exists(host, "$(touch x); x") is False  # one argv element, never a shell
    finally:
        docker(host, "rmi", image, check=False)


def test_container_running_is_false_for_a_created_a_stopped_and_a_removed_container(tmp_path):
    host = require_main_engine()
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    container = docker(host, "create", "--label", "managed-by=xinference-offline-tests", image.ref
                       ).stdout.decode().strip()
    try:
        assert container_running(host, container) is False  # created, never started
        docker(host, "start", container)
        assert container_running(host, container) is True
        docker(host, "stop", "-t", "1", container)
        assert container_running(host, container) is False  # exists, not running: its models are gone
        docker(host, "rm", "-f", container)
        assert container_running(host, container) is False
        assert container_running(f"unix://{tmp_path}/no-engine.sock", container) is None
    finally:
        docker(host, "rm", "-f", container, check=False)


def test_a_stack_leaving_airgap_finds_its_own_gateways_and_the_update_alone_removes_them():
    """`pulumi preview` names them; `up` removes them (and stops the server behind them) before the new
    container needs the port (components/preflight.py stale_gateways; tests/test_e2e_drift.py switches a
    real stack). Another stack's containers are left alone."""
    from components.preflight import stale_gateways
    from stackspec.load import load_stack_config
    from tests.stack_configs import docker_stack, namespaced

    host = require_main_engine()
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    stack, nonce = f"xo-test-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    made = {}
    for key, labels in {"ours": (stack, "gateway"), "socket": (stack, "api-socket"),
                        "other stack": ("another", "gateway")}.items():
        made[key] = f"xo-{nonce}-{key.replace(' ', '-')}"
        docker(host, "create", "--name", made[key], "--label", f"xinference-offline/stack={labels[0]}",
               "--label", f"xinference-offline/role={labels[1]}", image.ref)
    for key, owner in {"server": stack, "other server": "another"}.items():  # air-gapped servers, running
        made[key] = f"xo-{nonce}-{key.replace(' ', '-')}"
        docker(host, "run", "-d", "--name", made[key], "--network", "none", "--label",
               f"xinference-offline/stack={owner}", image.ref)
    try:
        def config(network: str):
            return load_stack_config(namespaced(docker_stack(container={"name": "x", "network": network})))

        assert stale_gateways(config("airgap"), stack, remove=True) == []  # its gateway is current there
        assert stale_gateways(config("bridge"), stack, remove=False) == [
            f"up removes the airgap gateway {made['ours']} first: container.network is now bridge, and the new "
            "container publishes the port it held"]
        assert docker(host, "ps", "-aq", "--filter", f"name=^/{made['ours']}$").stdout.strip()  # a preview keeps it
        assert stale_gateways(config("bridge"), stack, remove=True) == [
            f"removed the airgap gateway {made['ours']}: container.network is now bridge, and the new container "
            "publishes the port it held"]
        remaining = docker(host, "ps", "-a", "--filter", f"name=xo-{nonce}-", "--format", "{{.Names}}").stdout.split()
        assert sorted(n.decode() for n in remaining) == sorted(
            [made["socket"], made["other stack"], made["server"], made["other server"]])
        assert container_running(host, made["server"]) is False  # its models are deleted through its registry
        assert container_running(host, made["other server"]) is True
        assert stale_gateways(config("bridge"), stack, remove=True) == []
    finally:
        for name in made.values():
            docker(host, "rm", "-f", name, check=False)


def test_a_cluster_port_another_process_holds_is_refused_before_up_and_its_own_running_container_is_not():
    """A cluster container binds fixed ports on its server's address (host network); one already held
    makes it crash-loop until `up` times out (how CI of c755113 failed: a killed run's supervisor held
    127.0.0.2:9999). The preflight asks first, and lets a port pass that the stack's own running
    container holds."""
    import socket

    from components.preflight import cluster_port_problems
    from stackspec.load import load_stack_config
    from tests.stack_configs import namespaced
    from tools.local_xinference import free_port

    host = require_main_engine()
    stack, name, port = f"xo-test-{uuid.uuid4().hex[:6]}", f"xo-cp-{uuid.uuid4().hex[:6]}", free_port()
    cfg = load_stack_config(namespaced({
        "mode": "cluster", "image": {"name": "xinference-offline/xinference-cpu:4.1.0"},
        "container": {"name": name, "port": port},
        "servers": [{"name": "here", "address": "127.0.0.2", "supervisor": True, "models_dir": "/tmp"},
                    {"name": "there", "address": "127.0.0.3", "models_dir": "/tmp"}],
    }))
    assert cluster_port_problems(cfg, stack) == []
    listeners = []
    for address, held in (("127.0.0.2", port), ("127.0.0.3", 30001)):
        listener = socket.create_server((address, held))
        listeners.append(listener)
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    try:
        found = cluster_port_problems(cfg, stack)
        assert [p.split(" already answers")[0] for p in found] == [
            f"server here: 127.0.0.2:{port} (container.port) of the cluster's supervisor",
            "server there: 127.0.0.3:30001 (container.worker_port) of the cluster's worker"]
        assert f"stack {stack}'s supervisor container {name}-supervisor does not run there" in found[0]
        assert "Fix: set container.port to a free port, or stop what listens there" in found[0]
        assert "`ss -ltnp 'sport = :30001'`" in found[1]
        # the stack's own supervisor runs (an update): the port it holds is no problem
        docker(host, "run", "-d", "--name", f"{name}-supervisor", "--network", "none", image.ref)
        assert [p.split(" (")[0] for p in cluster_port_problems(cfg, stack)] == ["server there: 127.0.0.3:30001"]
    finally:
        docker(host, "rm", "-f", f"{name}-supervisor", check=False)
        for listener in listeners:
            listener.close()
    assert cluster_port_problems(cfg, stack) == []
