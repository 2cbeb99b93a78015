"""Real Docker engines for the tests: the machine's own (tools/docker-engine.sh starts it) and
private test daemons that a test starts and stops itself.

A test daemon has its own socket, data root, exec root, pid file and bridge (made with
`ip link add`; never `--bridge none`, which deletes the main daemon's docker0 at start), and
`--iptables=false`, so it leaves the main daemon's networking alone. Its published ports are
reached on 127.0.0.1 through docker's userland proxy.

With ``gpu_hook=True`` its PATH holds a stand-in `nvidia-container-runtime-hook`: dockerd
registers its NVIDIA device driver when an executable of that name is on its PATH, so GPU
device requests are accepted and the container starts with NVIDIA_VISIBLE_DEVICES set. The
stand-in records the OCI state it is handed (one JSON per container start) and exits 0; no
GPU is touched, so Xinference inside runs on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.leftovers import unmount_all

MAIN_DOCKER_HOST = "unix:///var/run/docker.sock"
DOCKER = shutil.which("docker")
DOCKERD = shutil.which("dockerd") or next((p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.path.exists(p)),
                                          None)


def docker(host: str, *args: str, check: bool = True, timeout: float = 600,
           stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """The docker CLI against ``host``."""
    assert DOCKER, "no docker CLI"
    proc = subprocess.run([DOCKER, "-H", host, *args], input=stdin, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc


def engine_answers(host: str) -> bool:
    if not DOCKER:
        return False
    try:
        return docker(host, "version", "--format", "{{.Server.Version}}", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def require_main_engine() -> str:
    """The machine's engine, or a skip naming why none can run here."""
    if not DOCKER:
        pytest.skip("no docker CLI here (tools/docker-engine.sh start installs docker.io where apt-get is)")
    if not engine_answers(MAIN_DOCKER_HOST):
        pytest.skip(f"no Docker engine answers on {MAIN_DOCKER_HOST} (start one: bash tools/docker-engine.sh start)")
    return MAIN_DOCKER_HOST


def inspect(host: str, container: str) -> dict:
    return json.loads(docker(host, "inspect", container).stdout)[0]


class TestDaemon:
    """A private dockerd; ``start()`` waits until it answers, ``stop()`` removes all of it."""

    __test__ = False  # not a test class for pytest

    def __init__(self, name: str, gpu_hook: bool = False, subnet: str = "10.231.7", parent: str = "/tmp"):
        self.name, self.gpu_hook, self.subnet = name, gpu_hook, subnet
        # Short paths: containerd's sockets live under the exec root and unix paths are <= 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix=f"xo-{name}-", dir=parent))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.bridge = f"xo-{name}"[:15]
        self.hook_record = self.root / "hook-calls.jsonl"
        self.process: Optional[subprocess.Popen] = None

    def _hook_dir(self) -> Path:
        hook_dir = self.root / "hook-bin"
        hook_dir.mkdir()
        hook = hook_dir / "nvidia-container-runtime-hook"
        # runc calls it as `... prestart` with the container's OCI state on stdin; the spec in the
        # state's bundle holds the environment the NVIDIA driver set (NVIDIA_VISIBLE_DEVICES).
        hook.write_text(f"""#!{sys.executable}
import json, os, sys
state = json.load(sys.stdin)
with open(os.path.join(state["bundle"], "config.json")) as f:
    env = json.load(f)["process"]["env"]
with open({str(self.hook_record)!r}, "a") as out:
    out.write(json.dumps({{"id": state["id"], "args": sys.argv[1:], "env": env}}) + "\\n")
""")
        hook.chmod(0o755)
        return hook_dir

    def start(self, timeout: float = 60) -> "TestDaemon":
        if DOCKERD is None or os.geteuid() != 0:
            pytest.skip("a test Docker daemon needs dockerd and root (apt-get install docker.io)")
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode != 0:
            # kept across a halt(): the daemon's network store refers to it
            for cmd in (["ip", "link", "add", self.bridge, "type", "bridge"],
                        ["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge],
                        ["ip", "link", "set", self.bridge, "up"]):
                subprocess.run(cmd, check=True, capture_output=True)
        env = dict(os.environ)
        if self.gpu_hook:
            hook_dir = self.root / "hook-bin"
            env["PATH"] = f"{hook_dir if hook_dir.is_dir() else self._hook_dir()}:{env['PATH']}"
        log = open(self.root / "dockerd.log", "ab")
        self.process = subprocess.Popen(
            [DOCKERD, "-H", self.host, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid"), "--bridge", self.bridge, "--iptables=false",
             "--storage-driver", "overlay2"],
            stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not engine_answers(self.host):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
                self.stop()
                raise AssertionError(f"test dockerd {self.name} did not answer:\n{tail}")
            time.sleep(0.5)
        return self

    def hook_calls(self) -> list[dict]:
        if not self.hook_record.exists():
            return []
        return [json.loads(line) for line in self.hook_record.read_text().splitlines() if line.strip()]

    def halt(self) -> None:
        """Stop dockerd as a crash or an operator would, keeping its data (start() brings it back)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            ids = docker(self.host, "ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                docker(self.host, "rm", "-f", *[i.decode() for i in ids], check=False, timeout=120)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        unmount_all(self.root)  # dockerd leaves its netns mount under exec/: rmtree cannot pass it
        shutil.rmtree(self.root, ignore_errors=True)
