"""LoadedImage: `docker load` of the bundled image tar, then the image as a Pulumi resource.

pulumi-docker has no "load" resource, so the load is a `command.local.Command` whose
trigger is the tar's sha256: a new tar reloads (and, through the image id, replaces the
container); an unchanged one does nothing. An EngineImage (components/engine_image.py) then
holds the image as the engine has it: refresh asks the engine, an image removed by hand is
loaded again from the tar by the next `up`, nothing ever pulls (docker.RemoteImage would), and
destroy keeps the image.

When the engine already holds the image id the manifest names, nothing is loaded: `docker
load` would first unpack the whole tar (5 GB for the CPU image) into the engine's temp dir,
needing that much free disk again and minutes, for layers it has. For an ssh:// engine the
tar, which lives on the operator machine, is streamed into `ssh HOST docker load` (no temp
copy on either side), with the stack's one ssh configuration (stackspec/ssh.py); one that has the
id is sent nothing and the tar is not even hashed. A dropped connection fails the load before the container
is touched (the running one keeps serving), and the next `up` loads again.

A bundle that keeps the image as the members of its tar (``image_dir``, bundle/format/image_dir.py)
is loaded the same way, its members streamed as one tar into `docker load` (here, or over ssh):
each member hashed on the way and the stream cut inside the first damaged one, before the
manifest.json `docker load` needs, so a damaged layer loads nothing and the container is not touched.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_command as command

from bundle.format import image_dir
from bundle.format.manifest import StackManifest
from bundle.format.manifest_check import IMAGE_ID_RE
from bundle.format.manifest_rules import SHA256_RE
from components.engine_image import EngineImage, EngineImageArgs
from stackspec.config import StackConfig
from stackspec.ssh import SshTarget


@dataclass(frozen=True)
class BundleImage:
    """An image the unpacked bundle keeps as the members of its `docker save` tar."""

    bundle_dir: str
    image_dir: str
    """Its bundle directory, images/NAME."""
    digest: str
    """The digest of its members (bundle/format/image_dir.py members_digest), as planned."""

    @property
    def path(self) -> str:
        return os.path.join(self.bundle_dir, self.image_dir)


def bundle_image(cfg: StackConfig, manifest: Optional[StackManifest]) -> Optional[BundleImage]:
    """The image the stack's bundle keeps as its members; None for a tar (or no bundle)."""
    if manifest is None or not cfg.bundle_dir or not manifest.entry.image_dir:
        return None
    return BundleImage(cfg.bundle_dir, manifest.entry.image_dir, manifest.image_sha256() or "")


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
    ssh: Optional[SshTarget] = None
    """For an ssh:// engine: how to reach it (the tar is streamed over ssh)."""
    image_id: Optional[str] = None
    """The id the tar loads as (from the manifest): an engine that has it needs no transfer."""
    members: Optional[BundleImage] = None
    """The image as the bundle's files, when it keeps it so (then tar_path is None)."""


def _fail(message: str) -> str:
    return f"{{ echo {shlex.quote(message)} >&2; exit 1; }}"


def tar_checks(tar_path: str, tar_sha256: str = "") -> list[str]:
    """Shell lines refusing a missing tar, or one whose sha256 is not the manifest's, before any engine
    is asked to change anything."""
    tar = shlex.quote(tar_path)
    lines = [f"[ -f {tar} ] || " + _fail(f"image tar {tar_path} not found; unpack and verify the bundle first")]
    if SHA256_RE.fullmatch(tar_sha256):
        # A tar damaged since `bundle verify` is refused here, before `docker load` reads it.
        # From stdin: with a newline or backslash in the name, GNU sha256sum prefixes its line with `\`.
        lines.append(f"actual=$(sha256sum < {tar} | cut -d' ' -f1)")
        lines.append(f'[ "$actual" = {tar_sha256} ] || ' + _fail(
            f"image tar {tar_path} is damaged: its sha256 is not the manifest's {tar_sha256}; "
            "unpack the bundle again and run `python3 -m bundle verify`"))
    return lines


def _known(image_id: Optional[str]) -> bool:
    return bool(image_id and IMAGE_ID_RE.fullmatch(image_id))


def _skip_when_present(inspect_id: str, image_name: str, image_id: str, where: str) -> list[str]:
    """Shell lines ending the load at once when the engine already holds ``image_id``: the id is the
    sha256 of the image's config, so it names exactly the manifest's image. (`docker load` would
    unpack the whole multi-GB tar into the engine's temp dir first, whatever it already has.)"""
    return [f"have=$({inspect_id} || true)",
            f'if [ "$have" = {shlex.quote(image_id)} ]; then echo '
            + shlex.quote(f"image {image_name} ({image_id}) is already on {where}: nothing to load")
            + "; exit 0; fi"]


def _loaded_check(inspect_id: str, inspect: str, image_name: str, image_id: Optional[str], tar_path: str,
                  where: str, index_json: str = "") -> str:
    """The shell line after `docker load`: with the manifest's id, the engine must now report that id
    for the name; without one, the name must at least be there. ``index_json``: the shell that prints
    the image's index.json (default: read from the tar)."""
    if _known(image_id):
        # An engine with the containerd image store (Docker 29's default) reports the digest of the
        # image's manifest (index.json's descriptor in the tar it saved), not its config's: either is
        # the tar's image. The tar is read for it only when the config id did not match.
        index_json = index_json or f"tar -xOf {shlex.quote(tar_path)} index.json"
        oci_id = (f"{index_json} 2>/dev/null | grep -o '\"digest\": *\"sha256:[0-9a-f]*\"' "
                  "| head -n 1 | grep -o 'sha256:[0-9a-f]*'")
        return f'have=$({inspect_id} || true)\n[ "$have" = {shlex.quote(image_id or "")} ] || ' \
               f'{{ [ -n "$have" ] && [ "$have" = "$({oci_id} || true)" ]; }} || ' + _fail(
            f"after loading {tar_path}, image {image_name} on {where} is not {image_id}, the id the manifest names: "
            "the tar is damaged or holds another image; unpack the bundle again and run `python3 -m bundle verify`")
    return f"{inspect} >/dev/null 2>&1 || " + _fail(f"{tar_path} does not contain image {image_name}; check image.name")


def load_script(image_name: str, tar_path: str, tar_sha256: str = "", image_id: Optional[str] = None,
                where: str = "this engine") -> str:
    """The shell the load runs: nothing when the engine already holds the manifest's ``image_id``;
    else refuse a missing tar, a tar whose sha256 is not the manifest's, or one that lacks the
    image (or loads as another id), before the engine is asked to change anything.

    Every value from the config reaches the shell through ``shlex.quote`` only, messages
    included: a path holding ``$(...)`` stays text.
    """
    tar, name = shlex.quote(tar_path), shlex.quote(image_name)
    inspect_id = f"docker image inspect --format '{{{{.Id}}}}' {name} 2>/dev/null"
    lines = ["set -eu"]
    if _known(image_id):
        lines += _skip_when_present(inspect_id, image_name, image_id or "", where)
    lines += [*tar_checks(tar_path, tar_sha256), f"docker load -i {tar}",
              _loaded_check(inspect_id, f"docker image inspect {name}", image_name, image_id, tar_path, where)]
    return "\n".join(lines) + "\n"


def remote_load_script(image_name: str, tar_path: str, tar_sha256: str, image_id: Optional[str],
                       ssh: SshTarget) -> str:
    """The load onto an ssh:// engine, run here. With the manifest's ``image_id``: nothing is sent
    when the engine has it; else the tar is streamed into `docker load` there at once, and the
    image id the engine then reports must be that id. (The id is the sha256 of the image's
    config, and `docker load` checks every layer against the config's diff ids, so a damaged tar
    cannot pass; hashing all of the tar first would cost a third more time than the transfer.)
    Without an id, the tar's sha256 is checked before it is sent, as load_script does.

    Every value is quoted twice over: once for the remote shell (SshTarget.argv), once for this
    one (shlex.join)."""
    def remote(*words: str) -> str:
        return shlex.join(ssh.argv(*words))

    tar, where = shlex.quote(tar_path), ssh.describe()
    inspect_id = f"{remote('docker', 'image', 'inspect', '--format', '{{.Id}}', image_name)} 2>/dev/null"
    lines = ["set -eu"]
    if _known(image_id):
        lines += _skip_when_present(inspect_id, image_name, image_id or "", where)
        lines += tar_checks(tar_path)  # present; its content is proven by the id below
    else:
        lines += tar_checks(tar_path, tar_sha256)
    lines.append("echo " + shlex.quote(f"load on {where}: streaming {tar_path} over ssh"))
    lines.append(f"{remote('docker', 'load')} < {tar}")
    lines.append(_loaded_check(inspect_id, remote('docker', 'image', 'inspect', image_name), image_name, image_id,
                               tar_path, where))
    return "\n".join(lines) + "\n"


def members_load_script(image_name: str, image: BundleImage, image_id: Optional[str], where: str,
                        ssh: Optional[SshTarget] = None) -> str:
    """The load of an image the bundle keeps as its members, onto the local engine (DOCKER_HOST) or over
    ``ssh``: nothing when the engine holds the manifest's ``image_id``; else bundle/format/image_dir.py
    streams the members into `docker load` (each hashed on the way, the stream cut inside a damaged one,
    manifest.json last), and the id is checked after. Every value reaches the shell through shlex only."""
    def docker(*words: str) -> list[str]:
        return ssh.argv("docker", *words) if ssh is not None else ["docker", *words]

    inspect_id = f"{shlex.join(docker('image', 'inspect', '--format', '{{.Id}}', image_name))} 2>/dev/null"
    lines = ["set -eu"]
    if _known(image_id):
        lines += _skip_when_present(inspect_id, image_name, image_id or "", where)
    lines.append("echo " + shlex.quote(f"load on {where}: streaming the image's files {image.path} into docker load"))
    lines.append(shlex.join([sys.executable, "-I", os.path.abspath(image_dir.__file__), "load",
                             "--bundle", image.bundle_dir, "--image", image.image_dir, "--digest", image.digest,
                             "--", *docker("load")]))
    lines.append(_loaded_check(inspect_id, shlex.join(docker("image", "inspect", image_name)), image_name, image_id,
                               image.path, where, index_json=f"cat {shlex.quote(image.path + '/index.json')}"))
    return "\n".join(lines) + "\n"


def no_tar_script(image_name: str, where: str) -> str:
    """The load of a stack that names no tar: nothing to load from, said (never a pull)."""
    return "set -eu\n" + _fail(f"image {image_name} is not on {where} and the stack names no image tar "
                                "(image.tar) and no bundle (bundle_dir): nothing to load it from; it is never "
                                "pulled. Run `python3 -m bundle install` on the unpacked bundle, or set bundle_dir") + "\n"


class LoadedImage(pulumi.ComponentResource):
    """The Xinference image, loaded from the offline bundle onto the Docker host."""

    image_id: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(self, name: str, args: LoadedImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:LoadedImage", name, None, opts)
        depends = []
        script, environment = no_tar_script(args.image_name, args.docker_host), None
        if args.members is not None or args.tar_path:
            if args.ssh is not None:  # preview names the server the tar goes to
                load_name = f"{name}-load-on-{args.ssh.host}"
            else:
                load_name, environment = f"{name}-load", {"DOCKER_HOST": args.docker_host}
            if args.members is not None:
                script = members_load_script(args.image_name, args.members, args.image_id,
                                             args.ssh.describe() if args.ssh else args.docker_host, args.ssh)
            elif args.ssh is not None:
                script = remote_load_script(args.image_name, args.tar_path or "", args.tar_digest, args.image_id,
                                            args.ssh)
            else:
                script = load_script(args.image_name, args.tar_path or "", args.tar_digest, args.image_id,
                                     args.docker_host)
            depends.append(command.local.Command(load_name, create=script, environment=environment,
                                                 triggers=[args.tar_digest],
                                                 opts=pulumi.ResourceOptions(parent=self)))
        # The image as the engine holds it: refresh asks the engine, and an image removed by hand is
        # loaded again from the tar by the next up (never pulled, unlike docker.RemoteImage).
        image = EngineImage(f"{name}-image", EngineImageArgs(
            image_name=args.image_name, tar_digest=args.tar_digest, docker_host=args.docker_host,
            load_script=script, load_env=environment, expected_id=args.image_id if _known(args.image_id) else None,
            docker_ssh=args.ssh.argv() if args.ssh is not None else None,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=depends))
        self.image_id = image.image_id
        # The manifest's id, known at preview: the container's plan does not turn unknown (a replace
        # in preview) when only the image resource is updated in place.
        self.known_id: Optional[str] = args.image_id if _known(args.image_id) else None
        self.name = pulumi.Output.from_input(args.image_name)
        self.register_outputs({"image_id": self.image_id, "name": self.name})
