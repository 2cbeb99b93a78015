"""Carrying on after an interrupted unpack (kill -9, a power cut, Ctrl-C), standard library only.

An unpack extracts into a hidden directory beside its target named by the bundle id
(``resume_dir``), and a file appears there under its real name only while it is being written
or once it is complete. Run again, the unpack keeps each file whose size and sha256 match the
manifest (``complete``: hashed, never written again) and writes the rest. A target that
already holds the same bundle, intact, is left as it is (``already_unpacked``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Callable, Optional

from bundle.format import tarscan
from bundle.format.errors import BundleError
from bundle.format.manifest import MANIFEST_NAME, FileEntry, Manifest, load_manifest, sha256_file
from bundle.format.parts import ArchiveFiles
from bundle.format.signature import SignerPolicy
from bundle.format.verify import verify_directory, walk_files


def resume_dir(target: Path, bundle_id: str) -> Path:
    """Where an unpack of this bundle into ``target`` extracts: named by the bundle id, so an unpack
    killed part-way and run again finds the files it completed."""
    return target.parent / f".{target.name}.unpack-{bundle_id[:16]}"


def claim(directory: Path, target: Path) -> int:
    """An exclusive flock on the resume directory itself (no lock file: nothing extra lands in the bundle):
    a second unpack of this bundle into ``target`` while one runs is refused instead of clearing away
    the files the first is writing. The lock goes with the process (kill -9 included). Returns the fd."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BundleError(f"another unpack of this bundle into {target} is running (it works in {directory}); "
                          "wait for it to end, then run this one again if it failed") from None
    return fd


def already_unpacked(files: ArchiveFiles, target: Path, bundle_id: Optional[str], quiet: bool,
                     policy: Optional[SignerPolicy] = None) -> Optional[Manifest]:
    """The manifest when ``target`` already holds this archive's bundle, intact (every file hashed, nothing
    written: a second run of `install ARCHIVE` after its unpack had finished); None: unpack it."""
    if not (target / MANIFEST_NAME).is_file():
        return None
    wanted = tarscan.archive_manifest(files, bundle_id, policy)  # the archive's signature first
    try:
        if load_manifest(target).bundle_id != wanted.bundle_id:
            return None
        manifest = verify_directory(target, wanted.bundle_id, quiet=quiet, policy=policy)
    except BundleError as exc:
        print(f"unpack: {target} holds this bundle but not intact; unpacking it again:\n{exc}", file=sys.stderr)
        return None
    if not quiet:
        print(f"unpack: {target} already holds bundle {manifest.bundle_id}, every sha256 matched: "
              "nothing unpacked", file=sys.stderr)
    return manifest


def clear_unlisted(directory: Path, manifest: Manifest) -> None:
    """Remove from an interrupted unpack's directory whatever the manifest does not list as a file (left by
    something else than this unpack): the finished tree must hold exactly the bundle."""
    listed = {f.path for f in manifest.files}
    files, others = walk_files(directory)
    for rel in [f for f in files if f not in listed] + [p.path for p in others]:
        path = directory / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def bytes_in(directory: Path) -> int:
    """Bytes already in an interrupted unpack's directory (they need no new space)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(directory):
        for filename in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, filename)).st_size
            except OSError:
                pass
    return total


def complete(dest: Path, entry: FileEntry, progress: Callable[[int], None]) -> bool:
    """Whether an interrupted run left ``dest`` complete and matching; otherwise it is cleared away."""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode) and st.st_size == entry.size and sha256_file(dest) == entry.sha256:
        progress(entry.size)
        return True
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(dest)
    else:
        dest.unlink()  # cut short by the interruption (or not a file at all): written again
    return False
