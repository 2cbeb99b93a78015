"""The Xinference image for the bundle: a `docker save` tar, checked to hold the image the stack names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Optional

from bundle.format.errors import FetchError, SetupError


def docker_save(image: str, configured_tar: Optional[str], cache_dir: Path, say: Callable[[str], None]) -> Path:
    """`docker save` of ``image`` into ``cache_dir`` (written to a .part file, then renamed)."""
    docker = shutil.which("docker")
    configured = f"image.tar = {configured_tar!r} is not on this machine and " if configured_tar else ""
    if docker is None:
        raise SetupError(f"no image tar: {configured}`docker` is not installed here to `docker save {image}`; "
                         f"pass --image-tar FILE (a `docker save` of {image})")
    dest = cache_dir / f"{hashlib.sha256(image.encode()).hexdigest()[:16]}.tar"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".part")
    say(f"build: docker save {image} (this takes a while for a large image)")
    proc = subprocess.run([docker, "save", "-o", str(partial), image], capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise FetchError(f"docker save {image} failed: {proc.stderr.strip() or proc.returncode}; "
                         f"`docker pull {image}` first, or pass --image-tar FILE")
    os.replace(partial, dest)
    return dest


def check_image_tar(tar: Path, image: str) -> Optional[str]:
    """The tar is a `docker save` archive that holds ``image`` (carrying the wrong one is costly);
    returns the image id that `docker load` of it gives (``sha256:<hex>`` of its config), when it says."""
    try:
        with tarfile.open(tar, "r:*") as archive:
            member = next((m for m in archive if m.name.removeprefix("./") == "manifest.json" and m.isreg()), None)
            if member is None:
                raise SetupError(f"{tar}: has no manifest.json: not a `docker save` archive")
            handle = archive.extractfile(member)
            entries = json.loads(handle.read() if handle else b"[]")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise SetupError(f"{tar}: not a readable `docker save` archive ({exc})") from exc
    tags = sorted({tag for entry in entries if isinstance(entry, dict) for tag in entry.get("RepoTags") or []})
    candidates = {image, f"docker.io/{image}", image.removeprefix("docker.io/"),
                  image.removeprefix("docker.io/library/")}
    if not candidates & set(tags):
        raise SetupError(f"{tar} holds {', '.join(tags) or 'no tagged image'}, not image.name {image!r}; "
                         "fix image.name or give the right tar")
    return image_id_of(entries, candidates)


def image_id_of(entries: list, names: set[str]) -> Optional[str]:
    """The image id of the manifest.json entry tagged with one of ``names``: its config file is named
    by its sha256, `<hex>.json` (docker save) or `blobs/sha256/<hex>` (the OCI layout of docker 25+)."""
    for entry in entries:
        if isinstance(entry, dict) and names & set(entry.get("RepoTags") or []):
            found = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", str(entry.get("Config", "")))
            return f"sha256:{found.group(1)}" if found else None
    return None
