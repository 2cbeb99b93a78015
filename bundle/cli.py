"""`python -m bundle <command>`: the offline bundle's command line.

Each command module exposes ``register(subparsers)`` and a ``run(args, out) -> int``.
Exit codes: 0 success, 1 a check failed (verify, plan --bundle), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, TextIO

from bundle import plan
from bundle.manifest import BundleError

COMMANDS = [plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bundle",
                                     description="Plan, build, verify, pack, unpack and install the offline bundle.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.func(args, out))
    except BundleError as exc:
        # A user-fixable failure: a clear line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
