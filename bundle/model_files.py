"""Where a bundle's model files go on the host, and which earlier model directories stay.

Standard library only: install runs with the server's bare python3.
"""

from __future__ import annotations

from pathlib import Path

from bundle.manifest import FileEntry, StackManifest
from bundle.progress import human
from bundle.sync import HashCache

FilePair = tuple[FileEntry, Path, str]  # (manifest entry, destination on the host, install-record key)


def model_file_pairs(manifest: StackManifest, models_dir: Path) -> list[tuple[Path, str, list[FilePair]]]:
    """Per model directory: (host directory, state key prefix, [(entry, destination, state key)])."""
    dirs = []
    for bundle_dir, host in sorted(manifest.model_dirs.items()):
        host_dir = Path(host) if host.startswith("/") else models_dir / host
        key_prefix = host if host.startswith("/") else host.strip("/")
        prefix = bundle_dir.rstrip("/") + "/"
        pairs = [(e, host_dir / e.path[len(prefix):], f"{key_prefix}/{e.path[len(prefix):]}")
                 for e in manifest.files if e.path.startswith(prefix)]
        dirs.append((host_dir, key_prefix, pairs))
    return dirs


def kept_model_dirs(state: HashCache, models_dir: Path, current: list[str]) -> dict[str, str]:
    """Model directories an earlier install filled that this bundle no longer lists: kept, and said.

    Weights of a model dropped from the stack are never deleted by an install: on a site
    without internet, a model disabled for a while would otherwise have to cross the air gap
    again. Their records stay too, so re-enabling it copies nothing. Returns {key prefix:
    "directory (size)"} for those still on disk.
    """
    kept = {}
    for prefix in sorted(set(state.meta.get("dirs") or []) - set(current)):
        directory = Path(prefix) if prefix.startswith("/") else models_dir / prefix
        if directory.is_dir():
            kept[prefix] = f"{directory} ({human(dir_size(directory))})"
    return kept


def dir_size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())
