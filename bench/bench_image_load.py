"""Benchmark the load of an image the bundle keeps as files (bundle/format/image_dir.py): streaming the members
into `docker load` with each hashed on the way, against verifying every member first and then streaming them
(GNU tar, no hashing), and against `docker load -i` of the tar. Figures printed, nothing asserted.

    venv/bin/python bench/bench_image_load.py [--mib 1024]

A made-up image of one layer (one random file of --mib MiB), a fresh id per load (a nonce in its config),
loaded into the machine's engine and removed after each run (only the images this run made). With --cold
the files each variant reads are dropped from the page cache first (posix_fadvise DONTNEED on those files
only), as for an image larger than the server's free memory; else the cache is warm (they were just written).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_build import MiB  # noqa: E402
from bundle.format import image_dir  # noqa: E402
from bundle.format.manifest import sha256_file  # noqa: E402


def layer_tar(path: Path, mib: int) -> None:
    with tarfile.open(path, "w") as layer:
        info = tarfile.TarInfo("data/payload.bin")
        info.size = mib * MiB
        with open("/dev/urandom", "rb") as random:
            layer.addfile(info, io.BufferedReader(random, MiB))  # type: ignore[arg-type]


def image_tar(path: Path, layer: Path, nonce: str) -> tuple[str, str]:
    """A `docker save` tar of one layer; (its ref, its id)."""
    diff_id = "sha256:" + sha256_file(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"nonce": nonce}},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    ref = f"xo-bench-load:{nonce}"
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [ref],
                            "Layers": [f"{diff_id[7:]}/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        tar.add(layer, f"{diff_id[7:]}/layer.tar")
        for name, data in ((f"{config_hex}.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return ref, f"sha256:{config_hex}"


def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (theirs only: nothing else on the machine is touched)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="the layer's size")
    parser.add_argument("--cold", action="store_true", help="drop the files from the page cache before each load")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-image-load-"))
    made: list[str] = []
    try:
        layer_tar(work / "layer.tar", args.mib)
        figures = {}
        for variant in ("stream with hash", "verify, then stream", "docker load -i tar"):
            nonce = f"v{len(figures)}-{time.time_ns()}"
            ref, image_id = image_tar(work / "image.tar", work / "layer.tar", nonce)
            made.append(image_id)
            bundle = work / "bundle"
            shutil.rmtree(bundle, ignore_errors=True)
            members = image_dir.split_tar(work / "image.tar", bundle / "images" / "x")
            files = [{"path": f"images/x/{m.name}", "size": m.size, "sha256": m.sha256} for m in members]
            (bundle / "MANIFEST.json").write_text(json.dumps({"files": files}))
            loader = ["docker", "load", "-q"]
            if variant == "stream with hash":
                def run() -> None:
                    assert image_dir.load(bundle, "images/x", image_dir.members_digest(members), loader) == 0
            elif variant == "verify, then stream":
                def run() -> None:
                    assert all(sha256_file(bundle / "images" / "x" / m.name) == m.sha256 for m in members)
                    names = [m.name for m in image_dir.stream_order(members)]
                    tar = subprocess.Popen(["tar", "-C", str(bundle / "images" / "x"), "-cf", "-", *names],
                                           stdout=subprocess.PIPE)
                    done = subprocess.run(loader, stdin=tar.stdout, capture_output=True, text=True)
                    assert done.returncode == 0, done.stderr
                    assert tar.wait() == 0
            else:
                def run() -> None:
                    subprocess.run([*loader, "-i", str(work / "image.tar")], check=True, capture_output=True)
            if args.cold:
                evict([work / "image.tar", *(bundle / "images" / "x" / m.name for m in members)])
            figures[variant] = timed(run)
            have = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                                  text=True).stdout.strip()
            assert have == image_id, (variant, have, image_id)
            subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True)
        base = figures["stream with hash"]
        cache = "cold" if args.cold else "warm"
        print(f"load of a {args.mib} MiB image kept as files ({os.cpu_count()} cores, {cache} page cache):")
        for variant, seconds in figures.items():
            print(f"  {variant:<22} {seconds:6.2f} s  ({seconds / base:.2f}x of stream with hash)")
    finally:
        for image_id in made:
            subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
