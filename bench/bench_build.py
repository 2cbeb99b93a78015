"""Benchmark `bundle build`: a full build of four models versus the incremental rebuild after
one of them changed, and a rebuild with nothing changed (figures printed, nothing asserted).

    venv/bin/python bench/bench_build.py [--gb 1.0]

The sources are real files in a temp dir (deleted at the end): four local model directories
sharing --gb between them (one large weights file and a few small files each), a small
`docker save`-shaped image tar, a wheel and a Pulumi toolchain dir from tests/bundle_kit.py.
Each build is `python -m bundle build ... --quiet` through main(); every build includes
about half a second of `pip download --no-index` checking the wheels.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.cli import main  # noqa: E402
from bundle.format.manifest import load_manifest  # noqa: E402
from tests.bundle_kit import build_args, make_site  # noqa: E402

MiB = 1024 * 1024


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 * MiB)
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            handle.write(block[: min(left, len(block))])
            left -= len(block)
        handle.seek(0)
        handle.write(os.urandom(64))  # distinct files


def timed_build(site) -> tuple[float, str]:
    out = io.StringIO()
    started = time.perf_counter()
    code = main(build_args(site), out=out)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"build failed ({code})")
    return elapsed, out.getvalue()


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="total model size across the four models")
    args = parser.parse_args()
    per_model = int(args.gb * 1024 * MiB) // 4
    workdir = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        names = ["bce-embedding", "bce-reranker", "cosyvoice", "sensevoice"]
        models = {name: {"config.json": b"{}", "tokenizer.json": os.urandom(256 * 1024)} for name in names}
        site = make_site(workdir, models=models)
        for name in names:
            write_random(site.src(name) / "model.safetensors", per_model)
        from tests.bundle_kit import write_stack

        write_stack(site, names)
        full_s, _ = timed_build(site)
        total = load_manifest(site.out).total_size()
        same_s, _ = timed_build(site)
        write_random(site.src("cosyvoice") / "model.safetensors", per_model)  # new weights for one model
        incr_s, summary = timed_build(site)
        changed = [f"{cols[0]} ({cols[3].split('  ')[-1].strip()})" for cols in
                   (line.split(None, 3) for line in summary.splitlines() if line.startswith("  "))
                   if cols[0] != "total" and "reused" not in cols[3] and cols[0] != "ITEM"]
        print(f"bundle: 4 models, {total / (1024 * MiB):.2f} GiB in {len(load_manifest(site.out).files)} files, "
              f"{os.cpu_count()} CPUs")
        print(f"full build:                       {full_s:6.2f} s  ({total / MiB / full_s:.0f} MiB/s copied + hashed)")
        print(f"rebuild, nothing changed:         {same_s:6.2f} s  ({full_s / same_s:.1f}x faster)")
        print(f"rebuild, one of four changed:     {incr_s:6.2f} s  ({full_s / incr_s:.1f}x faster; "
              f"fetched: {'; '.join(changed)})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
