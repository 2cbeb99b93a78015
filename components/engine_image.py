"""EngineImage: the Xinference image as the engine holds it, loaded from the bundle's tar, never pulled.

It replaces pulumi-docker's RemoteImage, which on refresh finds an image removed from the
engine (`docker rmi -f`) gone and then *pulls* it on the next `up`: on an air-gapped site a pull
can never succeed, and no resource of ours may try a registry. This dynamic resource asks the
engine instead:

- read (refresh): the engine holds the image under its name, with the id the bundle names (or
  the one recorded) -> unchanged; else gone, so the next `up` creates it again;
- create: an engine that already holds it is adopted (nothing loaded); else the load script of
  components/image.py runs (the tar checked, `docker load`, the id checked), so an image removed
  by hand comes back from the bundle's tar, not from a registry;
- diff: a new tar (its sha256), name, id or engine replaces it (and, through the id, the
  container); a moved tar path changes nothing until a load is needed (it then runs the new script);
- delete: nothing (the image stays on the engine, as keep_locally did).

Keep this module's path and class names stable: Pulumi stores the pickled provider by reference.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from components.docker_cli import engine_image_id, needs_load

REPLACE_KEYS = ("image_name", "expected_id", "tar_digest", "docker_host")
LOAD_TIMEOUT_S = 3600  # a 5 GB tar streamed over ssh takes minutes, never an hour


@dataclass
class EngineImageArgs:
    """Inputs of EngineImage."""

    image_name: str
    """Image reference as stored in the tar."""
    tar_digest: str
    """sha256 (or fingerprint) of the tar: a change reloads and replaces."""
    docker_host: str
    """Engine address (unix:// or ssh://)."""
    load_script: str
    """The shell that loads the tar (components/image.py load_script / remote_load_script)."""
    load_env: Optional[Mapping[str, str]] = None
    """Environment the script runs with (DOCKER_HOST for a local engine)."""
    expected_id: Optional[str] = None
    """The id the bundle's manifest names; None: whatever the tar loads as."""
    docker_ssh: Optional[list] = None
    """ssh command up to the host name, for an ssh:// engine (stackspec/ssh.py)."""


def _ssh(props: Mapping[str, Any]) -> Optional[list[str]]:
    ssh = props.get("docker_ssh")
    return [str(word) for word in ssh] if isinstance(ssh, (list, tuple)) and ssh else None


def _held(props: Mapping[str, Any]) -> Optional[str]:
    return engine_image_id(props["docker_host"], props["image_name"], _ssh(props))


class ImageLoadFailed(Exception):
    """The load script failed: its own message says why (tar missing or damaged, another image)."""


class EngineImageProvider(ResourceProvider):
    """Loads the image when the engine lacks it; reads it back from the engine."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        expected = props.get("expected_id")
        have = _held(props)
        if needs_load(have, expected):
            env = {k: str(v) for k, v in (props.get("load_env") or {}).items()}
            # the script needs PATH (docker, sha256sum, ssh) besides its own variables
            done = subprocess.run(["/bin/sh", "-c", props["load_script"]], env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
            if done.returncode != 0:
                raise ImageLoadFailed(f"loading image {props['image_name']} onto {props['docker_host']} failed "
                                      f"(nothing running was touched): {(done.stderr or done.stdout).strip()}")
            have = _held(props)
        if have is None:
            raise ImageLoadFailed(f"image {props['image_name']} is not on {props['docker_host']} after its load")
        return CreateResult(id_=have, outs={**props, "image_id": have})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        have = _held(props)  # an engine that does not answer raises: "cannot tell" is not "gone"
        if have is None or have != (props.get("expected_id") or props.get("image_id") or id_):
            return ReadResult(None, {})  # removed (or another image under the name): the next up loads it
        return ReadResult(have, {**props, "image_id": have})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # The script, its environment and the ssh command are not compared: a load uses the new inputs
        # anyway, and an in-place update would show its inputs as outputs in a preview (no image id),
        # so the preview would disagree with up.
        replaces = [k for k in REPLACE_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "image_id": olds.get("image_id")})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # the image stays on the engine (it may still run, and reloading costs minutes)


class EngineImage(pulumi.dynamic.Resource, module="docker_engine", name="EngineImage"):
    """The image on one engine, loaded from the bundle's tar when it is missing; never pulled."""

    image_id: pulumi.Output[str]

    def __init__(self, resource_name: str, args: EngineImageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        props: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(args)}
        props["image_id"] = None
        super().__init__(EngineImageProvider(), resource_name, props, opts)
