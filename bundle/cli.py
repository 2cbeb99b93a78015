"""`python -m bundle <command>`: the offline bundle's command line.

Each command module exposes ``register(subparsers)`` and a ``run(args, out) -> int``.
Exit codes: 0 success, 1 a check failed (verify, plan --bundle), 2 usage or config error.

unpack, verify and install need only the standard library: on the offline server they run
with the system python3 before any venv exists. `plan` needs the project's dependencies
(pydantic, PyYAML); where they are missing it says how to get them instead of failing to start.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, TextIO

from bundle import archive, build, install, verify
from bundle.manifest import BundleError

try:
    from bundle import plan
except ImportError as missing:  # the bare offline python3: no pydantic / PyYAML yet
    _PLAN_IMPORT_ERROR = missing

    class plan:  # noqa: N801 - stands in for the module
        @staticmethod
        def register(subparsers: argparse._SubParsersAction) -> None:
            # Every argument is taken as-is (no option prefix matches): the message below is the answer.
            parser = subparsers.add_parser("plan", help="validate a stack (needs the project venv)", add_help=False,
                                           prefix_chars="\x00")
            parser.add_argument("rest", nargs="*")
            parser.set_defaults(func=plan.run)

        @staticmethod
        def run(args: argparse.Namespace, out: TextIO) -> int:
            print(f"error: plan needs the project's Python dependencies ({_PLAN_IMPORT_ERROR}); run "
                  "`python3 -m bundle install BUNDLE_DIR` first, then `venv/bin/python -m bundle plan ...`",
                  file=sys.stderr)
            return 2

COMMANDS = [plan, build, archive, verify, install]


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
    except OSError as exc:  # this machine's trouble (disk full, permissions): say it plainly
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
