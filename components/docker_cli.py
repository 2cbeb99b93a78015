"""The docker CLI, run against one engine: what the preflight and the model provider ask it.

No shell here: every value is one argv element. A local or tcp:// engine is asked with
``DOCKER_HOST``; an ssh:// one with ``ssh <the stack's ssh options> host docker ...`` (each word
quoted for the remote shell), because the docker CLI's own ssh helper passes ssh no options:
so the key, known_hosts and host-key policy are the ones the docker provider and the file
copy use (stackspec/ssh.py).
"""

from __future__ import annotations

import io
import os
import shlex
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


def docker_argv(docker_host: str, args: Sequence[str], ssh_argv: Optional[Sequence[str]] = None
                ) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of one docker CLI call: through ``ssh_argv`` (SshTarget.argv(), the host's ssh
    command up to the host name) for an ssh:// engine, else with DOCKER_HOST."""
    if ssh_argv:
        return [*ssh_argv, "docker", *map(shlex.quote, args)], dict(os.environ)
    return ["docker", *args], {**os.environ, "DOCKER_HOST": docker_host}


def run_docker_bytes(docker_host: str, args: Sequence[str], stdin: Optional[bytes] = None,
                     ssh_argv: Optional[Sequence[str]] = None) -> subprocess.CompletedProcess:
    """Run the docker CLI against ``docker_host`` (its own DOCKER_HOST, or over ``ssh_argv``); stdout as
    bytes (a `docker cp` tar stream)."""
    argv, env = docker_argv(docker_host, args, ssh_argv)
    try:
        return subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise DockerHostUnreachable(f"`{argv[0]}` is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise DockerHostUnreachable(f"`docker {' '.join(args[:2])}` did not answer within {TIMEOUT_S} s") from None


def run_docker(docker_host: str, args: Sequence[str], stdin: Optional[bytes] = None,
               ssh_argv: Optional[Sequence[str]] = None) -> DockerAnswer:
    """Run the docker CLI against ``docker_host`` (its own DOCKER_HOST, or over ``ssh_argv``)."""
    done = run_docker_bytes(docker_host, args, stdin, ssh_argv)
    return DockerAnswer(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def _container_field(docker_host: str, container_id: str, template: str,
                     ssh_argv: Optional[Sequence[str]] = None) -> tuple[Optional[bool], str]:
    """(True, the field) when the container exists, (False, "") when the engine says it does not,
    (None, "") when the engine cannot be asked."""
    try:
        answer = run_docker(docker_host, ["container", "inspect", "--format", template, container_id],
                            ssh_argv=ssh_argv)
    except DockerHostUnreachable:
        return None, ""
    if answer.returncode == 0:
        return True, answer.stdout.strip()
    if "no such" in answer.stderr.lower():  # "Error: No such container: <id>" (or "object")
        return False, ""
    return None, ""


def container_exists(docker_host: str, container_id: str, ssh_argv: Optional[Sequence[str]] = None
                     ) -> Optional[bool]:
    """True / False when the engine answers whether the container exists; None when it cannot be asked."""
    return _container_field(docker_host, container_id, "{{.Id}}", ssh_argv)[0]


def container_state(docker_host: str, container_id: str, ssh_argv: Optional[Sequence[str]] = None
                    ) -> Optional[str]:
    """"running"; "stopped" when it exists and does not run (created, stopped, exited, dead: its models
    are gone with its processes, its files are not); "gone" when the engine says there is no such
    container; None when the engine cannot be asked."""
    exists, running = _container_field(docker_host, container_id, "{{.State.Running}}", ssh_argv)
    if exists is None:
        return None
    return ("running" if running == "true" else "stopped") if exists else "gone"


def container_running(docker_host: str, container_id: str, ssh_argv: Optional[Sequence[str]] = None
                      ) -> Optional[bool]:
    """True when the container runs; False when the engine says it is gone or not running; None when it
    cannot be asked."""
    state = container_state(docker_host, container_id, ssh_argv)
    return None if state is None else state == "running"


def engine_image_id(docker_host: str, image_name: str, ssh_argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """The id the engine holds under ``image_name``; None when it has no such image."""
    answer = run_docker(docker_host, ["image", "inspect", "--format", "{{.Id}}", image_name], ssh_argv=ssh_argv)
    if answer.returncode == 0:
        return answer.stdout.strip() or None
    if "no such" in answer.stderr.lower():
        return None
    raise DockerHostUnreachable(f"docker host {docker_host} does not answer: {answer.stderr.strip()}")


def needs_load(have_id: Optional[str], image_id: Optional[str]) -> bool:
    """Must the tar be loaded? Yes when the engine lacks the name, or holds another id under it
    than the one the bundle names."""
    return have_id is None or bool(image_id and have_id != image_id)


def empty_image_tar() -> bytes:
    """A tar with no files: `docker import` of it is an image that holds nothing to run."""
    buffer = io.BytesIO()
    tarfile.open(fileobj=buffer, mode="w").close()
    return buffer.getvalue()
