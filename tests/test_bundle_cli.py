"""`python -m bundle`: one command table, and only the running command's module imported (issue 13,
item 3). On a bare `python3 -S` (no site-packages, so no pydantic or PyYAML) the offline
commands start, and plan/build say how to get their dependencies instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bundle.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def bare(*argv: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no PYTHONPATH: the checkout's code only
    return subprocess.run([sys.executable, "-S", "-m", "bundle", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_help_lists_every_command_of_the_table():
    proc = bare("--help")
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stdout.split())  # argparse wraps long help lines
    for name, (_, help_text, _) in COMMANDS.items():
        assert f"{name} {help_text}" in shown, name


@pytest.mark.parametrize("command", ["unpack", "verify", "install", "pack"])
def test_an_offline_command_parses_its_own_arguments_on_a_bare_python(command):
    proc = bare(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: python -m bundle {command}" in proc.stdout


@pytest.mark.parametrize("command", ["plan", "build"])
def test_a_command_that_needs_the_venv_says_how_to_get_it(command):
    proc = bare(command, "--stack", "gpu-node-1")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {command} needs the project's Python dependencies (No module named ")
    assert f"venv/bin/python -m bundle {command} ..." in proc.stderr and "Traceback" not in proc.stderr


def test_an_unknown_command_is_a_usage_error_naming_the_choices():
    proc = bare("instal", "x")
    assert proc.returncode == 2 and "invalid choice: 'instal'" in proc.stderr and "install" in proc.stderr


def test_running_verify_imports_no_other_command():
    probe = ("import sys, io; from bundle.cli import main; main(['verify', '/nonexistent'], io.StringIO()); "
             "print(sorted(m for m in sys.modules if m.startswith(('bundle', 'stackspec'))))")
    proc = subprocess.run([sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)
    loaded = eval(proc.stdout.strip().splitlines()[-1])  # a list literal printed by the probe
    commands = ("bundle.plan.command", "bundle.build.command", "bundle.install.command", "bundle.build.pack",
                "bundle.install.unpack")
    assert not [m for m in loaded if m in commands], loaded
    assert all(m.startswith(("bundle.format", "stackspec.xinference")) or m in ("bundle", "stackspec", "bundle.cli")
               for m in loaded), loaded
