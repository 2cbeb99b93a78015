"""Whether one path is (in) another, however either is spelled (standard library only): an output must
never be (in) what a command reads, nor the other way round (pack, unpack, install's confinement)."""

from __future__ import annotations

import os
from pathlib import Path


def inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies below it, however either is spelled: symlinks and
    `..` are resolved, and each existing ancestor of ``path`` is compared by device and inode with
    ``directory`` (a bind mount, a second mount of one file system)."""
    real_path, real_dir = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    if real_path == real_dir or real_dir in real_path.parents:
        return True
    try:
        wanted = os.stat(real_dir)
    except OSError:
        return False  # a directory that does not exist holds nothing
    for ancestor in (real_path, *real_path.parents):
        try:
            if os.path.samestat(os.stat(ancestor), wanted):
                return True
        except OSError:
            continue
    return False
