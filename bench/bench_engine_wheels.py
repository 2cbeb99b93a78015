"""Benchmark of what the engine packages weigh in a bundle, with and without the image's stand-ins
(prints figures; asserts nothing).

For each model of a stack whose virtualenv installs packages, against an image whose installed
distributions are the CPU image's pins (tools/xinference-image/requirements.txt, Python 3.11,
manylinux_2_36_x86_64), or those read from an image tar (--image-tar: e.g. the stand-in of the
official slim image, tools/xinference-image-slim.sh, with its CUDA markers), it resolves the
model's packages twice with pip (dry run, no download):

- baseline: the pins alone, every distribution carried as its real wheel (bundle build before
  stand-ins);
- ours: the image's versions as constraints, a distribution the image has at the resolved version
  carried as a metadata-only stand-in (bundle/build/engine_wheels.py).

Wheel sizes are the Content-Length of the files pip chose (HEAD requests to the index's file host;
this machine's Python and platform equal the image's, so they are the wheels the build would
download). A stand-in counts as 2 KB.

    venv/bin/python bench/bench_engine_wheels.py [--stack gpu-node-1] [--model CosyVoice-300M] [--image-tar TAR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.build.engine_wheels import (image_versions, is_in_image, pin_constraints, pip_report,  # noqa: E402
                                  resolve_report, split_for_image)
from bundle.build.image_env import ImageEnv, scan_image_tar  # noqa: E402
from stackspec.catalog import pinned_catalog  # noqa: E402
from stackspec.engine_packages import stack_packages  # noqa: E402
from stackspec.stack_file import from_stack_file  # noqa: E402

STAND_IN_BYTES = 2048


def cpu_image_env() -> ImageEnv:
    text = (ROOT / "tools" / "xinference-image" / "requirements.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", text, re.MULTILINE))
    return ImageEnv("3.11", "x86_64", "2.36", pins)


def wheel_bytes(url: str, session: requests.Session) -> int:
    answer = session.head(url, allow_redirects=True, timeout=60)
    answer.raise_for_status()
    return int(answer.headers.get("Content-Length", 0))


def weigh(report: dict, env: ImageEnv, stand_ins: bool, session: requests.Session) -> tuple[int, int, int]:
    """(distributions, of them stand-ins, bytes carried)."""
    in_image = image_versions(env)
    count = stubs = size = 0
    for item in report.get("install", []):
        count += 1
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if stand_ins and is_in_image(in_image, name, version):
            stubs += 1
            size += STAND_IN_BYTES
        else:
            size += wheel_bytes(item["download_info"]["url"], session)
    return count, stubs, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="gpu-node-1")
    parser.add_argument("--model", action="append", help="only these uids (default: every model that installs)")
    parser.add_argument("--image-tar", type=Path, help="the image's distributions from this docker save tar")
    args = parser.parse_args()
    cfg = from_stack_file(ROOT / "stacks" / f"Pulumi.{args.stack}.yaml")
    env, session = (scan_image_tar(args.image_tar) if args.image_tar else cpu_image_env()), requests.Session()
    what = f"{args.image_tar}'s" if args.image_tar else "the CPU image's pinned"
    print(f"image: {what} {len(env.installed)} distributions, Python {env.python_version} {env.platform}, "
          f"CUDA {env.cuda_version}")
    print(f"{'MODEL':<18} {'WAY':<9} {'DISTS':>5} {'STAND-INS':>9} {'CARRIED':>11} {'RESOLVE S':>9}")
    for packages in stack_packages(cfg, pinned_catalog(), env.cuda_version):
        if args.model and packages.uid not in args.model:
            continue
        split = split_for_image(packages, env)
        if not split.to_resolve:
            print(f"{packages.uid:<18} nothing to resolve (the image satisfies every requirement)")
            continue
        figures = {}
        for way in ("baseline", "ours"):
            with tempfile.TemporaryDirectory() as work:
                started = time.perf_counter()
                report = (pip_report(packages.uid, split, pin_constraints(split), Path(work)) if way == "baseline"
                          else resolve_report(packages.uid, split, env, Path(work), print))
                took = time.perf_counter() - started
            count, stubs, size = weigh(report, env, way == "ours", session)
            figures[way] = size
            print(f"{packages.uid:<18} {way:<9} {count:>5} {stubs:>9} {size / 2**20:>8.1f} MiB {took:>9.1f}")
        print(f"{packages.uid:<18} ratio ours/baseline = {figures['ours'] / figures['baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
