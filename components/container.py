"""XinferenceContainer: the GPU-reserved Xinference container (the compose service of the old job).

With ``container.network: airgap`` it has no network but loopback, and two more children carry
its API to the host (stackspec/airgap.py says why and how): a volume holding the relay's unix socket,
and a gateway container from the same image that publishes the port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_docker as docker

from stackspec.airgap import gateway_container_name, server_network
from stackspec.config import ContainerConfig
from stackspec.launch import container_command, healthcheck_command
from stackspec.placement import docker_device_requests
from stackspec.xinference import CONTAINER_MODELS_DIR, CONTAINER_PORT


@dataclass
class XinferenceContainerArgs:
    """Inputs of XinferenceContainer."""

    image_id: pulumi.Input[str]
    """Image id from LoadedImage: a new image replaces the container."""
    settings: ContainerConfig
    """Port, restart policy, healthcheck, logs, labels (from the stack config)."""
    host_gpus: Sequence[int]
    """Host GPU ids reserved for the container (exactly these; none = CPU)."""
    models_dir: str
    """Host model directory, mounted at /root/.xinference/models."""
    env: Mapping[str, str]
    """Environment (offline defaults merged with the stack's overrides)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels added to the stack's own."""
    command: Sequence[str] = field(default_factory=container_command)
    """Xinference process: xinference-local (default), or supervisor / worker in a cluster."""
    healthcheck: Sequence[str] = field(default_factory=healthcheck_command)
    """Healthcheck test (Python one-liner; the image need not have curl)."""
    host_network: bool = False
    """Cluster containers share the host's network (model processes listen on random ports)."""
    container_name: Optional[str] = None
    """Docker container name (default: settings.name)."""


def published_ip(address: str) -> Optional[str]:
    """The port's host address; None for all addresses (the plugin's default, so no diff)."""
    return None if address == "0.0.0.0" else address


def go_duration(seconds: int) -> str:
    """Seconds as Go's time.Duration prints them ("5s", "2m0s", "1h0m0s"): the form the docker
    plugin reads back from the engine, so a second `up` sees no difference ("300s" != "5m0s")."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _published_port(s: ContainerConfig) -> list[docker.ContainerPortArgs]:
    return [docker.ContainerPortArgs(internal=CONTAINER_PORT, external=s.port, ip=published_ip(str(s.bind_address)))]


def _healthcheck(test: Sequence[str], s: ContainerConfig) -> docker.ContainerHealthcheckArgs:
    hc = s.healthcheck
    return docker.ContainerHealthcheckArgs(tests=list(test), interval=go_duration(hc.interval_s),
                                           timeout=go_duration(hc.timeout_s), retries=hc.retries,
                                           start_period=go_duration(hc.start_period_s))


def _log_opts(s: ContainerConfig) -> dict[str, str]:
    return {"max-size": s.log_max_size, "max-file": str(s.log_max_file)}


def _label_args(labels: Mapping[str, str]) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(labels.items())]


class XinferenceContainer(pulumi.ComponentResource):
    """One Xinference server in Docker, healthy before `up` moves on to the models."""

    container_id: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(self, name: str, args: XinferenceContainerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:XinferenceContainer", name, None, opts)
        s = args.settings
        mounts = [docker.ContainerMountArgs(
            type="bind", source=args.models_dir, target=CONTAINER_MODELS_DIR, read_only=s.models_read_only)]
        if s.data_dir:
            # XINFERENCE_HOME on the host keeps the autostart registry and auth db across replacements.
            mounts.insert(0, docker.ContainerMountArgs(type="bind", source=s.data_dir, target="/root/.xinference"))
        labels = {"managed-by": "xinference-offline", **args.labels, **s.labels}
        wiring = server_network("bridge" if args.host_network else s.network, args.command)
        container_name = args.container_name or s.name
        socket_volume = None
        if wiring.socket_dir:
            # Named after the container, on its docker host (local or ssh://), removed by destroy.
            socket_volume = docker.Volume(f"{name}-api", name=f"{container_name}-api",
                                          labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in
                                                  sorted({**labels, "xinference-offline/role": "api-socket"}.items())],
                                          opts=pulumi.ResourceOptions(parent=self))
            mounts.append(docker.ContainerMountArgs(type="volume", source=socket_volume.name,
                                                    target=wiring.socket_dir))
        self.container = docker.Container(
            f"{name}-container",
            name=container_name,
            image=args.image_id,
            command=wiring.command,
            envs=[f"{k}={v}" for k, v in sorted(args.env.items())],
            # Exact host GPU ids as a device request (the `gpus` string cannot name two: see placement).
            device_requests=[docker.ContainerDeviceRequestArgs(**request)
                             for request in docker_device_requests(args.host_gpus)] or None,
            network_mode="host" if args.host_network else wiring.network_mode,
            ports=_published_port(s) if wiring.publishes_port and not args.host_network else None,
            mounts=mounts,
            restart=s.restart,
            shm_size=s.shm_size_mb,
            healthcheck=_healthcheck(args.healthcheck, s),
            wait=True,
            wait_timeout=s.wait_timeout_s,
            log_driver="json-file",
            log_opts=_log_opts(s),
            labels=_label_args(labels),
            # A new image, GPU set or port replaces the container; the old one must go first, or
            # the new one clashes with it on the container name and the host port.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.gateway: Optional[docker.Container] = None
        if wiring.gateway_command and socket_volume is not None:
            # Started once the server is healthy, and healthy itself only when /status answers
            # through it, so the models (which wait for this component) see a working endpoint.
            self.gateway = docker.Container(
                f"{name}-gateway",
                name=gateway_container_name(container_name),
                image=args.image_id,
                command=wiring.gateway_command,
                ports=_published_port(s),
                mounts=[docker.ContainerMountArgs(type="volume", source=socket_volume.name,
                                                  target=wiring.socket_dir)],
                restart=s.restart,
                healthcheck=_healthcheck(healthcheck_command(), s),
                wait=True,
                wait_timeout=s.wait_timeout_s,
                log_driver="json-file",
                log_opts=_log_opts(s),
                labels=_label_args({**labels, "xinference-offline/role": "gateway"}),
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=[self.container]),
            )
        # The models depend on this component, so on every child: with airgap they wait for the gateway.
        self.container_id = self.container.id
        self.name = self.container.name
        self.register_outputs({"container_id": self.container_id, "name": self.name})
