"""Engine packages carried across the gap: the wheels a model's virtualenv installs at launch.

For each model whose launch installs packages (stackspec/engine_packages.py), against the image's own
Python (bundle/build/image_env.py), this does what xoscar does on the site, on the online side:

1. split: each requirement the image already satisfies is pinned to the image's version
   (``#system_torch#`` becomes ``torch==<the image's>``); the others are to be resolved
   (xoscar's ``_split_specs``: names compared lower-cased, as it does);
2. resolve them to the complete set of distributions, by ``pip install --dry-run
   --ignore-installed --report`` with a Python of the image's X.Y (this one, or a build venv of that
   X.Y: bundle/build/resolving_python.py; markers are evaluated by the running Python). The
   constraints are the pins and every other
   distribution the image has, at its version: a dependency the image has is taken at the
   image's version wherever the requirements allow it, as pip would in a virtualenv that sees the
   image's site-packages (a version pip blames for a conflict is dropped, said, and resolved anew);
3. download each distribution the image lacks as a wheel for the image: ``pip download --no-deps
   --only-binary=:all: --python-version X.Y --platform manylinux_2_NN_<machine> --implementation cp
   --abi cpXY``; a distribution PyPI has only as an sdist is built here with ``pip wheel
   --no-deps`` (pure Python, or a binary wheel only when this machine's glibc is not newer than the
   image's). One the image has at the resolved version is written as a metadata-only stand-in
   (bundle/build/stub_wheel.py).

The complete set is needed, not only what the image lacks: the virtualenv's uv resolves every
dependency from the offline folder, even those it will then skip because the image has them. For
those, their metadata is all it reads: torch and its CUDA libraries cost a few KB, not 3+ GB.
Each model's result is cached under <cache>/engine-wheels/<digest of its inputs>/ and published
by one rename, so a cached set is always one whole resolution.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from bundle.build.resolving_python import resolving_python
from bundle.format.errors import FetchError, SetupError
from bundle.build.image_env import ImageEnv
from bundle.build.stub_wheel import is_stub_filename, write_stub_wheel
from stackspec.engine_packages import ModelPackages

RESOLVED = "resolved.json"  # written last into a model's cache dir: the set is complete
CACHE_VERSION = 4  # 2: the image's distributions are constraints and carried as metadata-only stand-ins;
# 3: a stand-in carries the image's installed version, local label included; 4: Requires-Python is
# judged against the image's full Python version
MAX_RELAXATIONS = 8  # resolutions, each dropping an image version pip blamed or a version too new for the
# image's Python (a dry run: 20-60 s)
DOWNLOAD_TRIES = 3  # of the engine wheels' `pip download`


@dataclass(frozen=True)
class ImageSplit:
    """A model's requirements against one image, as xoscar splits them at launch."""

    to_resolve: tuple[str, ...]
    pinned: dict[str, str]  # name -> the image's version, used as constraints
    not_for_image: tuple[str, ...] = ()  # lines whose standard marker is false for the image (never installed)


@dataclass
class ModelWheels:
    """What one model carries: its split and the wheel files of its resolution."""

    packages: ModelPackages
    split: ImageSplit
    files: dict[str, int] = field(default_factory=dict)  # wheel file name -> size
    directory: Optional[Path] = None

    @property
    def stubs(self) -> list[str]:
        """Those of files that stand in for the image's own distributions (metadata only)."""
        return [name for name in sorted(self.files) if is_stub_filename(name)]

    @property
    def size(self) -> int:
        return sum(self.files.values())


def marker_environment(env: ImageEnv) -> dict[str, str]:
    return {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": env.machine,
            "python_version": env.python_version,
            "python_full_version": env.python_full_version or f"{env.python_version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def split_for_image(packages: ModelPackages, env: ImageEnv) -> ImageSplit:
    """xoscar's process_packages (#system_X# -> X==<installed, local label dropped>) then _split_specs."""
    installed = {name.lower(): version for name, version in env.installed.items()}
    specs = []
    for name in packages.from_image:
        version = installed.get(name.lower())
        specs.append(f"{name}=={version.split('+')[0]}" if version else name)
    specs += packages.requirements
    to_resolve, pinned, skipped = [], {}, []
    for spec in specs:
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise SetupError(f"model {packages.uid}: virtualenv package {spec!r} is not a requirement pip can read "
                             f"({exc}); fix the custom model's virtualenv.packages") from exc
        if req.url:
            to_resolve.append(spec)
            continue
        if req.marker is not None and not req.marker.evaluate(marker_environment(env)):
            skipped.append(spec)
            continue
        current = installed.get(req.name.lower())
        satisfied = current is not None and (not req.specifier or _contains(req, current))
        if satisfied:
            pinned[req.name.lower()] = current
        if req.extras or not satisfied:
            to_resolve.append(spec)
    return ImageSplit(tuple(to_resolve), pinned, tuple(skipped))


def _contains(req: Requirement, version: str) -> bool:
    try:
        return Version(version) in req.specifier
    except InvalidVersion:
        return False


def _pip(args: list[str], what: str, cwd: Optional[Path] = None, check: bool = True,
         python: str = sys.executable) -> subprocess.CompletedProcess:
    cmd = [python, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise FetchError(_pip_failed(args, what, proc, proc.stderr))
    return proc


def _pip_failed(args: list[str], what: str, proc: subprocess.CompletedProcess, said: str) -> str:
    return f"{what}: `pip {' '.join(args[:2])} ...` failed ({proc.returncode}):\n{said.strip()[-2500:]}"


def public_version(version: str) -> Optional[str]:
    """The version without its local label (``2.8.0+cu128`` -> ``2.8.0``): what an index serves."""
    try:
        return Version(version).public
    except InvalidVersion:
        return None


def is_in_image(in_image: dict[str, str], name: str, version: str) -> bool:
    """Whether the image (``image_versions``) has distribution ``name`` at ``version``: then it is
    carried as a stand-in."""
    have = in_image.get(canonicalize_name(name))
    try:
        return have is not None and Version(have) == Version(version)
    except InvalidVersion:
        return have == version


def installed_version(env: ImageEnv, name: str) -> Optional[str]:
    """The version of ``name`` as the image has it installed, local label included (``2.11.0+cu130``)."""
    wanted = canonicalize_name(name)
    return next((version for have, version in env.installed.items() if canonicalize_name(have) == wanted), None)


def image_versions(env: ImageEnv) -> dict[str, str]:
    """canonical name -> the public version of each distribution the image has."""
    return {canonicalize_name(name): public for name, version in env.installed.items()
            if (public := public_version(version)) is not None}


def pin_constraints(split: ImageSplit) -> dict[str, str]:
    """The pins as constraints an index can meet (local labels dropped)."""
    return {canonicalize_name(name): public_version(version) or version for name, version in split.pinned.items()}


def image_constraints(split: ImageSplit, env: ImageEnv) -> dict[str, str]:
    """The pins, then every other distribution the image has, except those the model's own
    requirements ask anew (the image's version does not satisfy them)."""
    asked = {canonicalize_name(Requirement(spec).name) for spec in split.to_resolve}
    constraints = pin_constraints(split)
    for name, version in image_versions(env).items():
        if name not in asked:
            constraints.setdefault(name, version)
    return constraints


def _glibc_here() -> Optional[tuple[int, int]]:
    name, version = platform.libc_ver()
    match = re.match(r"(\d+)\.(\d+)", version) if name == "glibc" else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _build_sdist(name: str, version: str, env: ImageEnv, out: Path, python: str = sys.executable) -> str:
    """Build one sdist-only distribution into a wheel the image can use; its file name."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        _pip(["wheel", "--no-deps", "-q", "-w", tmp, f"{name}=={version}"], f"building {name} {version} from its sdist",
             python=python)
        built = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(built) != 1:
            raise FetchError(f"building {name} {version} from its sdist gave {built or 'no wheel'}")
        wheel = built[0]
        if not wheel.endswith("-none-any.whl"):
            here = _glibc_here()
            image = tuple(int(p) for p in (env.glibc or "2.17").split("."))
            if here is None or here > image:
                raise SetupError(f"{name} {version} has no wheel on the index and builds into a binary wheel here "
                                 f"({wheel}) against glibc {here}, newer than the image's {env.glibc}: build it on a "
                                 f"machine with glibc <= {env.glibc} (e.g. in the image), or pin a version with wheels")
        os.replace(Path(tmp) / wheel, out / wheel)
        return wheel


def _download(uid: str, wheels: list[tuple[str, str]], env: ImageEnv, work: Path, say: Callable[[str], None],
              python: str = sys.executable) -> None:
    """``pip download`` of the wheels for the image, tried again when it fails: pip does not retry a
    body that breaks off or arrives with another hash, and keeps the wheels already complete in
    ``work`` (a rerun fetches only the rest)."""
    platforms = [arg for tag in env.platforms for arg in ("--platform", tag)]
    # the full version when the tar says it: pip takes "3.11" as 3.11.0 when it judges Requires-Python
    args = ["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(work), "--python-version",
            env.python_full_version or env.python_version, *platforms, "--implementation", "cp", "--abi", env.abi,
            *(f"{n}=={v}" for n, v in wheels)]
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        try:
            _pip(args, f"downloading {uid}'s engine wheels for Python {env.python_version} {env.platform}", python=python)
            return
        except FetchError as exc:
            if attempt == DOWNLOAD_TRIES:
                raise
            lines = str(exc).strip().splitlines()
            reason = next((line for line in lines if line.startswith("ERROR:")), lines[-1])[:300]
            say(f"build: downloading {uid}'s engine wheels failed (try {attempt} of {DOWNLOAD_TRIES}); trying again, "
                f"keeping the wheels already here ({reason})")


def resolve_model(packages: ModelPackages, env: ImageEnv, cache_root: Path,
                  say: Callable[[str], None] = lambda _m: None) -> ModelWheels:
    """The wheels of one model's virtualenv for this image, from the cache or downloaded now."""
    split = split_for_image(packages, env)
    result = ModelWheels(packages, split)
    if not split.to_resolve:
        return result
    python = resolving_python(env, cache_root, say)
    key_text = json.dumps([CACHE_VERSION, split.to_resolve, sorted(split.pinned.items()), env.python_version,
                           env.python_full_version, env.platform, sorted(env.installed.items())], sort_keys=True)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    dest = cache_root / "engine-wheels" / key
    if (dest / RESOLVED).is_file():
        resolved = json.loads((dest / RESOLVED).read_text())
        result.files, result.directory = resolved["files"], dest
        return result
    dest.parent.mkdir(parents=True, exist_ok=True)
    say(f"build: resolving {packages.uid}'s engine packages {' '.join(split.to_resolve)} for Python "
        f"{env.python_version} {env.platform} (into {dest})")
    work = Path(tempfile.mkdtemp(prefix=f".{key}.part-", dir=dest.parent))
    try:
        report = resolve_report(packages.uid, split, env, work, say, python)
        in_image = image_versions(env)
        wheels, sdists, stubs = [], [], []
        for item in report.get("install", []):
            metadata = item["metadata"]
            name, version = metadata["name"], metadata["version"]
            url = item.get("download_info", {}).get("url", "")
            if is_in_image(in_image, name, version):
                # the image's own version, local label included: xoscar pins the installed version
                # (torch==2.11.0+cu130 on the official image) and uv must find it in the carried folder
                stubs.append(write_stub_wheel(work, name, installed_version(env, name) or version,
                                              metadata.get("requires_dist", ()), metadata.get("requires_python")))
            else:
                (wheels if url.endswith(".whl") else sdists).append((name, version))
        if wheels:
            _download(packages.uid, wheels, env, work, say, python)
        for name, version in sdists:
            say(f"build: {name} {version} has only an sdist: building its wheel")
            _build_sdist(name, version, env, work, python)
        files = {f: (work / f).stat().st_size for f in sorted(os.listdir(work)) if f.endswith(".whl")}
        if len(files) != len(wheels) + len(sdists) + len(stubs):
            raise FetchError(f"{packages.uid}: pip resolved {len(wheels) + len(sdists) + len(stubs)} distributions "
                             f"but {len(files)} wheels were written")
        for leftover in ("constraints.txt", "report.json"):
            (work / leftover).unlink()
        (work / RESOLVED).write_text(json.dumps({"files": files, "requirements": list(split.to_resolve),
                                                 "pinned": split.pinned},
                                                indent=1, sort_keys=True) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.files, result.directory = files, dest
    return result


class ConstraintConflict(FetchError):
    """pip could not hold some constraints; ``names`` are those its message blames."""

    def __init__(self, message: str, names: set[str]):
        super().__init__(message)
        self.names = names


# pip's words for a constraint that cannot hold: a conflict, or a version the index does not serve
_BLAMED = re.compile(r"The user requested \(constraint\) ([A-Za-z0-9._-]+)==|"
                     r"(?:Could not find a version that satisfies the requirement|No matching distribution found for) "
                     r"([A-Za-z0-9._-]+)==")
_PROGRESS = ("Collecting ", "  Downloading ", "  Using cached ", "  Obtaining ", "Looking in ")  # not the reason


def pip_report(uid: str, split: ImageSplit, constraints: dict[str, str], work: Path,
               python: str = sys.executable, below: Optional[dict[str, str]] = None) -> dict:
    """pip's resolution report with these constraints (not quiet: a conflict's explanation is wanted);
    ``below``: name -> the bound it must keep (``<=2.10``, ``<4.1.4``)."""
    lines = [f"{k}=={v}\n" for k, v in sorted(constraints.items())]
    lines += [f"{k}{v}\n" for k, v in sorted((below or {}).items())]
    (work / "constraints.txt").write_text("".join(lines))
    args = ["install", "--dry-run", "--ignore-installed", "--progress-bar", "off", "--report", str(work / "report.json"),
            "-c", str(work / "constraints.txt"), *split.to_resolve]
    proc = _pip(args, f"resolving {uid}'s engine packages", check=False, python=python)
    if proc.returncode == 0:
        return json.loads((work / "report.json").read_text())
    said = proc.stdout + proc.stderr
    reason = "\n".join(line for line in said.splitlines() if not line.startswith(_PROGRESS))
    raise ConstraintConflict(_pip_failed(args, f"resolving {uid}'s engine packages", proc, reason),
                             {canonicalize_name(a or b) for a, b in _BLAMED.findall(said)})


def resolve_report(uid: str, split: ImageSplit, env: ImageEnv, work: Path, say: Callable[[str], None],
                   python: str = sys.executable) -> dict:
    """pip's report of the resolution with the image's versions as constraints; a version of the image
    that pip blames is dropped (and said) until the rest fit. The model's own pins are never dropped:
    pip's failure is the answer then."""
    pins = pin_constraints(split)
    constraints = image_constraints(split, env)
    below: dict[str, str] = {}
    for _ in range(MAX_RELAXATIONS):
        try:
            report = pip_report(uid, split, constraints, work, python, below)
        except ConstraintConflict as exc:
            blamed = sorted((exc.names & set(constraints)) - set(pins))
            if not blamed:
                raise
            for name in blamed:
                del constraints[name]
            say(f"build: {uid}'s engine packages need other versions than the image's of {', '.join(blamed)}: "
                "resolved anew (its virtualenv gets its own)")
            continue
        too_new = too_new_for_image(report, env, set(pins))
        if not too_new:
            return report
        for name, version in sorted(too_new.items()):
            fits = newest_for_image(name, env, python)
            below[name] = f"<={fits}" if fits and _older(fits, version) else f"<{version}"
            constraints.pop(name, None)
        say(f"build: {uid}: {', '.join(f'{n} {v}' for n, v in sorted(too_new.items()))} need a newer Python than the "
            f"image's {env.python_full_version}: resolved anew with {', '.join(f'{n}{below[n]}' for n in sorted(too_new))}")
    report = pip_report(uid, split, pins, work, python, below)
    too_new = too_new_for_image(report, env, set(pins))
    if too_new:
        raise FetchError(f"resolving {uid}'s engine packages: {too_new} need a newer Python than the image's "
                         f"{env.python_full_version}, and no older versions fit after {MAX_RELAXATIONS} resolutions")
    return report


def newest_for_image(name: str, env: ImageEnv, python: str = sys.executable) -> Optional[str]:
    """The newest version of ``name`` the index serves for the image's full Python version, judged by the
    Requires-Python the index publishes (``pip index versions --python-version``); None when pip cannot
    say (an index that publishes no Requires-Python: then the resolution steps below one version at a time)."""
    proc = _pip(["index", "versions", name, "--python-version", env.python_full_version or env.python_version],
                f"asking the index for {name}'s versions", check=False, python=python)
    found = re.match(r"\S+ \(([^)]+)\)", proc.stdout.strip())
    return found.group(1) if proc.returncode == 0 and found else None


def _older(a: str, b: str) -> bool:
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return False


def too_new_for_image(report: dict, env: ImageEnv, pinned: set[str]) -> dict[str, str]:
    """name -> version of each resolved distribution whose Requires-Python the image's full Python
    version does not meet. pip judged Requires-Python with the Python it ran under (this machine's
    3.11.7 for an image's 3.11.2), and uv on the site refuses such a wheel: resolved again below it.
    The image's own pinned versions are left alone (the image runs them)."""
    if not env.python_full_version:
        return {}
    found = {}
    for item in report.get("install", []):
        metadata = item["metadata"]
        name, requires = canonicalize_name(metadata["name"]), metadata.get("requires_python")
        if not requires or name in pinned:
            continue
        try:
            if not SpecifierSet(requires).contains(env.python_full_version, prereleases=True):
                found[name] = metadata["version"]
        except (InvalidSpecifier, InvalidVersion):
            continue
    return found


def package_record(stack: str, wheels: ModelWheels, env: ImageEnv) -> dict:
    """One model's entry of the bundle's packages.json (what plan --bundle and the site read)."""
    packages, split = wheels.packages, wheels.split
    return {"stack": stack, "model": packages.uid, "engine": packages.engine,
            "requirements": list(packages.requirements), "from_image": list(packages.from_image),
            "pinned_to_image": dict(sorted(split.pinned.items())), "resolved": list(split.to_resolve),
            "not_for_image": list(split.not_for_image), "wheels": sorted(wheels.files),
            "image_stand_ins": list(wheels.stubs),
            "sizes": [wheels.files[name] for name in sorted(wheels.files)], "size": wheels.size,
            "image_python": env.python_version, "image_platform": env.platform}
