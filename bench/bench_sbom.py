"""Benchmark the SBOM of the 5 GB CPU Xinference image against reading its tar once (figures printed,
nothing asserted).

    venv/bin/python bench/bench_sbom.py [--tar FILE]   # default: the newest image.tar tools/xinference-image.sh cached

All in one run, on the same tar (the page cache holds what it can of it; the first figure is
printed for what it was):

- the baseline: reading the tar once, start to end (1 MiB reads, nothing done with the bytes), and
  its sha256 (what `bundle build` does with every file anyway);
- what the SBOM adds: scan_image_tar (the layers' member headers, dpkg's status file and the
  dist-info METADATA heads, as `bundle build` reads them for engine packages), then sbom_json for that
  image (the CycloneDX document made and validated against the 1.6 schema);
- the counts the SBOM holds for the image (Debian packages, Python distributions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.format.manifest import CHUNK_SIZE, FileEntry  # noqa: E402
from bundle.build.image_env import scan_image_tar  # noqa: E402
from bundle.build.sbom import ImageFacts, SbomInputs, sbom_json  # noqa: E402
from bundle.plan.sbom_summary import kind_counts  # noqa: E402

CACHE = Path.home() / ".cache" / "xinference-offline"


def image_info(tar: Path) -> dict:
    """What tools/xinference-image.sh wrote beside the tar (its tag, image id, kind), or nothing."""
    try:
        return json.loads((tar.parent / "image.json").read_text())
    except (OSError, ValueError):
        return {}


def default_tar() -> Path:
    """The newest cached CPU image tar (kind "base"; another one when there is none)."""
    tars = sorted(CACHE.glob("xinference-image-*/image.tar"),
                  key=lambda p: (image_info(p).get("kind") == "base", p.stat().st_mtime))
    if not tars:
        raise SystemExit(f"no image.tar under {CACHE}/xinference-image-*: run tools/xinference-image.sh, or give --tar")
    return tars[-1]


def read_once(tar: Path, digest: bool) -> tuple[float, str]:
    sha = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    started = time.perf_counter()
    with open(tar, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            if digest:
                sha.update(view[:count])
    return time.perf_counter() - started, sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", type=Path, default=None)
    args = parser.parse_args()
    tar = args.tar or default_tar()
    size, info = tar.stat().st_size, image_info(tar)
    print(f"image tar: {tar} ({size / 1e9:.2f} GB, {info.get('tag', 'no image.json')})")
    first, _ = read_once(tar, digest=False)
    read, _ = read_once(tar, digest=False)
    hashed, sha = read_once(tar, digest=True)
    started = time.perf_counter()
    env = scan_image_tar(tar)
    scan = time.perf_counter() - started
    inputs = SbomInputs(files=[FileEntry("images/image.tar", size, sha, "image")],
                        images=[ImageFacts(info.get("tag", "xinference-offline/xinference-cpu:4.1.0"),
                                           "images/image.tar", info.get("image_id"), env)], models=[],
                        engine_records=[], pulumi_versions={}, stacks=["bench"])
    started = time.perf_counter()
    text = sbom_json(inputs)
    document = time.perf_counter() - started
    counts = kind_counts(json.loads(text))
    print(f"  read the tar once (first pass)       {first:7.2f} s  ({size / first / 1e9:.2f} GB/s)")
    print(f"  read the tar once (baseline)         {read:7.2f} s  ({size / read / 1e9:.2f} GB/s)")
    print(f"  read + sha256 (what build does)      {hashed:7.2f} s")
    print(f"  scan the layers (image_env)          {scan:7.2f} s  ({scan / read:.2f}x one read)")
    print(f"  make + validate the CycloneDX JSON   {document:7.2f} s  ({len(text) / 1024:.0f} KiB)")
    print(f"  SBOM of the image in all             {scan + document:7.2f} s  ({(scan + document) / read:.2f}x one read, "
          f"{(scan + document) / hashed:.2f}x the sha256 build takes anyway)")
    print(f"  the image holds {counts.get('debian-package', 0)} Debian packages and "
          f"{counts.get('image-python', 0)} Python distributions (Python {env.python_version}, glibc {env.glibc}, "
          f"{env.machine})")


if __name__ == "__main__":
    main()
