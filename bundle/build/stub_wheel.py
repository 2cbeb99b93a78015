"""A metadata-only wheel standing in for a distribution the image already has.

The model's virtualenv resolves every dependency from the carried folder (uv does not see the
image's site-packages), then xoscar installs only what the image lacks: a dependency the image has
at the resolved version is never installed. Its real wheel would be carried only for its metadata,
and for torch that is torch's and its CUDA libraries' 3+ GB. This wheel holds that metadata (name,
version, Requires-Dist, Requires-Python, from pip's resolution report) and no code. Installed all
the same (xoscar compares names un-normalised, so `typing-extensions` misses `typing_extensions`),
it adds a dist-info and nothing to import: the import still finds the image's package, next in the
virtualenv's path.

Its file name carries the build tag ``0image`` so it is never mistaken for the real wheel.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Iterable, Optional

from packaging.version import Version

BUILD_TAG = "0image"
GENERATOR = "xinference-offline bundle (metadata-only stand-in for a distribution in the image)"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the same bytes on every build: the cache and the manifest stay stable


def _escaped(name: str, version: str) -> tuple[str, str]:
    """Name and version as a wheel's file name and dist-info folder spell them (the binary
    distribution format: runs of -_. become _, lower case; the version normalized)."""
    return re.sub(r"[-_.]+", "_", name).lower(), str(Version(version)).replace("-", "_")


def stub_filename(name: str, version: str) -> str:
    escaped_name, escaped_version = _escaped(name, version)
    return f"{escaped_name}-{escaped_version}-{BUILD_TAG}-py3-none-any.whl"


def is_stub_filename(filename: str) -> bool:
    return filename.endswith(f"-{BUILD_TAG}-py3-none-any.whl")


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def stub_wheel_bytes(name: str, version: str, requires_dist: Iterable[str] = (),
                     requires_python: Optional[str] = None) -> bytes:
    """The whole wheel, deterministic for its inputs."""
    dist_info = "{}-{}.dist-info".format(*_escaped(name, version))
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                "Summary: metadata-only stand-in: the Xinference image has this distribution installed"]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {req}" for req in requires_dist]
    files = {f"{dist_info}/METADATA": ("\n".join(metadata) + "\n").encode(),
             f"{dist_info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: {GENERATOR}\nRoot-Is-Purelib: true\n"
                                    f"Build: {BUILD_TAG}\nTag: py3-none-any\n").encode()}
    record = [_record_line(path, data) for path, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, _FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return out.getvalue()


def write_stub_wheel(directory: Path, name: str, version: str, requires_dist: Iterable[str] = (),
                     requires_python: Optional[str] = None) -> str:
    """Write the stand-in into ``directory``; its file name."""
    filename = stub_filename(name, version)
    (directory / filename).write_bytes(stub_wheel_bytes(name, version, requires_dist, requires_python))
    return filename
