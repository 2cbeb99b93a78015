"""A `docker save` tar's structure: where its layers and config are (either layout), and what the config says.

Standard library only: the program reads the image config on the site (the CUDA an image needs,
components/driver_check.py), and `bundle build` walks the layers (bundle/build/image_env.py).
Both layouts: `docker save`'s manifest.json, and the OCI layout (index.json) newer engines save.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any, Optional

from bundle.format.errors import SetupError

ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


def _json_member(outer: tarfile.TarFile, name: str) -> Any:
    member = outer.extractfile(name)
    if member is None:
        raise KeyError(f"{name} is not a file in the tar")
    return json.loads(member.read())


def _blob(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


def _oci_manifest(outer: tarfile.TarFile) -> dict[str, Any]:
    """The image manifest an OCI-layout tar's index.json leads to (through nested indexes: the
    linux/amd64 or linux/arm64 entry, else the first)."""
    document = _json_member(outer, "index.json")
    for _ in range(4):
        manifests = document.get("manifests") or [] if isinstance(document, dict) else []
        if not manifests:
            raise SetupError("the image tar's index.json lists no image")
        chosen = next((m for m in manifests if (m.get("platform") or {}).get("os") == "linux"
                       and (m.get("platform") or {}).get("architecture") in ARCHES), manifests[0])
        document = _json_member(outer, _blob(chosen["digest"]))
        if isinstance(document, dict) and document.get("mediaType") not in _INDEX_TYPES and "layers" in document:
            return document
    raise SetupError("the image tar's index.json leads to no image manifest")


def layer_paths(outer: tarfile.TarFile) -> tuple[list[str], Optional[str]]:
    """The layer members, bottom first, and the config member: from manifest.json (`docker save`,
    also written by newer engines beside their OCI layout), else from the OCI layout's index.json."""
    names = set(outer.getnames())
    if "manifest.json" in names:
        manifest = _json_member(outer, "manifest.json")
        if not manifest:
            raise SetupError("the image tar's manifest.json lists no image")
        return list(manifest[0]["Layers"]), manifest[0].get("Config")
    if "index.json" not in names:
        raise SetupError("the tar has neither manifest.json nor index.json: not a `docker save` archive")
    manifest = _oci_manifest(outer)
    return [_blob(layer["digest"]) for layer in manifest["layers"]], _blob(manifest["config"]["digest"])


def image_config(tar: Path) -> dict[str, Any]:
    """The image config of a `docker save` tar (either layout), or of a bundle's image kept as the tar's
    members (a directory holding manifest.json and the config beside it): its env, labels, architecture."""
    if tar.is_dir():
        return _directory_config(tar)
    try:
        with tarfile.open(tar, "r:") as outer:
            _, config = layer_paths(outer)
            document = _json_member(outer, config) if config else {}
            if not isinstance(document, dict):
                raise ValueError("the image config is not a JSON object")
            return document
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        raise SetupError(f"{tar}: cannot read the image config of this docker save tar ({exc})") from exc


def _directory_config(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / "manifest.json").read_bytes())
        config = manifest[0].get("Config") if isinstance(manifest, list) and manifest else None
        if not isinstance(config, str) or ".." in config.split("/"):
            raise ValueError(f"its manifest.json names no config ({config!r})")
        document = json.loads((root / config).read_bytes())
        if not isinstance(document, dict):
            raise ValueError("the image config is not a JSON object")
        return document
    except (OSError, ValueError, AttributeError) as exc:
        raise SetupError(f"{root}: cannot read the image config of this image directory ({exc})") from exc


_CUDA_LABELS = ("com.nvidia.cuda.version", "cuda_version")


def required_cuda(config: dict[str, Any]) -> Optional[str]:
    """The CUDA (X.Y) the image says it needs: NVIDIA_REQUIRE_CUDA's ``cuda>=X.Y`` (what the NVIDIA
    container runtime itself enforces), else CUDA_VERSION (the nvidia/cuda base images' env), else a
    label; None when it says nothing (a CPU image) or NVIDIA_DISABLE_REQUIRE is set."""
    settings = config.get("config") or {}
    env = dict(item.split("=", 1) for item in settings.get("Env") or () if "=" in item)
    if env.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true"):
        return None
    found = re.search(r"\bcuda>=(\d+\.\d+)", env.get("NVIDIA_REQUIRE_CUDA", ""))
    if found:
        return found.group(1)
    labels = settings.get("Labels") or {}
    for text in (env.get("CUDA_VERSION", ""), *(labels.get(key, "") for key in _CUDA_LABELS)):
        found = re.match(r"(\d+)\.(\d+)", text)
        if found:
            return f"{found.group(1)}.{found.group(2)}"
    return None
