"""ModelVolume: the model directory on the host and a weights digest per model.

The digest is what relaunches exactly the models whose weights changed. It comes from the
bundle manifest when the stack names an unpacked bundle (content hashes, verified by
`bundle verify`); otherwise from a cheap fingerprint (relative path, size, mtime) of the
model's directory when it is on this machine; otherwise from the pinned source revision.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi
import pulumi_command as command

from bundle.format.manifest import StackManifest
from stackspec.config import ModelConfig, StackConfig
from stackspec.launch import model_dir_on_host


def directory_fingerprint(path: str) -> Optional[str]:
    """sha256 over (relative path, size, mtime) of every file below ``path``; None if absent."""
    if not os.path.isdir(path):
        return None
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            stat = os.stat(full)
            digest.update(f"{os.path.relpath(full, path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "fp:" + digest.hexdigest()


def source_digest(model: ModelConfig) -> str:
    source = model.source
    if source and source.revision:
        return "rev:" + hashlib.sha256(f"{source.hub}:{source.id}@{source.revision}".encode()).hexdigest()
    return ""


def weights_digests(cfg: StackConfig, manifest: Optional[StackManifest], local_host: bool) -> dict[str, str]:
    """{uid: digest} for every enabled model ("" when nothing is known)."""
    from_manifest = manifest.model_digests() if manifest else {}
    digests = {}
    for model in cfg.enabled_models:
        digest = from_manifest.get(model.uid)
        if digest is None and local_host:
            digest = directory_fingerprint(model_dir_on_host(cfg, model))
        digests[model.uid] = digest or source_digest(model)
    return digests


def presence_script(directories: Mapping[str, str]) -> str:
    """Shell that fails, naming every missing model directory, before the container starts.

    Values from the config reach the shell through ``shlex.quote`` only, messages included.
    """
    lines = ["missing=0"]
    for uid, path in sorted(directories.items()):
        message = shlex.quote(f"model {uid}: directory {path} is missing")
        lines.append(f"[ -d {shlex.quote(path)} ] || {{ echo {message} >&2; missing=1; }}")
    lines.append('[ "$missing" = 0 ] || { echo "copy the models with: python -m bundle install <bundle dir>" >&2; exit 1; }')
    return "\n".join(lines) + "\n"


def missing_directories(directories: Mapping[str, str]) -> list[str]:
    """What the presence script would report, asked here (the docker host is this machine)."""
    return [f"model {uid}: directory {path} is missing"
            for uid, path in sorted(directories.items()) if not os.path.isdir(path)]


@dataclass
class ModelVolumeArgs:
    """Inputs of ModelVolume."""

    models_dir: str
    """Host directory holding one sub-directory per model."""
    model_dirs: Mapping[str, str]
    """{uid: host directory} of the enabled models."""
    digests: Mapping[str, str]
    """{uid: weights digest}."""
    check_on_host: bool
    """Check the directories exist (only when the Docker host is this machine)."""


class ModelVolume(pulumi.ComponentResource):
    """The verified model directory on the host, with a digest per model."""

    host_path: pulumi.Output[str]
    digests: pulumi.Output[Mapping[str, str]]

    def __init__(self, name: str, args: ModelVolumeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("xinference-offline:index:ModelVolume", name, None, opts)
        self.check: Optional[command.local.Command] = None
        if args.check_on_host and args.model_dirs:
            self.check = command.local.Command(
                f"{name}-check",
                create=presence_script(args.model_dirs),
                triggers=[dict(args.digests)],
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.host_path = pulumi.Output.from_input(args.models_dir)
        self.digests = pulumi.Output.from_input(dict(args.digests))
        self.register_outputs({"host_path": self.host_path, "digests": self.digests})
