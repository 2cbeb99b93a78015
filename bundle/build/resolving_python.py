"""The Python that resolves a model's engine packages: the image's X.Y, on this machine.

pip evaluates environment markers with the Python it runs under, whatever ``--python-version``
says (checked: pytest for 3.10 resolved from 3.11 leaves out exceptiongroup and tomli, which 3.10
needs), and an sdist-only dependency (funasr's jieba, oss2, crcmod, antlr4) is built by that
Python. So a resolution for an image's Python 3.12 cannot run under the build's 3.11: `bundle
build` makes a build venv of the image's X.Y from an interpreter this machine has (found by uv,
which never downloads one here: UV_PYTHON_DOWNLOADS=never), seeded with pip, kept in the cache
(<cache>/build-python/<X.Y>/, made under a temporary name and renamed), and runs pip there. No such
interpreter: the error says what to install.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from bundle.format.errors import SetupError
from bundle.build.image_env import ImageEnv


def _uv() -> str:
    """uv beside this Python (the project's venv installs it), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else shutil.which("uv") or "uv"


def _runs(python: Path, version: str) -> bool:
    try:
        done = subprocess.run([str(python), "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == version


def resolving_python(env: ImageEnv, cache_root: Path, say: Callable[[str], None] = lambda _m: None) -> str:
    """sys.executable when it is the image's X.Y, else the cached build venv's python of that X.Y."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if platform.machine() != env.machine or sys.platform != "linux":
        raise SetupError(f"the image's Python runs on linux {env.machine}, this machine is {sys.platform} "
                         f"{platform.machine()}: engine packages are resolved on the image's platform; run `bundle "
                         f"build` on a linux {env.machine} machine")
    if here == env.python_version:
        return sys.executable
    venv = cache_root / "build-python" / env.python_version
    python = venv / "bin" / "python"
    if _runs(python, env.python_version):
        return str(python)
    say(f"build: the image's Python is {env.python_version}, this one {here}: making a build venv of Python "
        f"{env.python_version} in {venv} (markers and sdists need that Python)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{env.python_version}.part-", dir=venv.parent))
    try:
        try:
            done = subprocess.run([_uv(), "venv", "-q", "--seed", "--allow-existing", "--python", env.python_version,
                                   str(tmp)], capture_output=True, text=True,
                                  env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
        except FileNotFoundError:
            done = subprocess.CompletedProcess([], 127, "", "uv is not installed (pip install uv)")
        if done.returncode != 0 or not _runs(tmp / "bin" / "python", env.python_version):
            raise SetupError(f"the image's Python is {env.python_version} and this machine has no Python "
                             f"{env.python_version} to resolve its engine packages with (uv: "
                             f"{(done.stderr or done.stdout).strip()[-300:]}). Fix: install one (apt-get install "
                             f"python{env.python_version}, or pyenv install {env.python_version}), or run `bundle "
                             f"build` with the project's venv made from a Python {env.python_version}")
        shutil.rmtree(venv, ignore_errors=True)
        os.replace(tmp, venv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(python)
