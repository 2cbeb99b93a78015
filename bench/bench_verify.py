"""Benchmark `bundle verify` on >= 1 GB of real files (figures printed, nothing asserted).

    venv/bin/python bench/bench_verify.py [--gb 1.0] [--repeat 3]

All figures come from one run on the same files (written to a temp dir, deleted at the end;
the page cache holds them, so this measures hashing, not the disk):

- the raw hashing limit of this machine: every core hashing the same files with hashlib and
  nothing else (the best of a thread pool and a process pool);
- `python -m bundle verify DIR` (in-process main(), --quiet): target >= 0.9x of the limit;
- coreutils `sha256sum` over the same files, one process and one per core: target >= 4x of
  the single process;
- peak memory of verify for two bundle sizes (a child process per size, its VmHWM;
  and tracemalloc's peak of Python allocations in-process): target flat in file size.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.cli import main  # noqa: E402
from bundle.format.manifest import FileEntry, Manifest, StackEntry, sha256_file  # noqa: E402
from bundle.format.verify import default_workers  # noqa: E402

MiB = 1024 * 1024


def make_bundle(root: Path, total_bytes: int) -> list[Path]:
    """Four 'models' of large and small files, plus an image tar: the shape of a real bundle."""
    paths: list[Path] = []
    big = max(total_bytes // 10, MiB)
    layout = [("images/xinference.tar", 2 * big)]
    for m in range(4):
        layout += [(f"models/m{m}/model-0000{k}.safetensors", big) for k in range(2)]
        layout += [(f"models/m{m}/config.json", 2048), (f"models/m{m}/tokenizer.json", 512 * 1024)]
    block = os.urandom(16 * MiB)
    for rel, size in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            left = size
            while left > 0:
                chunk = block[: min(left, len(block))]
                # vary the content so no two files are equal
                handle.write(hashlib.sha256(rel.encode() + left.to_bytes(8, "big")).digest() + chunk[32:])
                left -= len(chunk)
        paths.append(path)
    entries = [FileEntry(str(p.relative_to(root)), p.stat().st_size, sha256_file(p), "model" if "models/" in str(p)
                         else "image", p.parts[-2] if "models/" in str(p) else None) for p in paths]
    Manifest(stacks={"bench": StackEntry()}, files=entries).save(root)
    return paths


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def raw_limit(paths: list[Path], repeat: int) -> tuple[float, str]:
    workers = default_workers()
    names = [str(p) for p in sorted(paths, key=lambda p: -p.stat().st_size)]
    results = {}
    with ThreadPoolExecutor(workers) as pool:
        results["threads"] = best_of(repeat, lambda: list(pool.map(_digest, names)))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_digest, names[-1:]))  # start the workers outside the timing
        results["processes"] = best_of(repeat, lambda: list(pool.map(_digest, names)))
    kind = min(results, key=results.get)
    return results[kind], f"{kind} ({', '.join(f'{k} {v:.2f}s' for k, v in results.items())})"


def run_verify(root: Path) -> None:
    code = main(["verify", str(root), "--quiet"], out=io.StringIO())
    if code != 0:
        raise SystemExit(f"verify failed on the benchmark bundle ({code})")


CHILD = """
import io, sys
from bundle.cli import main
code = main(["verify", sys.argv[1], "--quiet"], out=io.StringIO())
status = open("/proc/self/status").read()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
sys.exit(code)
"""


def child_peak_rss_kib(root: Path) -> int:
    """Peak RSS (VmHWM, KiB) of a fresh Python process that runs verify: ru_maxrss of a child
    would include the parent's memory from before exec on Linux."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"verify failed in the child: {proc.stderr}")
    return int(proc.stdout.strip())


def tracemalloc_peak(root: Path) -> int:
    tracemalloc.start()
    run_verify(root)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="bundle size for the throughput figures")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    total = int(args.gb * 1024 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    try:
        big = workdir / "big"
        paths = make_bundle(big, total)
        size = sum(p.stat().st_size for p in paths)
        gib = size / (1024 * MiB)
        print(f"bundle: {len(paths)} files, {gib:.2f} GiB, {default_workers()} cores "
              f"({os.cpu_count()} CPUs), page cache warm")

        limit, how = raw_limit(paths, args.repeat)
        verify_s = best_of(args.repeat, lambda: run_verify(big))
        single = best_of(args.repeat, lambda: subprocess.run(["sha256sum", *map(str, paths)], check=True,
                                                             stdout=subprocess.DEVNULL))
        parallel = best_of(args.repeat, lambda: subprocess.run(
            f"printf '%s\\0' {' '.join(map(str, paths))} | xargs -0 -n1 -P{default_workers()} sha256sum",
            shell=True, check=True, stdout=subprocess.DEVNULL))
        rate = lambda seconds: f"{gib / seconds * 1024:7.0f} MiB/s ({seconds:.2f} s)"  # noqa: E731
        print(f"raw hashlib limit, all cores:   {rate(limit)}  best of {how}")
        print(f"bundle verify:                  {rate(verify_s)}  = {limit / verify_s:.2f}x the limit "
              "(target >= 0.9x)")
        print(f"coreutils sha256sum, 1 process: {rate(single)}  verify = {single / verify_s:.2f}x (target >= 4x)")
        print(f"coreutils sha256sum, {default_workers()} procs:  {rate(parallel)}  verify = "
              f"{parallel / verify_s:.2f}x")

        small = workdir / "small"
        small_paths = make_bundle(small, total // 4)
        small_gib = sum(p.stat().st_size for p in small_paths) / (1024 * MiB)
        rss_small, rss_big = child_peak_rss_kib(small), child_peak_rss_kib(big)
        tm_small, tm_big = tracemalloc_peak(small), tracemalloc_peak(big)
        print(f"peak RSS of a verify process:   {small_gib:.2f} GiB -> {rss_small / 1024:.1f} MiB, "
              f"{gib:.2f} GiB -> {rss_big / 1024:.1f} MiB  (ratio {rss_big / rss_small:.2f})")
        print(f"tracemalloc peak in verify:     {small_gib:.2f} GiB -> {tm_small / MiB:.2f} MiB, "
              f"{gib:.2f} GiB -> {tm_big / MiB:.2f} MiB  (ratio {tm_big / tm_small:.2f})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
