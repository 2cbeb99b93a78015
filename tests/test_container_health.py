"""components/container_health.py: a failing container's reason, warned at the next preview or up.

The states are the shapes `docker inspect --format '{{json .State}}'` gives (dockerd 20.10); the
real-engine test makes a crash-looping and an unhealthy container and reads them back."""

from __future__ import annotations

import time
import uuid

import pytest

from components.container_health import container_trouble, interleaved, stack_containers, trouble, trouble_notes
from stackspec.config import DockerHostConfig
from stackspec.load import load_stack_config
from tests.docker_engines import docker, require_main_engine
from tests.remote_engine import busybox_image
from tests.stack_configs import docker_stack, namespaced

RUNNING = {"Status": "running", "Running": True, "Restarting": False, "ExitCode": 0, "Error": ""}


def test_a_healthy_a_starting_and_a_stopped_container_are_no_trouble():
    assert trouble({**RUNNING, "Health": {"Status": "healthy", "FailingStreak": 0}}, 0) is None
    assert trouble({**RUNNING, "Health": {"Status": "starting", "FailingStreak": 0}}, 0) is None
    for code in (0, 137, 143):  # `docker stop`: stopped, not failed (up starts it again)
        assert trouble({**RUNNING, "Status": "exited", "Running": False, "ExitCode": code}, 0) is None


def test_a_crash_loop_an_exit_and_a_failing_probe_are_named():
    assert trouble({**RUNNING, "Restarting": True, "ExitCode": 1}, 7) == (
        "restarting: it exited with code 1, and docker has restarted it 7 times")
    assert trouble({**RUNNING, "Health": {"Status": "starting"}}, 3) == (
        "not healthy (starting) and docker has restarted it 3 times")
    assert trouble({**RUNNING, "Health": {"Status": "starting"}}, 1) is None  # an engine restart, say
    assert trouble({**RUNNING, "Running": False, "ExitCode": 2, "Error": ""}, 0) == "exited with code 2"
    probe = {"Status": "unhealthy", "FailingStreak": 5,
             "Log": [{"ExitCode": 1, "Output": "urllib.error.URLError: <urlopen error [Errno 111] Connection refused>"}]}
    assert trouble({**RUNNING, "Health": probe}, 0) == (
        "unhealthy: its health probe failed 5 times in a row, last saying: "
        "urllib.error.URLError: <urlopen error [Errno 111] Connection refused>")


def test_the_containers_of_a_docker_and_a_cluster_stack():
    from tests.test_cluster import cluster

    docker_cfg = load_stack_config(namespaced(docker_stack(container={"name": "xinference"})))
    assert [(h.host, n) for h, n in stack_containers(docker_cfg)] == [("unix:///var/run/docker.sock", "xinference")]
    cluster_cfg = load_stack_config(namespaced(cluster(container={"name": "xi"})))
    assert [(h.host, n) for h, n in stack_containers(cluster_cfg)] == [
        ("ssh://ops@10.0.0.1", "xi-supervisor"), ("ssh://ops@10.0.0.1", "xi-worker"), ("ssh://ops@10.0.0.2", "xi-worker")]


def test_the_two_log_streams_come_back_in_the_order_written():
    stdout = "2026-12-07T21:30:01.000000100Z starting\n2026-12-07T21:30:03.5Z starting\n"
    stderr = "2026-12-07T21:30:01.000000200Z bind failed: address in use\n"
    assert interleaved(stdout, stderr) == ["starting", "bind failed: address in use", "starting"]


@pytest.mark.docker
def test_the_next_preview_tells_why_the_container_crash_loops_and_a_healthy_one_is_not_mentioned():
    host = require_main_engine()
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    name = f"xo-health-{uuid.uuid4().hex[:6]}"
    cause = "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.2', 9999): address in use"
    docker(host, "run", "-d", "--name", name, "--restart", "always", image.ref, "/bin/sh", "-c",
           f"echo starting the supervisor; echo \"{cause}\" >&2; exit 1")
    try:
        cfg = load_stack_config(namespaced(docker_stack(container={"name": name})))
        deadline = time.monotonic() + 60
        notes: list[str] = []
        while time.monotonic() < deadline and not notes:
            notes = trouble_notes(cfg)
            time.sleep(0.5)
        assert len(notes) == 1, notes
        assert notes[0].startswith(f"container {name} on {host} is ")
        assert "docker has restarted it" in notes[0] or "exited with code 1" in notes[0]
        # both streams (docker stamps a line when it reads it: two written microseconds apart may swap)
        assert f"    {cause}\n" in notes[0] and "    starting the supervisor\n" in notes[0]
        assert f"`docker logs {name}`" in notes[0]
        # the stack's container serving: nothing to say
        docker(host, "rm", "-f", name)
        docker(host, "run", "-d", "--name", name, image.ref)
        assert trouble_notes(cfg) == []
        assert container_trouble(DockerHostConfig(), f"{name}-never-made") is None
    finally:
        docker(host, "rm", "-f", name, check=False)
