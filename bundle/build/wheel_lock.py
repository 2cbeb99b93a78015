"""The bundle's wheels, locked: which files `build` carries and the hashed requirements file
that `install` feeds to `pip install --require-hashes --no-index`.

`build` resolves the project's requirements.lock (pip-compile --generate-hashes, every package
pinned with the sha256 of its files on PyPI; bash tools/lock-requirements.sh) with
`pip download --require-hashes`, so pip itself refuses a file whose hash the lock does not
name. The requirements file carried in the bundle is then written from the files actually
carried: one `name==version --hash=sha256:...` per wheel. So the site's pip installs exactly
those files and checks each one, whatever the input was (a lock, or an unhashed
`--requirements FILE` whose indirect dependencies were resolved on the day).

Downloads land in a fresh directory that is renamed into the cache only when pip succeeded,
so a cached set is always one complete resolution, never two half ones mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bundle.format.errors import FetchError, SetupError
from bundle.format.manifest import sha256_file
from bundle.install.pip_env import offline_pip_env

LOCK_NAME = "requirements.lock"
WHEEL_SUFFIXES = (".whl",)
_HASH_RE = re.compile(r"--hash[= ]sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class LockedWheel:
    """One carried file: the requirement line the site's pip checks it against."""

    file_name: str
    project: str
    version: str
    sha256: str

    def requirement(self) -> str:
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"


def default_requirements(project: Path) -> Path:
    """The project's requirements.lock; a checkout without one falls back to requirements.txt."""
    lock = project / LOCK_NAME
    return lock if lock.is_file() else project / "requirements.txt"


def is_hashed(requirements_text: str) -> bool:
    """Whether a requirements file pins hashes (then pip downloads in --require-hashes mode)."""
    return bool(_HASH_RE.search(requirements_text))


def wheel_project_version(file_name: str) -> tuple[str, str]:
    """("name", "version") of a wheel file name (PEP 427: name-version[-build]-py-abi-platform.whl)."""
    parts = file_name[: -len(".whl")].split("-") if file_name.endswith(".whl") else []
    if len(parts) not in (5, 6) or not parts[0] or not parts[1]:
        raise FetchError(f"{file_name}: not a wheel file name (name-version-python-abi-platform.whl)")
    return parts[0], parts[1]


def locked_wheels(wheel_dir: Path, file_names: list[str]) -> list[LockedWheel]:
    wheels = []
    for name in sorted(file_names):
        project, version = wheel_project_version(name)
        wheels.append(LockedWheel(name, project, version, sha256_file(wheel_dir / name)))
    return wheels


def carried_requirements(wheels: list[LockedWheel], source: Path) -> str:
    """The requirements file the bundle carries: exactly these files, each with its hash."""
    lines = [f"# Written by `bundle build` from {source.name}: the wheels in this directory, each",
             "# pinned with its sha256. Installed with pip install --require-hashes --no-index."]
    lines += [wheel.requirement() for wheel in wheels]
    return "\n".join(lines) + "\n"


def pip_args(python_version: Optional[str], platforms: tuple[str, ...] | list[str]) -> list[str]:
    """Binary wheels only (the offline install needs no compiler), for the site's Python and platform."""
    args = ["--disable-pip-version-check", "--only-binary=:all:"]
    if python_version:
        args += ["--python-version", python_version]
    for tag in platforms:
        args += ["--platform", tag]
    return args


def _wheel_names(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if name.endswith(WHEEL_SUFFIXES) and (directory / name).is_file())


def download(requirements: Path, cache_root: Path, args: list[str], quiet: bool,
             say=lambda _message: None) -> tuple[Path, list[str]]:
    """(directory, wheel names): ``requirements`` resolved by `pip download`, cached by its text and args."""
    text = requirements.read_text()
    hashed = ["--require-hashes"] if is_hashed(text) else []
    key = hashlib.sha256(json.dumps([text, args, hashed]).encode()).hexdigest()[:16]
    dest = cache_root / "wheels" / key
    if (dest / ".complete").is_file():
        return dest, _wheel_names(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    say(f"build: pip download -r {requirements} (into {dest})")
    work = Path(tempfile.mkdtemp(prefix=f".{key}.part-", dir=dest.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", *args, *hashed, "-r", str(requirements), "-d", str(work)]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            hint = (f"\na hash mismatch means a file differs from the one {requirements.name} was locked "
                    "against: regenerate the lock (bash tools/lock-requirements.sh) only if the change is expected"
                    if "DO NOT MATCH" in proc.stderr else "")
            raise FetchError(f"pip download -r {requirements} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-2000:]}{hint}")
        (work / ".complete").write_text("\n".join(_wheel_names(work)) + "\n")
        shutil.rmtree(dest, ignore_errors=True)  # an older, unfinished set under the same key
        os.replace(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest, _wheel_names(dest)


def resolve_offline(wheel_dir: Path, requirements: Path, args: list[str]) -> list[str]:
    """The names of the files in ``wheel_dir`` (--wheels-from) that satisfy ``requirements`` with no
    index, as the offline install will resolve them; other files there are not carried."""
    if not wheel_dir.is_dir():
        raise SetupError(f"--wheels-from {wheel_dir}: no such directory")
    hashed = ["--require-hashes"] if is_hashed(requirements.read_text()) else []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-index", "--find-links", str(wheel_dir),
               *args, *hashed, "-r", str(requirements), "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=offline_pip_env())
        if proc.returncode != 0:
            raise SetupError(f"--wheels-from {wheel_dir} cannot satisfy {requirements} without an index: "
                             f"{proc.stderr.strip()[-1500:]}\nadd the missing wheels (pip download -r "
                             f"{requirements} -d {wheel_dir}) or drop --wheels-from")
        names = _wheel_names(Path(tmp))
    missing = [name for name in names if not (wheel_dir / name).is_file()]
    if missing:  # pip resolved a file by another spelling of its name
        raise SetupError(f"--wheels-from {wheel_dir}: pip resolved {', '.join(missing)}, which is not a file "
                         "there under that name")
    return names
