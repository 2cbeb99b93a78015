"""A real Xinference cluster for the tests: one `xinference-supervisor` and N `xinference-worker`s.

Everything runs on this machine, on CPU, offline, each process in its own process group with
its own log. Each worker gets its own loopback address (127.0.0.1, 127.0.0.2, ...: Linux
routes all of 127.0.0.0/8 to lo), so that `worker_ip` names one worker exactly as it names one
GPU server at a site. Health checks are tightened (env below) so that a stopped worker is
declared dead in seconds rather than the default ~35 s.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import requests

from tools.local_xinference import free_port, install_model, log_tail, offline_env, spawn, stop_group, wait_status
from tools.local_xinference import xinference_binary

# Supervisor: a worker silent for HEALTH_CHECK_TIMEOUT s loses one of FAILURE_THRESHOLD lives per
# HEALTH_CHECK_INTERVAL s; workers report every HEALTH_CHECK_INTERVAL s.
FAST_HEALTH_CHECK = {
    "XINFERENCE_HEALTH_CHECK_INTERVAL": "1",
    "XINFERENCE_HEALTH_CHECK_TIMEOUT": "3",
    "XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD": "2",
}


class XinferenceCluster:
    """Supervisor on 127.0.0.1 plus one worker per address in `worker_hosts`."""

    def __init__(self, root: Path, worker_hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")):
        self.root = Path(root)
        self.port = free_port()
        self.supervisor_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.worker_hosts = worker_hosts
        self.worker_ports = {host: free_port() for host in worker_hosts}
        self.models_dir = self.root / "models"
        self.model_dir = install_model(self.models_dir)
        self.supervisor: Optional[subprocess.Popen] = None
        self.workers: dict[str, subprocess.Popen] = {}

    def worker_address(self, host: str) -> str:
        return f"{host}:{self.worker_ports[host]}"

    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        return {**offline_env(home), **FAST_HEALTH_CHECK}

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def log_tail(self, name: str = "supervisor", lines: int = 40) -> str:
        return log_tail(self.log_path(name), lines)

    def start(self, timeout: float = 300.0) -> "XinferenceCluster":
        self.supervisor = spawn([xinference_binary("xinference-supervisor"), "-H", "127.0.0.1", "-p", str(self.port),
                                 "--supervisor-port", str(self.supervisor_port)],
                                self._env(self.root / "supervisor-home"), self.log_path("supervisor"), self.root)
        wait_status(self.endpoint, self.supervisor, timeout, self.log_tail)
        for host in self.worker_hosts:
            self.start_worker(host, timeout=timeout)
        return self

    def start_worker(self, host: str, timeout: float = 300.0) -> None:
        name = f"worker-{host}"
        self.workers[host] = spawn([xinference_binary("xinference-worker"), "-e", self.endpoint, "-H", host,
                                    "--worker-port", str(self.worker_ports[host])],
                                   self._env(self.root / f"{name}-home"), self.log_path(name), self.root)
        self.wait_for(lambda: self.worker_address(host) in self.registered_workers(), timeout,
                      f"worker {host} to register", name)

    def stop_worker(self, host: str) -> None:
        """Kill a worker and its model processes, as a server that loses power would."""
        proc = self.workers.pop(host, None)
        if proc is not None:
            stop_group(proc.pid, proc, sig_first=signal.SIGKILL)

    def stop(self) -> None:
        for host in list(self.workers):
            self.stop_worker(host)
        if self.supervisor is not None:
            stop_group(self.supervisor.pid, self.supervisor)
        self.supervisor = None

    def registered_workers(self) -> list[str]:
        """Worker addresses (ip:port) the supervisor knows (GET /v1/workers: [{"work-ip": ...}])."""
        try:
            response = requests.get(f"{self.endpoint}/v1/workers", timeout=(2, 10))
            rows = response.json() if response.status_code == 200 else []
        except (requests.RequestException, ValueError):
            return []
        return [row.get("work-ip", "") for row in rows if isinstance(row, dict)]

    def wait_for(self, condition, timeout: float, what: str, log: str = "supervisor") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in [("supervisor", self.supervisor), *((f"worker-{h}", p) for h, p in self.workers.items())]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            if condition():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}:\n{self.log_tail(log)}")
