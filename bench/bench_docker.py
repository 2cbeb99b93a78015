"""Benchmark of the docker flow on this machine's engine (prints figures; asserts nothing).

1. From nothing to a serving model: `pulumi up` of a docker stack (image load from the tar,
   container, healthcheck, model launch with its smoke request) against the same steps done
   by hand as the reference shell job does them: `docker load`; `docker run` (same settings);
   wait until healthy; launch the model over REST; one embedding request. Each round starts
   with the image removed from the engine, and the two sides alternate. Target <= 1.15x.
2. `pulumi up` with nothing to change (target <= 15 s), split into what takes the time: the
   CLI and program start (`pulumi preview` of the same stack) and the rest (the update itself).
3. `pulumi preview` of a stack that is given the multi-GB image tar's digest (tar_sha256: the same
   path as a bundle manifest's digest, no hashing in the program),
   against one sha256 pass over that tar: the preview must not hash it again.

    venv/bin/python bench/bench_docker.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.docker_engines import MAIN_DOCKER_HOST, docker, inspect, require_main_engine  # noqa: E402
from tests.docker_site import (NS, DockerSite, embed, free_port, image_tar, toolchain_bin,  # noqa: E402
                               wait_for)
from tools.local_xinference import install_model  # noqa: E402

IMAGE = "xinference-offline/xinference-cpu:4.1.0"
UID = "minilm-embedding"
ENV = {"XINFERENCE_AUTH_ADVANCED": "0", "XINFERENCE_ENABLE_VIRTUAL_ENV": "0", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def remove_image() -> None:
    docker(MAIN_DOCKER_HOST, "rmi", "-f", IMAGE, check=False)


def by_hand(tar: Path, models_dir: Path) -> float:
    """The reference job's steps, done as a careful operator would script them."""
    name, port = f"xo-bench-hand-{uuid.uuid4().hex[:6]}", free_port()
    endpoint = f"http://127.0.0.1:{port}"

    def steps():
        docker(MAIN_DOCKER_HOST, "load", "-i", str(tar), timeout=1800)
        env = [arg for key, value in ENV.items() for arg in ("-e", f"{key}={value}")]
        docker(MAIN_DOCKER_HOST, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:9997", "--shm-size", "1g",
               "-v", f"{models_dir}:/root/.xinference/models", "--health-cmd",
               "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:9997/status', timeout=5)\"",
               "--health-interval", "5s", *env, IMAGE, "xinference-local", "-H", "0.0.0.0", "--port", "9997")
        wait_for(lambda: inspect(MAIN_DOCKER_HOST, name)["State"]["Health"]["Status"] == "healthy", 600, "healthy",
                 interval=0.5)
        launched = requests.post(f"{endpoint}/v1/models", timeout=600, json={
            "model_uid": UID, "model_name": "bge-small-en-v1.5", "model_type": "embedding",
            "model_path": "/root/.xinference/models/all-MiniLM-L6-v2"})
        launched.raise_for_status()
        embed(endpoint, UID)

    try:
        return timed(steps)
    finally:
        docker(MAIN_DOCKER_HOST, "rm", "-f", name, check=False)


def docker_site(root: Path, tar: Path, models_dir: Path, toolchain: Path) -> DockerSite:
    site = DockerSite.from_checkout(root, "bench-docker", {}, toolchain)
    site.config = {
        f"{NS}:mode": "docker",
        f"{NS}:image": {"name": IMAGE, "tar": str(tar)},
        f"{NS}:container": {"name": f"xo-bench-{uuid.uuid4().hex[:6]}", "port": free_port(),
                            "bind_address": "127.0.0.1", "shm_size_mb": 1024,
                            "healthcheck": {"interval_s": 5, "timeout_s": 5, "retries": 5, "start_period_s": 300}},
        f"{NS}:gpus": [],
        f"{NS}:models_dir": str(models_dir),
        f"{NS}:models": [{"uid": UID, "name": "bge-small-en-v1.5", "type": "embedding", "path": "all-MiniLM-L6-v2",
                          "launch_timeout_s": 300}],
    }
    site.write_stack(site.program / "stacks")
    site.select()
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    require_main_engine()
    tar, toolchain = image_tar(), toolchain_bin()
    print(f"image tar {tar} ({tar.stat().st_size / 2**30:.2f} GiB)")
    with tempfile.TemporaryDirectory(prefix="xo-bench-") as tmp:
        root = Path(tmp)
        models_dir = root / "models"
        install_model(models_dir)
        site = docker_site(root / "pulumi", tar, models_dir, toolchain)
        endpoint = f"http://127.0.0.1:{site.config[f'{NS}:container']['port']}"
        hand, up = [], []
        try:
            for _ in range(args.rounds):
                remove_image()
                hand.append(by_hand(tar, models_dir))
                remove_image()
                up.append(timed(lambda: site.pulumi("up", "--yes", "--skip-preview")))
                embed(endpoint, UID)
                if _ < args.rounds - 1:
                    site.pulumi("destroy", "--yes", "--skip-preview")
            print(f"1. nothing -> serving model: by hand median {statistics.median(hand):.1f} s {fmt(hand)}, "
                  f"pulumi up median {statistics.median(up):.1f} s {fmt(up)}, "
                  f"ratio {statistics.median(up) / statistics.median(hand):.2f}x (target <= 1.15x)")

            idle = [timed(lambda: site.pulumi("up", "--yes", "--skip-preview")) for _ in range(3)]
            program = [timed(lambda: site.pulumi("preview")) for _ in range(3)]
            print(f"2. pulumi up with nothing to change: median {statistics.median(idle):.1f} s {fmt(idle)} "
                  f"(target <= 15 s); of it, CLI start + program + diff (pulumi preview): "
                  f"{statistics.median(program):.1f} s {fmt(program)}")

            sha = hashlib.sha256()
            hash_s = timed(lambda: hash_file(tar, sha))
            site.set_config(image={"name": IMAGE, "tar": str(tar), "tar_sha256": sha.hexdigest()})
            site.pulumi("up", "--yes", "--skip-preview")  # the digest now comes from config, as from a manifest
            preview = [timed(lambda: site.pulumi("preview", "--expect-no-changes")) for _ in range(3)]
            print(f"3. pulumi preview, unchanged {tar.stat().st_size / 2**30:.2f} GiB tar with its digest given: "
                  f"median {statistics.median(preview):.1f} s {fmt(preview)}; one sha256 pass over the tar: "
                  f"{hash_s:.1f} s (preview / hash = {statistics.median(preview) / hash_s:.2f})")
        finally:
            site.pulumi("destroy", "--yes", "--skip-preview", check=False)
    return 0


def hash_file(path: Path, sha) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
