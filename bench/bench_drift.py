"""Benchmark of drift repair on this machine's engine (prints figures; asserts nothing).

1. The weight check that `pulumi refresh` runs on a local docker host (components/local_repair.py):
   `sha256sum -c` of the MiniLM test model's directory, and of a synthetic 1 GiB model set (4
   files), on one core and split over this machine's cores; the cost computed for a 20 GB
   model set from the measured rate.
2. Time from each hand-made fault to a serving model through `pulumi up --refresh`, against a
   fresh `pulumi up` of the same stack in the same run: runs tests/test_e2e_drift.py (one stack,
   the CPU image, MiniLM) and reads the timings it records.

    venv/bin/python bench/bench_drift.py [--skip-faults]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.format.manifest import sha256_file  # noqa: E402
from components.local_repair import parallel_check_script, split_by_size  # noqa: E402
from tools.local_xinference import install_model  # noqa: E402

GIB = 1024 ** 3
SITE_SET_GB = 20


def files_of(directory: Path) -> list[tuple[str, str, int]]:
    return [(str(p.relative_to(directory)), sha256_file(p), p.stat().st_size)
            for p in sorted(directory.rglob("*")) if p.is_file()]


def timed_check(directory: Path, files: list[tuple[str, str, int]], cores: int) -> float:
    script = parallel_check_script(str(directory), split_by_size(files, cores))
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


def weight_check(work: Path) -> None:
    cores = os.cpu_count() or 1
    model = install_model(work / "models")
    synthetic = work / "synthetic"
    synthetic.mkdir()
    for i in range(4):
        with open(synthetic / f"shard-{i}.safetensors", "wb") as f:
            for _ in range(GIB // 4 // (16 * 1024 * 1024)):
                f.write(os.urandom(16 * 1024 * 1024))
    print(f"weight check at refresh (sha256sum -c, {cores} cores here):")
    for label, directory in (("MiniLM test model", model), ("synthetic 1 GiB set", synthetic)):
        files = files_of(directory)
        size = sum(f[2] for f in files)
        timed_check(directory, files, 1)  # page cache warm for both sides: the hashing is measured
        one = min(timed_check(directory, files, 1) for _ in range(2))
        many = min(timed_check(directory, files, cores) for _ in range(2))
        rate = size / many / 1e9
        print(f"  {label}: {size / 1e6:.0f} MB, {len(files)} files: one core {one:.2f} s, {cores} cores "
              f"{many:.2f} s ({one / many:.2f}x), {rate:.2f} GB/s")
    print(f"  computed for a {SITE_SET_GB} GB model set at that rate: {SITE_SET_GB / rate:.0f} s per refresh "
          "(more when the files are not in the page cache: then the disk's read rate bounds it)")


def faults() -> None:
    timings = Path(tempfile.mkdtemp(prefix="xo-drift-bench-")) / "timings.json"
    done = subprocess.run([str(ROOT / "venv" / "bin" / "python"), "-m", "pytest", "tests/test_e2e_drift.py", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env={**os.environ, "XO_DRIFT_TIMINGS": str(timings)},
                          capture_output=True, text=True)
    print(done.stdout[-1500:])
    if not timings.exists():
        print("no timings recorded (the drift suite was skipped or failed)")
        return
    figures = json.loads(timings.read_text())
    fresh = figures.pop("fresh up")
    print(f"time to a serving model (pulumi up --refresh after the fault; fresh pulumi up: {fresh:.0f} s):")
    for fault, seconds in figures.items():
        print(f"  {fault:40s} {seconds:6.0f} s  {seconds / fresh:.2f}x a fresh up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-faults", action="store_true", help="only the weight check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xo-bench-drift-") as work:
        weight_check(Path(work))
    if not args.skip_faults:
        faults()


if __name__ == "__main__":
    main()
