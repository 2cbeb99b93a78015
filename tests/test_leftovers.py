"""tests/leftovers.py on the real engine: what a killed test run leaves is gone before the next run.

The failure it prevents happened: a run killed mid-way left a cluster supervisor (host network,
restart policy) on the machine's engine; the next run's engine start brought it back, holding
127.0.0.2's actor port, and that run's supervisor crash-looped until `pulumi up` timed out."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.docker_engines import TestDaemon, docker, require_main_engine
from tests.leftovers import clean, container_processes, mounts_under, processes_naming, processes_where
from tests.remote_engine import busybox_image

pytestmark = pytest.mark.docker  # the machine's real engine and a private dockerd


def _names(host: str) -> list[str]:
    return list(docker(host, "ps", "-a", "--format", "{{.Names}}").stdout.decode().split())


def test_a_killed_runs_container_engine_and_dirs_are_removed_and_what_is_not_a_tests_stays() -> None:
    host = require_main_engine()
    tag = f"xo-lo{uuid.uuid4().hex[:6]}"
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    # restart=always: the engine brings it back on its next start, as it did the killed run's supervisor
    docker(host, "run", "-d", "--name", f"{tag}-supervisor", "--restart", "always", image.ref)
    tmp = Path(tempfile.mkdtemp(prefix="xo-lo-parent-", dir="/tmp"))
    daemon = TestDaemon(tag[3:], subnet="10.231.250", parent=str(tmp)).start()
    try:
        daemon_root, bridge = daemon.root, daemon.bridge
        assert mounts_under(daemon_root), "a running dockerd mounts its netns under its exec root"
        docker(daemon.host, "load", "-q", "-i", str(image.path))
        worker = docker(daemon.host, "run", "-d", "--name", f"{tag}-worker", "--restart", "always", image.ref
                        ).stdout.decode().strip()
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)  # the run is killed: no TestDaemon.stop()
        daemon.process.wait(timeout=30)
        lanes = tmp / "xol.AbCd"
        (lanes / "e").mkdir(parents=True)
        (lanes / "e" / "weights.bin").write_bytes(b"\0" * 4096)
        current_lanes = tmp / "xol.Keep"
        current_lanes.mkdir()
        clone = tmp / "xo-final-clone"  # a directory named like ours but not made by a test: kept
        clone.mkdir()

        assert container_processes(daemon_root) and processes_naming(daemon_root), "httpd and its shim outlive dockerd"
        assert (daemon_root / "data" / "containers" / worker).is_dir()

        done = clean(tmp=tmp, host=host, keep=(current_lanes,), prefix=tag)

        assert f"container {tag}-supervisor (main engine)" in done
        assert not [n for n in _names(host) if n.startswith(tag)]
        assert not daemon_root.exists() and not lanes.exists()
        assert not mounts_under(daemon_root)
        assert not processes_where("cgroup", lambda cgroup: worker in cgroup), "the killed dockerd's container process is stopped"
        assert not processes_naming(daemon_root), "and its shim"
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
        assert current_lanes.is_dir() and clone.is_dir()
        assert clean(tmp=tmp, host=host, keep=(current_lanes,), prefix=tag) == [], "a second pass finds nothing"
    finally:
        docker(host, "rm", "-f", f"{tag}-supervisor", check=False)
        daemon.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
