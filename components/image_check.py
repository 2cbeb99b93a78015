"""Before anything changes (at `preview` too): can `up` load the image it needs?

The load step only runs at `up`, so a missing tar used to be found once `up` had started
(after the preview had shown nothing wrong). An engine that already has the image the bundle
names needs no tar; one that lacks it needs the tar to be where the stack says, and the image
is never pulled. So the program asks each docker host whether it has the image and refuses a
stack whose needed tar is missing, naming the image, the engine, the path it looked for and
the path the bundle has.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Optional

from bundle.contents.items import IMAGE_DIR, image_tar_name
from bundle.format.image_dir import member_problems
from bundle.format.manifest import StackManifest
from components.deployment import image_tar_path
from components.docker_cli import DockerHostUnreachable, engine_image_id, needs_load
from components.image import bundle_image
from components.preflight import docker_hosts
from stackspec.config import StackConfig


def missing_tar_message(image_name: str, image_id: Optional[str], docker_host: str, looked_for: Optional[str],
                        bundle_tar: str) -> str:
    """Why `up` could not load the image, and the fix."""
    what = f"image {image_name}" + (f" ({image_id})" if image_id else "")
    start = f"{what} is not on docker host {docker_host}, so `up` must load it (it never pulls), but "
    end = "; nothing was changed."
    if looked_for == bundle_tar:
        return (start + f"the bundle's image tar {looked_for} is missing{end} Fix: unpack the bundle again "
                "(`python3 -m bundle unpack`, then `verify`).")
    where = f"its tar {looked_for} is missing" if looked_for else "the stack names no image tar and no bundle"
    return (start + where + end + f" The bundle has it at {bundle_tar}: run `python3 -m bundle install` on the "
            "unpacked bundle (it records where the bundle is), or set bundle_dir in the stack file to it.")


def missing_members_message(image_name: str, image_id: Optional[str], docker_host: str, image_dir: str,
                            gaps: list[str]) -> str:
    what = f"image {image_name}" + (f" ({image_id})" if image_id else "")
    shown = "; ".join(gaps[:3]) + (f"; and {len(gaps) - 3} more" if len(gaps) > 3 else "")
    return (f"{what} is not on docker host {docker_host}, so `up` must load it (it never pulls), but the bundle's "
            f"image files in {image_dir} are incomplete ({shown}); nothing was changed. Fix: unpack the bundle "
            "again (`python3 -m bundle unpack`, then `verify`).")


def image_tar_problems(cfg: StackConfig, manifest: Optional[StackManifest]) -> list[str]:
    """One message per docker host that lacks the image while the tar `up` would load is missing (or, for a
    bundle that keeps the image as its members, one of them is missing or of another size)."""
    if cfg.image is None or cfg.mode == "existing":
        return []
    members = bundle_image(cfg, manifest)
    gaps = member_problems(Path(members.path), manifest.image_members()) if members and manifest else []
    tar_path = image_tar_path(cfg, manifest)
    if (members is not None and not gaps) or (tar_path and os.path.isfile(tar_path)):
        return []
    from_bundle = bool(manifest and manifest.role("image") and cfg.bundle_dir)
    bundle_tar = tar_path if from_bundle else posixpath.join("<unpacked bundle>", IMAGE_DIR,
                                                             image_tar_name(cfg.image.name))
    image_id = manifest.entry.image_id if manifest else None
    problems = []
    for host in docker_hosts(cfg):
        if not host.check_daemon:
            continue  # a preview that may not contact the engine
        try:
            have = engine_image_id(host.host, cfg.image.name, host.ssh_argv())
        except DockerHostUnreachable:
            continue  # the host preflight names an engine that does not answer
        if needs_load(have, image_id):
            problems.append(missing_members_message(cfg.image.name, image_id, host.host, members.path, gaps)
                            if members else missing_tar_message(cfg.image.name, image_id, host.host, tar_path,
                                                                bundle_tar or ""))
    return problems
