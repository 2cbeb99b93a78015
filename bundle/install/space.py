"""Free space, checked before install writes anything.

A disk that fills up must stop an install before its first byte, with the numbers, not in
the middle of a 15 GB model. Standard library only (install runs before any venv exists).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Iterable

from bundle.format.manifest import FileEntry
from bundle.format.progress import human


def bytes_needed(targets: Iterable[tuple[FileEntry, Path]]) -> int:
    """Bytes writing these files adds to one disk.

    A missing file counts in full and a file of another size by the difference. A file that
    already has the entry's size counts as nothing: it is either in place or rewritten
    without growing. On top of that comes the largest file written, because its temp copy
    sits beside the old file until the rename.
    """
    net, largest = 0, 0
    for entry, dest in targets:
        try:
            st = dest.lstat()
            old = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except FileNotFoundError:
            old = -1
        if old == entry.size:
            continue
        net += entry.size - max(old, 0)
        largest = max(largest, entry.size)
    return max(net, 0) + largest


def existing_ancestor(path: Path) -> Path:
    """``path`` or the nearest directory above it that exists (where new directories will go)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def space_problems(targets: Iterable[tuple[FileEntry, Path]]) -> list[tuple[Path, str]]:
    """(where, message) for each disk the targets do not fit on; files are grouped by disk."""
    by_disk: dict[int, tuple[Path, list[tuple[FileEntry, Path]]]] = {}
    disk_of: dict[Path, tuple[Path, int]] = {}  # per directory, not per file: a model holds many files
    for entry, dest in targets:
        if dest.parent not in disk_of:
            anchor = existing_ancestor(dest.parent)
            disk_of[dest.parent] = (anchor, os.stat(anchor).st_dev)
        anchor, device = disk_of[dest.parent]
        by_disk.setdefault(device, (anchor, []))[1].append((entry, dest))
    problems = []
    for anchor, files in by_disk.values():
        needed = bytes_needed(files)
        free = shutil.disk_usage(anchor).free
        if needed > free:
            problems.append((anchor, f"{human(free)} free on this disk, the model files need {human(needed)}; "
                                     "free space there, or install onto a larger disk with --models-dir DIR"))
    return problems
