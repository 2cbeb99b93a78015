"""Where a bundle's model files go on the host, and which earlier model directories stay.

Standard library only: install runs with the server's bare python3.

Every model directory goes inside the models directory install was given (``--models-dir``,
else the stack's models_dir): the manifest's ``model_dirs`` says where below it. A target
given on the command line wins over the manifest, so an absolute host directory (what an
older build wrote for an absolute model path) is taken relative to the stack's models_dir
and put under the models directory install writes; one outside the stack's models_dir has
no place there and is refused. Each file's place is checked by bundle/install/confinement.py.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Optional

from bundle.install.confinement import Confinement, Target, shown
from bundle.format.filecopy import HashCache
from bundle.format.manifest import FileEntry, StackManifest, path_problem
from bundle.format.manifest_rules import key as field_key
from bundle.format.progress import human

FilePair = tuple[FileEntry, Path, str]  # (manifest entry, destination on the host, install-record key)


def host_dir_rel(manifest: StackManifest, host: str) -> tuple[Optional[str], str]:
    """(the model directory relative to the models directory, "") or (None, why it has no place there)."""
    if host.startswith("/"):
        base = manifest.models_dir
        if base and posixpath.normpath(host).startswith(posixpath.normpath(base).rstrip("/") + "/"):
            host = posixpath.relpath(posixpath.normpath(host), posixpath.normpath(base))
        else:
            return None, (f"is absolute and outside the stack's models_dir {shown(base or '(none)')}: install writes "
                          "model files only inside the models directory; give the model a path relative to "
                          "models_dir in the stack file and rebuild the bundle")
    problem = path_problem(host)
    if problem:
        return None, f"is no directory inside the models directory: not a canonical relative path ({problem})"
    return host, ""


def model_file_pairs(manifest: StackManifest, target: Target, confinement: Confinement
                     ) -> list[tuple[Path, str, list[FilePair]]]:
    """Per model directory: (host directory, record key prefix, [(entry, destination, record key)]).

    Every destination is checked inside ``target``; refusals go to ``confinement`` (which the
    caller raises before anything is written)."""
    dirs = []
    taken: dict[str, str] = {}
    for bundle_dir, host in sorted(manifest.model_dirs.items()):
        field = f"stacks{field_key(manifest.stack)}.model_dirs{field_key(bundle_dir)}"
        rel, why = host_dir_rel(manifest, host)
        if rel is None:
            confinement.refuse(field, f"{shown(host)} {why} ({target})")
            continue
        if rel in taken:
            confinement.refuse(field, f"{shown(host)} is the host directory of {taken[rel]} too: two bundle "
                                      f"directories would fill {shown(target.path / rel)}; rebuild the bundle")
            continue
        taken[rel] = bundle_dir
        prefix = bundle_dir.rstrip("/") + "/"
        pairs = []
        for entry in manifest.files:
            inner = entry.path[len(prefix):] if entry.path.startswith(prefix) else None
            if inner is None:
                continue
            dest = confinement.place(target, f"{rel}/{inner}", entry.path)
            if dest is not None:
                pairs.append((entry, dest, f"{rel}/{inner}"))
        dirs.append((target.path / rel, rel, pairs))
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
        if not isinstance(prefix, str) or path_problem(prefix):  # not one install writes: not named, not walked
            continue
        directory = models_dir / prefix
        if directory.is_dir() and not directory.is_symlink():
            kept[prefix] = f"{directory} ({human(dir_size(directory))})"
    return kept


def dir_size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())
