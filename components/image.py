"""LoadedImage: `docker load` of the bundled image tar, then the image as a Pulumi resource.

pulumi-docker has no "load" resource, so the load is a `command.local.Command` whose
trigger is the tar's sha256: a new tar reloads (and, through the image id, replaces the
container); an unchanged one does nothing. `docker.RemoteImage` then finds the loaded image
locally (never pulls: the server is offline) and keeps it on destroy.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_command as command
import pulumi_docker as docker


@dataclass
class LoadedImageArgs:
    """Inputs of LoadedImage."""

    image_name: str
    """Image reference as stored in the tar (e.g. xprobe/xinference:v1.12.0)."""
    tar_path: Optional[str]
    """The `docker save` tar on the machine running Pulumi; None when the image is already loaded."""
    tar_digest: str
    """sha256 of the tar (from the bundle manifest); a change reloads the image."""
    docker_host: str
    """Docker engine address (unix:// socket or ssh://user@host)."""


def load_script(image_name: str, tar_path: str, tar_sha256: str = "") -> str:
    """The shell the load runs: refuse a missing tar, a tar whose sha256 is not the manifest's,
    or one that lacks the image, before the engine is asked to change anything.

    Every value from the config reaches the shell through ``shlex.quote`` only, messages
    included: a path holding ``$(...)`` stays text.
    """
    tar, name = shlex.quote(tar_path), shlex.quote(image_name)

    def fail(message: str) -> str:
        return f"{{ echo {shlex.quote(message)} >&2; exit 1; }}"

    lines = [
        "set -eu",
        f"[ -f {tar} ] || " + fail(f"image tar {tar_path} not found; unpack and verify the bundle first"),
    ]
    if re.fullmatch(r"[0-9a-f]{64}", tar_sha256):
        # A tar damaged since `bundle verify` is refused here, before `docker load` reads it.
        lines.append(f"actual=$(sha256sum {tar} | cut -d' ' -f1)")
        lines.append(f'[ "$actual" = {tar_sha256} ] || ' + fail(
            f"image tar {tar_path} is damaged: its sha256 is not the manifest's {tar_sha256}; "
            "unpack the bundle again and run `python3 -m bundle verify`"))
    lines.append(f"docker load -i {tar}")
    lines.append(f"docker image inspect {name} >/dev/null 2>&1 || "
                 + fail(f"{tar_path} does not contain image {image_name}; check image.name"))
    return "\n".join(lines) + "\n"


class LoadedImage(pulumi.ComponentResource):
    """The Xinference image, loaded from the offline bundle onto the Docker host."""

    image_id: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(self, name: str, args: LoadedImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:LoadedImage", name, None, opts)
        depends = []
        if args.tar_path:
            load = command.local.Command(
                f"{name}-load",
                create=load_script(args.image_name, args.tar_path, args.tar_digest),
                environment={"DOCKER_HOST": args.docker_host},
                triggers=[args.tar_digest],
                opts=pulumi.ResourceOptions(parent=self),
            )
            depends.append(load)
        image = docker.RemoteImage(
            f"{name}-image",
            name=args.image_name,
            keep_locally=True,
            triggers={"tar_sha256": args.tar_digest},
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
        )
        self.image_id = image.image_id
        self.name = image.name
        self.register_outputs({"image_id": self.image_id, "name": self.name})
