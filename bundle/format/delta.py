"""Delta bundles: an update that carries only what the site's current bundle lacks (standard library only).

`build --base OLD` writes the full new manifest (every file, as always) plus ``base``: the old
bundle's id and the sha256 of each new file the old bundle already holds. `pack` leaves those
files out of the archive. On the site `unpack`/`install --base DIR` (DIR: the current bundle,
verified) builds the complete new bundle directory: each such file hard-linked from DIR when
both lie on one file system, else copied, and hashed against the new manifest either way; the
rest comes from the archive. DIR is never written: pointing the stack back at it rolls a failed
update back. A base file that is missing or damaged is named, with the bundle that supplies it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Optional

from bundle.format.errors import FileProblem, UsageError
from bundle.format.filecopy import link_or_copy
from bundle.format.manifest import (MANIFEST_NAME, BaseRef, FileEntry, Manifest, load_manifest, parse_manifest,
                                    sha256_file)
from bundle.format.parts import resolve_archive
from bundle.format.resume import complete
from bundle.format.tarscan import archive_manifest


def read_base(path: Path) -> Manifest:
    """The manifest OLD names: a MANIFEST.json, a bundle directory, or an archive (or its first part)."""
    if path.is_dir():
        return load_manifest(path)
    if path.name.endswith(".json"):
        try:
            return parse_manifest(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise UsageError(f"--base {path}: no such file; give the previous bundle's {MANIFEST_NAME}, its "
                             "directory or its archive") from None
    return archive_manifest(resolve_archive([path]))


def base_of(old: Manifest, new: Manifest) -> BaseRef:
    """The ``base`` of ``new`` built on ``old``: the contents both hold (only these are left out of the archive)."""
    shared = {f.sha256 for f in new.files} & {f.sha256 for f in old.files}
    return BaseRef(old.bundle_id, sorted(shared))


def from_base(manifest: Manifest) -> list[FileEntry]:
    """The files of a delta that its archive leaves out (empty for a full bundle)."""
    if manifest.base is None:
        return []
    shared = set(manifest.base.sha256)
    return [f for f in manifest.files if f.sha256 in shared]


def carried(manifest: Manifest) -> list[FileEntry]:
    """The files the archive carries."""
    left_out = {f.path for f in from_base(manifest)}
    return [f for f in manifest.files if f.path not in left_out]


def space_needed(manifest: Manifest, base_dir: Optional[Path], parent: Path) -> int:
    """Bytes the new tree needs: what the archive carries, plus the base's files unless they can be hard-linked."""
    needed = sum(f.size for f in carried(manifest))
    if base_dir is not None and os.stat(base_dir).st_dev != os.stat(parent).st_dev:
        needed += sum(f.size for f in from_base(manifest))
    return needed


def check_base_dir(manifest: Manifest, base_dir: Optional[Path], target: Path) -> Optional[Manifest]:
    """The base bundle's manifest when ``manifest`` is a delta (UsageError when --base is missing or names
    another bundle or the target itself); None for a full bundle."""
    if manifest.base is None:
        return None
    wanted = manifest.base.bundle_id
    if base_dir is None:
        raise UsageError(f"this archive is a delta on bundle {wanted}: it carries only what that bundle lacks; "
                         "give --base DIR, the site's current bundle directory (or carry the full archive)")
    base = load_manifest(base_dir)
    if base.bundle_id != wanted:
        raise UsageError(f"--base {base_dir}: holds bundle {base.bundle_id}, this delta is on bundle {wanted}; "
                         "give the directory of that bundle (or carry the full archive)")
    if os.path.realpath(base_dir) == os.path.realpath(target):
        raise UsageError(f"--into {target}: is the base bundle itself; unpack the update into a new directory "
                         "(the base stays as it is, so pointing the stack back at it undoes the update)")
    return base


def take_from_base(manifest: Manifest, base: Manifest, base_dir: Path, into: Path,
                   progress: Callable[[int], None]) -> list[FileProblem]:
    """Put every file the delta leaves out into ``into``: hard-linked (else copied) from ``base_dir``, its
    sha256 checked against the new manifest. A file already complete in ``into`` (an interrupted run) stays."""
    where: dict[str, list[str]] = {}
    for f in base.files:
        where.setdefault(f.sha256, []).append(f.path)
    supplier = (f"bundle {base.bundle_id} (the base) supplies it: unpack its archive again into {base_dir}, "
                f"or carry the full archive of bundle {manifest.bundle_id}")
    problems = []
    for entry in from_base(manifest):
        dest = into / entry.path
        if complete(dest, entry, progress):  # an interrupted run linked it already
            continue
        reasons = []
        for path in where[entry.sha256]:  # the first intact base file of that content
            reason = _take(base_dir / path, dest, entry, progress)
            if reason is None:
                break
            reasons.append(reason)
        else:  # none is intact: each is named
            problems += [FileProblem(entry.path, f"{reason}; {supplier}") for reason in reasons]
    return problems


def _take(source: Path, dest: Path, entry: FileEntry, progress: Callable[[int], None]) -> Optional[str]:
    """Link (else copy) ``source`` to ``dest`` when it holds ``entry``'s content; else why not (dest left absent)."""
    try:
        st = source.lstat()
    except FileNotFoundError:
        return f"missing from the base {source}"
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
        return f"damaged in the base {source} ({st.st_size} bytes, expected {entry.size})"
    copied = link_or_copy(source, dest, progress)
    actual = copied or sha256_file(dest, progress=progress)
    if actual != entry.sha256:
        dest.unlink()
        return f"damaged in the base {source} (sha256 {actual}, expected {entry.sha256})"
    return None
