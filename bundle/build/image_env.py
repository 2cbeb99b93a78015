"""What a `docker save` tar's Python is: its version, platform and installed distributions.

`bundle build` needs the image's Python to download engine wheels that fit it (``pip download
--python-version --platform``), and its installed distributions to split a model's packages as
xoscar does at launch: a requirement the image already satisfies is pinned to the image's
version, the others are resolved and installed into the model's virtualenv.

Read from the tar itself, no Docker engine needed (a `docker save` tar, or the OCI layout newer
engines save, its layers plain, gzip or zstd): only the members' headers (``*.dist-info``
directory names of the site-packages that holds xinference, with later layers' whiteouts
applied), dpkg's status file (libc6 gives the glibc version; every installed package goes into the
bundle's SBOM), and the image config's architecture.
The answer is cached beside the build's other caches, keyed by the tar's size, mtime and inode.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator, Optional

from bundle.format.errors import SetupError
from bundle.format.image_tar import ARCHES, layer_paths
from bundle.format.manifest import write_atomic

_SITE = re.compile(r"^(?P<site>(?:.*/)?lib/python(?P<py>\d+\.\d+)/(?:site|dist)-packages)/(?P<dist>[^/]+)\.dist-info/")
_LIBC6 = re.compile(r"^Package: libc6\n(?:[^\n]+\n)*?Version: (\d+)\.(\d+)", re.MULTILINE)
_DPKG_FIELD = re.compile(r"^(Package|Version|Architecture|Status): *(.*)$", re.MULTILINE)
_PATCHLEVEL = re.compile(r"^(?P<root>usr/(?:local/)?)include/python(?P<py>\d+\.\d+)/patchlevel\.h$")
_PY_VERSION = re.compile(rb'^#define PY_VERSION\s+"(\d+\.\d+\.\d+)', re.MULTILINE)
SCAN_VERSION = 5  # bump when what the scan records changes (old cache entries are then ignored)
# 5: the Python's full version (patch level: Requires-Python >=3.11.5 is not met by 3.11.2)


@dataclass(frozen=True)
class ImageEnv:
    """The Python inside an image, as pip's --python-version / --platform and xoscar see it."""

    python_version: str  # "3.11"
    machine: str  # "x86_64"
    glibc: Optional[str]  # "2.36"; None: not found, then the manylinux2014 baseline (2.17) is assumed
    # distribution Name (as its METADATA writes it) -> version, as importlib.metadata sees them there
    installed: dict[str, str] = field(default_factory=dict)
    # [name, version, architecture] of every Debian package dpkg's status file records as installed
    debian_packages: list[list[str]] = field(default_factory=list)
    # "3.11.2": what Requires-Python and python_full_version markers are judged against on the site;
    # None: the tar does not say (no dpkg record of that Python, no patchlevel.h)
    python_full_version: Optional[str] = None

    @property
    def platform(self) -> str:
        """The newest manylinux tag the image runs."""
        major, minor = (self.glibc or "2.17").split(".")
        return f"manylinux_{major}_{minor}_{self.machine}"

    @property
    def platforms(self) -> list[str]:
        """Every manylinux tag the image runs, newest first (pip's --platform does not widen a
        manylinux_2_NN tag to the older ones by itself), with the legacy aliases."""
        minor = int((self.glibc or "2.17").split(".")[1])
        tags = [f"manylinux_2_{m}_{self.machine}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        return tags + [f"{alias}_{self.machine}" for m, alias in legacy.items() if m <= minor]

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def cuda_version(self) -> Optional[str]:
        """What ``torch.version.cuda`` says in the image (the worker's ``cuda_version`` for the markers)."""
        return torch_cuda_version(self.installed)


_CUDA_LABEL = re.compile(r"^cu(\d+)(\d)$")  # cu130 -> 13.0, cu128 -> 12.8, cu118 -> 11.8
_CUDA_RUNTIME = re.compile(r"^nvidia[-_.]cuda[-_.]runtime(?:[-_.]cu\d+)?$", re.IGNORECASE)


def torch_cuda_version(installed: dict[str, str]) -> Optional[str]:
    """The CUDA the image's torch was built for, as ``torch.version.cuda`` gives it: from torch's local
    label (the PyTorch index's ``2.11.0+cu130`` -> ``13.0``), else, for PyPI's torch (public version,
    CUDA libraries as packages), from the CUDA runtime package it runs on (``nvidia-cuda-runtime``
    13.2.86 -> ``13.2``). None for a CPU or ROCm build, or no torch."""
    torch = next((v for name, v in installed.items() if name.lower() == "torch"), None)
    if torch is None:
        return None
    _, plus, label = torch.partition("+")
    if plus:
        found = _CUDA_LABEL.match(label)
        return f"{found.group(1)}.{found.group(2)}" if found else None
    runtime = next((v for name, v in installed.items() if _CUDA_RUNTIME.match(name)), None)
    parts = re.match(r"(\d+)\.(\d+)", runtime or "")
    return f"{parts.group(1)}.{parts.group(2)}" if parts else None


GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


@contextmanager
def _layer_stream(raw: IO[bytes]) -> Iterator[IO[bytes]]:
    """The layer's tar bytes: as stored, gunzipped (Docker 29's containerd store saves gzip layers),
    or through zstd (a zstd-compressed OCI layer; the `zstd` command, as Python 3.11 has no zstd)."""
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""  # type: ignore[attr-defined]
    if head[:2] == GZIP_MAGIC:
        with gzip.GzipFile(fileobj=raw) as plain:
            yield plain  # type: ignore[misc]
        return
    if head != ZSTD_MAGIC:
        yield raw
        return
    zstd = shutil.which("zstd")
    if zstd is None:
        raise SetupError("the image has zstd-compressed layers and this machine has no `zstd` to read them: "
                         "install it (apt-get install zstd), or save the image with gzip or plain layers")
    proc = subprocess.Popen([zstd, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def feed() -> None:
        try:
            shutil.copyfileobj(raw, proc.stdin)  # type: ignore[arg-type]
            proc.stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            pass  # the reader stopped first

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield proc.stdout  # type: ignore[misc]
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        if proc.poll() is None:
            proc.kill()
        failed = proc.wait() not in (0, -9)
        feeder.join()
        if failed:
            raise SetupError(f"zstd could not decompress a layer of the image (exit {proc.returncode})")


def scan_image_tar(tar: Path) -> ImageEnv:
    """Read the image's Python from its layers (headers only, but for dpkg's status file)."""
    dists: dict[str, dict[str, str]] = {}  # site-packages dir -> {dist-info dir name: python version}
    names: dict[str, str] = {}  # dist-info dir -> the Name its METADATA gives
    dpkg_status: Optional[bytes] = None
    patchlevels: dict[str, str] = {}  # "usr/local/3.11" -> "3.11.7", from a source-built Python's headers
    machine = "x86_64"
    try:
        with tarfile.open(tar, "r:") as outer:
            layers, config = layer_paths(outer)
            if config:
                arch = json.loads(outer.extractfile(config).read()).get("architecture", "amd64")  # type: ignore
                machine = ARCHES.get(arch, arch)
            for layer in layers:
                raw = outer.extractfile(layer)
                if raw is None:
                    raise SetupError(f"{tar}: layer {layer} is not a file in the tar")
                with _layer_stream(io.BufferedReader(raw)) as stream, tarfile.open(fileobj=stream, mode="r|") as inner:
                    for member in inner:
                        name = member.name.lstrip("./")
                        base = posixpath.basename(name)
                        if base.startswith(".wh."):  # a whiteout: this layer deletes what an earlier one had
                            # (".wh..wh..opq": everything the directory held before this layer)
                            gone = posixpath.dirname(name) if base == ".wh..wh..opq" else \
                                posixpath.join(posixpath.dirname(name), base[4:])
                            for site in dists.values():
                                for dist in [d for d in site if f"{gone}/".startswith(d + "/")
                                             or d.startswith(gone + "/")]:
                                    site.pop(dist)
                            continue
                        header = _PATCHLEVEL.match(name)
                        if header and member.isfile():
                            found_version = _PY_VERSION.search(inner.extractfile(member).read())  # type: ignore
                            if found_version:
                                patchlevels[header["root"] + header["py"]] = found_version.group(1).decode()
                        if name == "var/lib/dpkg/status" and member.isfile():
                            dpkg_status = inner.extractfile(member).read()  # type: ignore[union-attr]
                        match = _SITE.match(name)
                        if match:
                            dist_dir = f"{match['site']}/{match['dist']}.dist-info"
                            dists.setdefault(match["site"], {})[dist_dir] = match["py"]
                            if name == f"{dist_dir}/METADATA" and member.isfile():
                                head = inner.extractfile(member).read(4096).decode("utf-8", "replace")  # type: ignore
                                found = re.search(r"^Name: *(\S+)", head, re.MULTILINE)
                                if found:
                                    names[dist_dir] = found.group(1)
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        raise SetupError(f"{tar}: cannot read the image's Python from this docker save tar ({exc})") from exc
    site = next((s for s, found in dists.items() if any(posixpath.basename(d).startswith("xinference-")
                                                         for d in found)), None)
    if site is None:
        raise SetupError(f"{tar}: no site-packages in this image holds xinference (no xinference-*.dist-info); "
                         "is it an Xinference image?")
    installed = {}
    for dist_dir in dists[site]:
        name, _, version = posixpath.basename(dist_dir)[: -len(".dist-info")].rpartition("-")
        installed[names.get(dist_dir, name)] = version
    glibc = None
    status = dpkg_status.decode("utf-8", "replace") if dpkg_status else ""
    libc = _LIBC6.search(status)
    glibc = f"{libc.group(1)}.{libc.group(2)}" if libc else None
    python = dists[site][next(iter(dists[site]))]
    debian = installed_debian_packages(status)
    return ImageEnv(python_version=python, machine=machine, glibc=glibc, installed=dict(sorted(installed.items())),
                    debian_packages=debian, python_full_version=python_full_version(python, debian, patchlevels))


def python_full_version(python: str, debian: list[list[str]], patchlevels: dict[str, str]) -> Optional[str]:
    """The image's X.Y.Z of Python X.Y: a source-built one's headers under /usr/local (python:3.x
    images), else dpkg's record of the Debian/Ubuntu package (deadsnakes' too: ``3.12.3-1+jammy1``),
    else the headers under /usr; None when the tar says nothing."""
    if f"usr/local/{python}" in patchlevels:
        return patchlevels[f"usr/local/{python}"]
    versions = {name: version for name, version, _arch in debian}
    for package in (f"python{python}-minimal", f"libpython{python}-minimal", f"python{python}"):
        found = re.match(rf"(?:\d+:)?({re.escape(python)}\.\d+)", versions.get(package, ""))
        if found:
            return found.group(1)
    return patchlevels.get(f"usr/{python}")


def installed_debian_packages(status: str) -> list[list[str]]:
    """[name, version, architecture] of each stanza of a dpkg status file whose Status says installed."""
    packages = []
    for stanza in status.split("\n\n"):
        fields = dict(_DPKG_FIELD.findall(stanza))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages.append([fields["Package"], fields.get("Version", ""), fields.get("Architecture", "")])
    return sorted(packages)


def image_env(tar: Path, cache_dir: Path) -> ImageEnv:
    """scan_image_tar, remembered per tar (size, mtime, inode) in cache_dir/image-env.json."""
    stat = tar.stat()
    key = f"{tar.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{SCAN_VERSION}"
    cache_file = cache_dir / "image-env.json"
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict):
        try:
            return ImageEnv(**cached[key])
        except TypeError:
            pass
    env = scan_image_tar(tar)
    cached = {k: v for k, v in (cached.items() if isinstance(cached, dict) else []) if os.path.exists(k.split("|")[0])}
    cached[key] = asdict(env)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_file, (json.dumps(cached, indent=1, sort_keys=True) + "\n").encode())
    return env
