"""Benchmark of `bundle plan` with the pinned catalog loaded (prints figures; asserts nothing).

Target (issue 14): `bundle plan --stack gpu-node-1` under 2 s with every model checked against
stackspec/xinference_catalog.json. Measured as whole processes (what an operator waits for), median
of --rounds, against two baselines taken in the same run: the interpreter importing the plan's
modules without the catalog read, and the catalog read alone.

    venv/bin/python bench/bench_plan.py [--rounds 7] [--stack gpu-node-1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seconds(argv: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--stack", default="gpu-node-1")
    args = parser.parse_args()
    py = sys.executable
    plan = seconds([py, "-m", "bundle", "plan", "--stack", args.stack], args.rounds)
    imports = seconds([py, "-c", "import bundle.plan.command, stackspec.load, stackspec.rules"], args.rounds)
    catalog = seconds([py, "-c", "from stackspec.catalog import pinned_catalog; pinned_catalog()"], args.rounds)
    bare = seconds([py, "-c", "pass"], args.rounds)
    print(f"bundle plan --stack {args.stack}: {plan:.3f} s (median of {args.rounds}; target < 2 s)")
    print(f"  baseline, the plan's imports alone: {imports:.3f} s -> plan is {plan / imports:.2f}x")
    print(f"  the catalog read alone: {catalog - bare:.3f} s over a bare interpreter ({bare:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
