"""Docker host addresses: is the engine on this machine, reached over ssh, or elsewhere.

One home for the question, asked by the schema, the launch specs, the site checks and the
components. Standard library only.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlparse

LOCAL_DOCKER = "unix:///var/run/docker.sock"  # this machine's engine
SCHEMES = ("unix", "ssh", "tcp", "npipe")


def is_local_docker(address: str) -> bool:
    """A ``unix://`` socket is an engine on this machine: its host paths are this machine's."""
    return address.startswith("unix://")


def is_ssh_docker(address: str) -> bool:
    """An ``ssh://`` engine: its files are copied there over ssh, not read here."""
    return address.startswith("ssh://")


def remote_docker_hostname(address: str) -> Optional[str]:
    """The machine an ``ssh://`` or ``tcp://`` docker host names (lower case); None for a local socket."""
    parsed = urlparse(address)
    return parsed.hostname if parsed.scheme in ("ssh", "tcp") and parsed.hostname else None
