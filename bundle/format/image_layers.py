"""The layers of a bundle's image, read from a bundle directory or from inside its archive: of its tar
(`docker save`: member headers and manifest.json only), or of an image kept as the tar's members
(bundle/format/image_dir.py: manifest.json and the config, sizes from the bundle manifest).
Standard library only, so `bundle diff` runs on a bare python3.

A layer is known by its diff id (the image config's ``rootfs.diff_ids``: the sha256 of the
uncompressed layer), so two images share a layer exactly when both configs list its diff id.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import IO, Optional

from bundle.format.parts import resolve_archive

SMALL = 1 << 20  # manifest.json and the configs are read; layers never


def layers_of_tar(handle: IO[bytes]) -> Optional[dict[str, int]]:
    """{layer diff id (else its name in the tar): size} of a `docker save` tar read from ``handle``; None when
    it is not one. The diff id (the sha256 of the uncompressed layer, from the image config) names a layer
    the same in every image that has it; the name in the tar does not (a classic `docker save` names
    layers by ids that depend on the layers below and the config)."""
    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            sizes: dict[str, int] = {}
            small: dict[str, bytes] = {}  # manifest.json and the configs
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isreg():
                    continue
                sizes[name] = member.size
                if _is_small(name, member.size):
                    source = tar.extractfile(member)
                    small[name] = source.read() if source else b""
    except (tarfile.TarError, EOFError, OSError):
        return None
    return _layers(small, sizes)


def _is_small(name: str, size: int) -> bool:
    return size <= SMALL and (name == "manifest.json" or name.endswith(".json") or name.startswith("blobs/"))


def _layers(small: dict[str, bytes], sizes: dict[str, int]) -> Optional[dict[str, int]]:
    """{diff id (else the layer's name): size} from manifest.json and the configs among ``small``."""
    try:
        manifest = json.loads(small.get("manifest.json", b"null"))
    except ValueError:
        return None
    if not isinstance(manifest, list):
        return None
    layers = {}
    for entry in manifest:
        if not isinstance(entry, dict):
            continue
        names = [str(layer) for layer in entry.get("Layers") or []]
        try:
            diff_ids = json.loads(small.get(str(entry.get("Config")), b"{}")).get("rootfs", {}).get("diff_ids", [])
        except (ValueError, AttributeError):
            diff_ids = []
        keys = diff_ids if len(diff_ids) == len(names) else names
        for key_, name in zip(keys, names, strict=True):
            layers[str(key_)] = sizes.get(name, 0)
    return layers


def image_dir_layers(source: Path, image_dir: str, sizes: dict[str, int]) -> Optional[dict[str, int]]:
    """The layers of the image kept at ``image_dir`` of the bundle ``source`` (a directory or an archive), its
    members' ``sizes`` from the bundle manifest; None for a bare MANIFEST.json or when its manifest.json is not
    there (a delta that left it out)."""
    prefix = image_dir + "/"
    small: dict[str, bytes] = {}
    if source.is_dir():
        for name, size in sizes.items():
            if _is_small(name, size):
                try:
                    small[name] = (source / (prefix + name)).read_bytes()
                except OSError:
                    pass
        return _layers(small, sizes)
    if source.name.endswith(".json"):
        return None
    with resolve_archive([source]).reader() as reader, tarfile.open(fileobj=reader, mode="r:*") as outer:
        for member in outer:
            name = member.name.removeprefix("./").removeprefix(prefix)
            if member.name.removeprefix("./").startswith(prefix) and member.isreg() and _is_small(name, member.size):
                inner = outer.extractfile(member)
                small[name] = inner.read() if inner else b""
    return _layers(small, sizes) if "manifest.json" in small else None


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
