"""install's venv step: `python3 -m venv VENV`, then pip with the bundle's wheels and nothing else.

Standard library only (install runs with the server's bare python3). Skipped when the venv
was already installed from these exact wheels: a stamp file in the venv (written atomically,
temp file and rename) holds their digest.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bundle.format.errors import FileProblem
from bundle.format.manifest import StackManifest, files_digest, write_atomic
from bundle.format.progress import plural
from bundle.format.verify import check_directory
from bundle.install.destinations import InstallError, StepResult
from bundle.install.pip_env import offline_pip_env

VENV_STAMP = ".xinference-offline-wheels"


def python_version(python: str) -> str:
    proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError("venv", [FileProblem(python, f"cannot run this Python ({proc.stderr.strip()})")])
    return proc.stdout.strip()


def check_venv_python(manifest: StackManifest, venv: Path, python: str) -> None:
    """A venv still to be made needs the Python the wheels are for (checked before anything is written)."""
    if manifest.role("wheel") and not (venv / "bin" / "python").exists():
        version = python_version(python)
        if manifest.python and version != manifest.python:
            raise InstallError("venv", [FileProblem(python, f"is Python {version}, the bundled wheels are for Python "
                                                        f"{manifest.python}: run install with --python "
                                                        f"python{manifest.python}, or rebuild the bundle with "
                                                        f"--python-version {version}")])


def _hash_hint(pip_stderr: str) -> str:
    if "Hashes are required" in pip_stderr or "--hash" in pip_stderr:
        return ("\nthe bundle's wheels/requirements.txt must pin every file with its sha256: a bundle built "
                "before the wheels were locked; rebuild it with this version's `bundle build`")
    return ""


def install_venv(bundle: Path, manifest: StackManifest, venv: Path, python: str, quiet: bool) -> StepResult:
    result = StepResult("venv")
    wheels = manifest.role("wheel")
    requirements = bundle / "wheels" / "requirements.txt"
    if not wheels or not any(e.path == "wheels/requirements.txt" for e in wheels):
        result.note = "the bundle carries no wheels/requirements.txt: venv skipped"
        return result
    stamp = venv / VENV_STAMP
    want = files_digest(wheels, strip_prefix=False)
    venv_python = venv / "bin" / "python"
    if venv_python.exists() and stamp.is_file() and stamp.read_text().strip() == want:
        result.unchanged = len(wheels)
        result.note = f"{venv} already installed from these {plural(len(wheels) - 1, 'wheel')}"
        return result
    problems = check_directory(bundle, manifest, only=wheels, extras=False)
    if problems:
        raise InstallError(f"{bundle}/wheels is damaged; run `python -m bundle verify {bundle}`", problems)
    if not venv_python.exists():
        check_venv_python(manifest, venv, python)
        proc = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError("venv", [FileProblem(str(venv), f"`{python} -m venv` failed: {proc.stderr.strip()} "
                                                           "(Debian/Ubuntu: apt install python3-venv)")])
    cmd = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--require-hashes",
           "--find-links", str(bundle / "wheels"), "-r", str(requirements)]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE, text=True,
                          env=offline_pip_env())
    if proc.returncode != 0:
        raise InstallError("venv", [FileProblem(str(venv), "pip install from the bundled wheels failed: "
                                                       f"{proc.stderr.strip()[-2000:]}{_hash_hint(proc.stderr)}")])
    write_atomic(stamp, (want + "\n").encode())  # temp file + rename: never half a stamp
    result.copied = len(wheels) - 1
    result.copied_bytes = sum(e.size for e in wheels)
    result.note = f"{venv}: installed {plural(len(wheels) - 1, 'wheel')} with no index"
    return result
