"""`container.network: airgap`: the Xinference container with no network but loopback, and a
gateway container that carries the API across on a unix socket (pure parts: no Pulumi here).

Why not a docker network with ``internal: true``: on Docker engines before 25.0 (Debian 12's
docker.io 20.10, checked here) a container on an internal network still gets a default route,
and reaches every address of its host (the network's bridge address and the host's own, checked);
only forwarding is dropped, by iptables rules a daemon run with ``--iptables=false`` never
writes. ``network_mode: none`` gives the container a loopback interface and nothing else, on every
engine: no route, so a connect to any other address fails at once with ENETUNREACH.

How the host still reaches the API (a published port needs an interface to forward to):

    host bind_address:port --docker-proxy--> gateway container (ordinary bridge, 0.0.0.0:9997)
        --unix socket in a shared volume--> relay inside the Xinference container
        --tcp 127.0.0.1:9997--> xinference-local

Both ends run RELAY_SOURCE, a stdlib-only TCP/unix forwarder, with the image's own python3, so
nothing but the Xinference image crosses the gap and nothing is pulled. The same works on an
ssh:// docker host: the volume, the socket and the published port are all on that host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from stackspec.xinference import CONTAINER_PORT

NETWORKS = ("bridge", "airgap")
SOCKET_DIR = "/run/xinference-offline"  # the shared volume, in both containers
API_SOCKET = f"{SOCKET_DIR}/api.sock"

# Run as `python3 -c RELAY_SOURCE LISTEN TARGET [-- PROGRAM ARGS...]`, LISTEN and TARGET each
# `tcp:HOST:PORT` or `unix:PATH`. Every connection to LISTEN is piped both ways to a new
# connection to TARGET (half-closes passed on). With a PROGRAM, the relay forks off and the
# process execs PROGRAM, which stays PID 1 and gets the container's signals.
# The text is the containers' command: a changed byte replaces every airgap stack's containers on
# its next `up` (tests/test_airgap.py pins its digest). Never imported: it would run.
RELAY_FILE = Path(__file__).with_name("airgap_relay.py")
RELAY_SOURCE = RELAY_FILE.read_text(encoding="utf-8")


def relay_command(listen: str, target: str, program: Sequence[str] = ()) -> list[str]:
    """The relay as a container command (``program`` run beside it, as the main process)."""
    return ["python3", "-c", RELAY_SOURCE, listen, target, *(["--", *program] if program else [])]


@dataclass(frozen=True)
class ServerNetwork:
    """How the Xinference container is wired for a stack's ``container.network``."""

    network_mode: Optional[str]  # None: docker's default bridge
    publishes_port: bool  # the container itself publishes container.port
    command: list[str]
    gateway_command: Optional[list[str]] = None  # airgap: the gateway container's process
    socket_dir: Optional[str] = None  # airgap: where both mount the shared volume


def server_network(network: str, command: Sequence[str]) -> ServerNetwork:
    """``command`` (the Xinference process) wired for ``network`` (bridge or airgap)."""
    if network == "bridge":
        return ServerNetwork(network_mode=None, publishes_port=True, command=list(command))
    if network != "airgap":
        raise ValueError(f"container.network must be one of {NETWORKS}, not {network!r}")
    return ServerNetwork(
        network_mode="none",
        publishes_port=False,
        command=relay_command(f"unix:{API_SOCKET}", f"tcp:127.0.0.1:{CONTAINER_PORT}", command),
        gateway_command=relay_command(f"tcp:0.0.0.0:{CONTAINER_PORT}", f"unix:{API_SOCKET}"),
        socket_dir=SOCKET_DIR,
    )


def gateway_container_name(container_name: str) -> str:
    """The gateway's container name, next to the server's (the preflight checks it is free too)."""
    return f"{container_name}-gateway"
