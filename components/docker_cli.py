"""The docker CLI, run against one engine: what the preflight and the model provider ask it.

No shell: every value is one argv element. The CLI reaches `ssh://` hosts itself.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Optional, Sequence

TIMEOUT_S = 60


@dataclass(frozen=True)
class DockerAnswer:
    """What one docker CLI call gave."""

    returncode: int
    stdout: str
    stderr: str


class DockerHostUnreachable(Exception):
    """The docker CLI is missing or the engine does not answer."""


def run_docker(docker_host: str, args: Sequence[str], stdin: Optional[bytes] = None) -> DockerAnswer:
    """Run the docker CLI against ``docker_host`` (its own DOCKER_HOST, nothing else changed)."""
    env = {**os.environ, "DOCKER_HOST": docker_host}
    try:
        done = subprocess.run(["docker", *args], input=stdin, env=env, capture_output=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise DockerHostUnreachable("the docker CLI is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise DockerHostUnreachable(f"`docker {' '.join(args[:2])}` did not answer within {TIMEOUT_S} s") from None
    return DockerAnswer(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def container_exists(docker_host: str, container_id: str) -> Optional[bool]:
    """True / False when the engine answers whether the container exists; None when it cannot be asked."""
    try:
        answer = run_docker(docker_host, ["container", "inspect", "--format", "{{.Id}}", container_id])
    except DockerHostUnreachable:
        return None
    if answer.returncode == 0:
        return True
    if "no such" in answer.stderr.lower():  # "Error: No such container: <id>" (or "object")
        return False
    return None


def empty_image_tar() -> bytes:
    """A tar with no files: `docker import` of it is an image that holds nothing to run."""
    buffer = io.BytesIO()
    tarfile.open(fileobj=buffer, mode="w").close()
    return buffer.getvalue()
