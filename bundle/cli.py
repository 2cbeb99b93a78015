"""`python -m bundle <command>`: the offline bundle's command line.

One table names every command, its module and its one-line help. Only the module of the
command being run is imported: unpack, verify, install and diff import the standard library and
bundle/format/ alone, so on the offline server they run with the system python3 (even
``python3 -S``, with no site-packages) before any venv exists. plan and build import the stack
spec (pydantic, PyYAML); where those are missing, the command says how to get them instead
of failing with a traceback.

Each command module exposes ``register(subparsers)`` (adding the commands it serves) and the
``func`` each parser sets. Exit codes: 0 success, 1 a check failed (verify, plan --bundle),
2 usage or config error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence, TextIO

from bundle.format.errors import BundleError

EXIT_USAGE = 2

# command: (module that serves it, one-line help, needs the project's dependencies)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "plan": ("bundle.plan.command", "validate a stack and print what will run where", True),
    "build": ("bundle.build.command", "build the bundle directory for one or more stacks (online machine)", True),
    "sign": ("bundle.build.sign", "sign a built bundle's manifest with an Ed25519 SSH key", False),
    "pack": ("bundle.build.pack", "pack a built bundle directory into one archive", False),
    "unpack": ("bundle.install.unpack", "check an archive, then unpack it safely", False),
    "verify": ("bundle.format.verify", "check every file of a bundle (directory or archive)", False),
    "install": ("bundle.install.command", "install a bundle (directory, or the archive itself) onto this server", False),
    "diff": ("bundle.plan.diff", "what an update changes, per stack (before it is carried)", False),
}
DESCRIPTION = "Plan, build, sign, verify, pack, unpack, install and diff the offline bundle."


class MissingDependencies(BundleError):
    """A command that needs the project's venv, run with a python that lacks it (exit 2)."""

    exit_code = EXIT_USAGE


def command_of(argv: Sequence[str]) -> Optional[str]:
    """The command word: the first argument that is not an option (the top level has only -h)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: Optional[str]) -> argparse.ArgumentParser:
    """The parser, with the full arguments of ``command`` (its module imported) and a
    placeholder for every other command (for the top-level help and "invalid choice")."""
    parser = argparse.ArgumentParser(prog="python -m bundle", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered: set[str] = set()
    if command in COMMANDS:
        module_name, _, needs_venv = COMMANDS[command]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if not needs_venv or (missing.name or "").split(".")[0] in ("bundle", "stackspec"):
                raise  # our own module missing is a broken checkout, not a missing venv: show it
            raise MissingDependencies(
                f"{command} needs the project's Python dependencies ({missing}); on the online machine run "
                f"`bash tools/setup.sh`, on the site `python3 -m bundle install BUNDLE_DIR` first, then "
                f"`venv/bin/python -m bundle {command} ...`") from None
        module.register(subparsers)
        registered = set(subparsers.choices)
    for name, (_, help_text, _) in COMMANDS.items():
        if name not in registered:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(command_of(argv))
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
            return int(exc.code or 0)
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
