"""Benchmark of the ssh:// paths against a second Docker engine over ssh (prints figures; asserts nothing).

Runs tests/remote_engine.py's engine (a second dockerd behind an sshd on 127.0.0.1), so the
"network" is the loopback: the figures compare our way of doing a step with the plain shell
way on the same path, not the wire.

1. Image transfer: components/image.py's load script for an ssh:// engine, given the bundle's
   image id (stream the tar into `ssh HOST docker load`, then check the engine's image id) against
   `ssh HOST docker load < tar`. The image is removed from the engine before each run; the
   two sides alternate. Target <= 1.1x. Also: the same script when the engine already has
   the manifest's image id (nothing sent).
2. Model copy: `pulumi up` of a program holding one `command.remote.CopyToRemote` of a model
   directory (the resource RemoteModelSync uses, same connection settings) against
   `tar c DIR | ssh HOST tar x`. `pulumi up` carries the CLI's own start-up, so its idle
   `up` (nothing to copy) is printed too, and the copy net of it. Target <= 1.2x.

    venv/bin/python bench/bench_remote.py [--rounds 2] [--copy-mb 1024] [--small]

--small uses the hand-made busybox image instead of the 5 GB CPU Xinference one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.build.docker_image import check_image_tar  # noqa: E402
from components.image import remote_load_script  # noqa: E402
from stackspec.ssh import ssh_target  # noqa: E402
from tests.docker_engines import require_main_engine  # noqa: E402
from tests.docker_site import image_tar, toolchain_bin  # noqa: E402
from tests.remote_engine import RemoteEngine, busybox_image  # noqa: E402

XINFERENCE_IMAGE = "xinference-offline/xinference-cpu:4.1.0"


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def sh(script: str) -> None:
    subprocess.run(["/bin/sh", "-c", script], check=True, capture_output=True, timeout=3600)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_transfer(engine: RemoteEngine, target, tar: Path, name: str, image_id: str, rounds: int) -> None:
    tar_sha = sha256_of(tar)
    ours_script = remote_load_script(name, str(tar), tar_sha, image_id, target)  # as from a bundle
    plain = f"{shlex.join(target.argv('docker', 'load'))} < {shlex.quote(str(tar))}"
    ours, baseline = [], []
    for _ in range(rounds):
        for side, script in (("plain", plain), ("ours", ours_script)):
            engine.docker("rmi", "-f", name, check=False)
            seconds = timed(lambda: sh(script))
            (baseline if side == "plain" else ours).append(seconds)
    skip_script = remote_load_script(name, str(tar), tar_sha, image_id, target)
    skipped = timed(lambda: sh(skip_script))
    size_gb = tar.stat().st_size / 1e9
    b, o = statistics.median(baseline), statistics.median(ours)
    print(f"image transfer ({size_gb:.2f} GB tar, median of {rounds}):")
    print(f"  ssh HOST docker load < tar:          {b:7.1f} s  ({size_gb / b * 1000:.0f} MB/s)")
    print(f"  our load (stream, then the image id): {o:7.1f} s  = {o / b:.2f}x  (target <= 1.1x)")
    print(f"  our load, engine already has the id: {skipped:7.1f} s  (no transfer, no hash)")


def make_model_dir(root: Path, megabytes: int) -> Path:
    model = root / "bench-model"
    (model / "weights").mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    files = max(1, megabytes // 128)
    for i in range(files):
        with open(model / "weights" / f"shard-{i:03d}.bin", "wb") as handle:
            for j in range(megabytes // files):
                handle.write(hashlib.sha256(chunk + bytes([i, j % 256])).digest() + chunk[32:])
    (model / "config.json").write_text('{"bench": true}\n')
    return model


COPY_PROGRAM = '''
import pulumi
import pulumi_command as command

from components.remote_sync import ssh_connection
from stackspec.ssh import ssh_target

cfg = pulumi.Config()
target = ssh_target(cfg.require("host"), [], cfg.require("key"), cfg.require("known_hosts"))
command.remote.CopyToRemote("copy", connection=ssh_connection(target),
                            source=pulumi.FileArchive(cfg.require("source")), remote_path=cfg.require("dest"),
                            triggers=[cfg.require("round")])
'''


def model_copy(engine: RemoteEngine, target, root: Path, megabytes: int, rounds: int) -> None:
    toolchain = toolchain_bin()
    model = make_model_dir(root, megabytes)
    project = root / "copy-project"
    project.mkdir()
    (project / "state").mkdir()
    (project / "Pulumi.yaml").write_text(
        "name: bench-copy\nruntime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: venv\n"
        f"backend:\n  url: file://{project / 'state'}\n")
    (project / "__main__.py").write_text(COPY_PROGRAM)
    (project / "venv").symlink_to(ROOT / "venv")
    for package in ("stackspec", "components", "bundle"):
        os.symlink(ROOT / package, project / package)
    env = {**os.environ, "PATH": f"{toolchain}:{os.environ['PATH']}", "PULUMI_CONFIG_PASSPHRASE": "bench",
           "PULUMI_SKIP_UPDATE_CHECK": "1", "PULUMI_HOME": str(toolchain.parent / "home")}
    env.pop("SSH_AUTH_SOCK", None)

    def pulumi(*args: str) -> None:
        subprocess.run([str(toolchain / "pulumi"), *args, "--non-interactive"], cwd=project, env=env, check=True,
                       capture_output=True, timeout=3600)

    pulumi("stack", "init", "bench")
    dest_root = root / "remote-dest"
    for key, value in (("host", engine.ssh_url_direct), ("key", str(engine.key)),
                       ("known_hosts", str(engine.known_hosts)), ("source", str(model)), ("dest", str(dest_root))):
        pulumi("config", "set", key, value)
    plain_dest = root / "plain-dest"
    ours, baseline = [], []
    for i in range(rounds):
        for path in (dest_root, plain_dest):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
        plain = (f"tar -C {shlex.quote(str(model.parent))} -cf - {model.name} | "
                 f"{shlex.join(target.argv('tar', '-C', str(plain_dest), '-xf', '-'))}")
        baseline.append(timed(lambda: sh(plain)))
        pulumi("config", "set", "round", str(i))
        ours.append(timed(lambda: pulumi("up", "--yes", "--skip-preview")))
    idle = timed(lambda: pulumi("up", "--yes", "--skip-preview"))
    pulumi("destroy", "--yes", "--skip-preview")
    b, o = statistics.median(baseline), statistics.median(ours)
    net = max(o - idle, 1e-9)
    print(f"model copy ({megabytes} MB in {len(list(model.rglob('*')))} entries, median of {rounds}):")
    print(f"  tar c | ssh HOST tar x:              {b:7.1f} s")
    print(f"  pulumi up with CopyToRemote:         {o:7.1f} s  = {o / b:.2f}x  (target <= 1.2x)")
    print(f"  pulumi up with nothing to copy:      {idle:7.1f} s  (the CLI's start-up and diff)")
    print(f"  the copy net of that:                {net:7.1f} s  = {net / b:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--copy-mb", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="busybox image instead of the CPU Xinference one")
    args = parser.parse_args()
    require_main_engine()
    os.environ.pop("SSH_AUTH_SOCK", None)
    with RemoteEngine(alias="xo-bench-remote") as engine, tempfile.TemporaryDirectory(prefix="xo-bench-remote-") as tmp:
        target = ssh_target(engine.ssh_url_direct, [], str(engine.key), str(engine.known_hosts))
        if args.small:
            image = busybox_image()
            tar, name, image_id = image.path, image.ref, image.id
        else:
            tar, name = image_tar(), XINFERENCE_IMAGE
            image_id = None
        if image_id is None:
            image_id = check_image_tar(tar, name)
        image_transfer(engine, target, tar, name, image_id or "", args.rounds)
        model_copy(engine, target, Path(tmp), args.copy_mb, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
