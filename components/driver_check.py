"""Preflight of a GPU docker host's NVIDIA driver against the CUDA the image needs.

The official slim Xinference image is built on a CUDA 13.0 base: its env says
``NVIDIA_REQUIRE_CUDA=cuda>=13.0``. A host whose driver supports an older CUDA starts the container
only to fail at the first model launch (or the NVIDIA runtime refuses it at start, after the old
container is gone). So before anything changes, where the image says which CUDA it needs (read
from its tar's config: bundle/format/image_tar.py required_cuda), the host's driver is asked through
``nvidia-smi`` on the docker host (here, or over the stack's ssh) and a driver too old is refused,
naming both versions and the fix. A host without ``nvidia-smi`` is left to the GPU runtime check.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from bundle.format.errors import SetupError
from bundle.format.image_tar import image_config, required_cuda

TIMEOUT_S = 60
_DRIVER_CUDA = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")
_DRIVER_VERSION = re.compile(r"Driver Version:\s*([0-9.]+)")


def driver_cuda(nvidia_smi_output: str) -> Optional[str]:
    """The CUDA version the driver supports, from `nvidia-smi`'s header ("CUDA Version: 12.4")."""
    found = _DRIVER_CUDA.search(nvidia_smi_output)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def _tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def driver_too_old_message(docker_host: str, image: str, needed: str, driver: str, smi_output: str) -> str:
    found = _DRIVER_VERSION.search(smi_output)
    version = f" (driver {found.group(1)})" if found else ""
    return (f"docker host {docker_host}: image {image} needs CUDA >= {needed}, but the NVIDIA driver there supports "
            f"CUDA {driver}{version} (nvidia-smi); its models would fail at launch. Nothing was changed. Fix: upgrade "
            f"that host's NVIDIA driver to one for CUDA {needed} or newer (`nvidia-smi` then shows 'CUDA Version: "
            f"{needed}' or higher), or deploy an image built for CUDA {driver} or older.")


def host_nvidia_smi(ssh_argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """`nvidia-smi`'s output on the docker host (here, or through ``ssh_argv``); None when it is not there."""
    argv = [*ssh_argv, "nvidia-smi"] if ssh_argv else ["nvidia-smi"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def driver_problem(docker_host: str, image: str, image_tar: Optional[str],
                   ssh_argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """None when the host's driver is new enough for the image (or either does not say); else the message."""
    if not image_tar or not Path(image_tar).exists():  # the tar, or the bundle's directory of its members
        return None
    try:
        needed = required_cuda(image_config(Path(image_tar)))
    except SetupError as exc:  # a damaged or foreign image file: a problem before anything changes, not a traceback
        return f"docker host {docker_host}: image {image}: {exc}"
    if needed is None:
        return None
    output = host_nvidia_smi(ssh_argv)
    driver = driver_cuda(output or "")
    if driver is None or _tuple(driver) >= _tuple(needed):
        return None
    return driver_too_old_message(docker_host, image, needed, driver, output or "")
