"""The layers of a bundle's image tar (`docker save`), read from a bundle directory or from inside its archive
(member headers and manifest.json only; standard library only, so `bundle diff` runs on a bare python3).

A layer is named by its digest in the tar (``<hex>/layer.tar`` in the classic layout,
``blobs/sha256/<hex>`` in the OCI layout of docker 25+), so two images share a layer exactly when
they list the same name.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import IO, Optional

from bundle.format.parts import resolve_archive


def layers_of_tar(handle: IO[bytes]) -> Optional[dict[str, int]]:
    """{layer name: size} of a `docker save` tar read from ``handle``; None when it is not one."""
    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            sizes: dict[str, int] = {}
            manifest = None
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isreg():
                    sizes[name] = member.size
                if name == "manifest.json" and member.isreg():
                    source = tar.extractfile(member)
                    manifest = json.loads(source.read(1 << 20)) if source else None
    except (tarfile.TarError, EOFError, OSError, ValueError):
        return None
    if not isinstance(manifest, list):
        return None
    layers = {}
    for entry in manifest:
        for layer in (entry.get("Layers") or []) if isinstance(entry, dict) else []:
            layers[str(layer)] = sizes.get(str(layer), 0)
    return layers


def image_layers(source: Path, image_tar: str) -> Optional[dict[str, int]]:
    """The layers of ``image_tar`` (a bundle path) in the bundle ``source`` (a directory or an archive; None
    for a bare MANIFEST.json, or when the image tar is not in it, as in a delta that left it out)."""
    if source.is_dir():
        try:
            with open(source / image_tar, "rb") as handle:
                return layers_of_tar(handle)
        except FileNotFoundError:
            return None
    if source.name.endswith(".json"):
        return None
    with resolve_archive([source]).reader() as reader, tarfile.open(fileobj=reader, mode="r:*") as outer:
        for member in outer:
            if member.name.removeprefix("./") == image_tar and member.isreg():
                inner = outer.extractfile(member)
                return layers_of_tar(inner) if inner else None
    return None
