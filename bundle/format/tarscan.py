"""Reading a bundle archive safely, without writing anything: the checks `verify` and `unpack` share.

Every member header is checked before any byte of it is used (absolute paths, `..`, links,
device files, members the manifest does not list or lists with another size); the manifest
must be the first member; each file is streamed and hashed in CHUNK_SIZE pieces, so memory
stays flat whatever the archive holds; a plain tar cut short is told from a whole one by its
end-of-archive marker.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Optional, Union

from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.manifest import (CHUNK_SIZE, MANIFEST_NAME, MAX_MANIFEST_BYTES, FileEntry, Manifest,
                                    ManifestError, check_bundle_id, parse_manifest)
from bundle.format.manifest_rules import SIGNATURE_NAME, render, text_problem
from bundle.format.parts import ArchiveFiles, PartReader
from bundle.format.progress import Progress, bars_wanted, human
from bundle.format.signature import MAX_SIGNATURE_BYTES, SignerPolicy, check_bundle_signature

DAMAGED = (tarfile.TarError, EOFError, zlib.error, OSError)
MAX_MTIME = 2 ** 32 - 1  # 2106-02-07, the unsigned 32-bit time: later mtimes are clamped to it


def safe_mtime(value: object) -> Optional[float]:
    """A member's mtime as os.utime takes it: clamped to [0, MAX_MTIME]; None (keep the extraction
    time) for what is no time at all (NaN, infinities, not a number). A pax header can say anything."""
    if type(value) not in (int, float) or not isinstance(value, (int, float)):  # bool is an int, not a time
        return None
    if not math.isfinite(value):
        return None
    return float(min(max(value, 0), MAX_MTIME))


def shown_name(name: str) -> str:
    """A member name as a message line shows it: as it is, or quoted and escaped when it holds a control
    character or a lone surrogate (a newline in a name must not forge a line of the report)."""
    return render(name) if text_problem(name) else name


def member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if member.isdir() else name


def member_problem(member: tarfile.TarInfo, name: str, listed: set[str]) -> Optional[str]:
    """Why this member must not be extracted (None: it is a file the manifest lists, or a directory)."""
    if member.name.startswith("/") or name.startswith("/"):
        return "absolute path in the archive: refused"
    parts = name.split("/")
    if ".." in parts:
        return "`..` in the path would write outside the target: refused"
    if "\\" in name:
        return "backslash in the member name (a Windows path?): bundle members separate with /: refused"
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        target = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            return f"{kind} to {target!r} points outside the target: refused"
        return f"{kind} to {target!r}: a bundle holds regular files only: refused"
    if member.ischr() or member.isblk():
        return "device file in the archive: refused"
    if member.isfifo():
        return "fifo in the archive: refused"
    if member.isdir():
        return None
    if not member.isreg():
        return f"member of tar type {member.type!r} is not a regular file: refused"
    if name not in listed:
        return "not in the manifest: refused (the archive was altered, or is not this bundle)"
    return None


@dataclass
class ArchiveScan:
    """What a pass over an archive found."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: Optional[bytes] = None  # MANIFEST.json.sig, the member right after the manifest, when signed
    problems: list[FileProblem] = field(default_factory=list)
    members: list[tuple[str, str, int]] = field(default_factory=list)  # (name, type, size) in order


FileSink = Callable[[tarfile.TarFile, tarfile.TarInfo, FileEntry], Optional[FileProblem]]


def archive_files(archive: Union[Path, ArchiveFiles]) -> ArchiveFiles:
    """One archive file, or the parts of one (bundle/format/parts.py), as the readers below take it."""
    return archive if isinstance(archive, ArchiveFiles) else ArchiveFiles(archive.name, [archive])


def scan_archive(archive: Union[Path, ArchiveFiles], sink: Optional[FileSink] = None,
                 bundle_id: Optional[str] = None, expect: Optional[ArchiveScan] = None,
                 policy: Optional[SignerPolicy] = None) -> ArchiveScan:
    """One pass over the archive (one file, or its parts read as one): validate every member; hand
    each listed file to ``sink``. When something is found damaged, every part is also checked against
    its listed sha256, naming the part to copy again.

    The signature (``policy``: the site's allowed signers) is checked on the first two members,
    before the manifest is even parsed. With ``expect`` (the result of an earlier pass), the
    members must be the same ones in the same order: the file did not change between the check
    and the extraction.
    """
    files = archive_files(archive)
    path = files.first.parent / files.name
    try:
        with files.reader() as reader:
            # copybufsize is TarFile's own keyword (3.8+); typeshed's open() overloads leave it out
            with tarfile.open(fileobj=reader, mode="r:*", copybufsize=CHUNK_SIZE) as tar:  # type: ignore[call-overload]
                scan, after = _read_manifest(tar, path, bundle_id, policy, check_signature=expect is None)
                if expect is not None and (scan.manifest_bytes, scan.signature) != (expect.manifest_bytes,
                                                                                    expect.signature):
                    raise ManifestError(f"{path}: the archive changed while it was being unpacked")
                _scan_members(tar, path, scan, sink, reader if _is_plain_tar(reader) else None, expect, after)
            if scan.problems:  # a damaged archive: say which part to copy again
                scan.problems += reader.problems()
    except ManifestError:
        raise
    except DAMAGED as exc:
        if _local_error(exc):
            raise
        raise VerifyFailed(f"{path} is damaged",
                           [FileProblem(path.name, f"not a readable archive, or cut short ({exc})"),
                            *_part_problems(files)]) from None
    return scan


def _part_problems(files: ArchiveFiles) -> list[FileProblem]:
    """The parts whose sha256 is not the listed one (none for a single archive file)."""
    with files.reader() as reader:
        return reader.problems()


def archive_manifest(archive: Union[Path, ArchiveFiles], bundle_id: Optional[str] = None,
                     policy: Optional[SignerPolicy] = None) -> Manifest:
    """The manifest of an archive, read from its first members alone (the manifest and its signature, checked
    as scan_archive checks them; nothing else is read)."""
    files = archive_files(archive)
    path = files.first.parent / files.name
    try:
        with files.reader() as reader, tarfile.open(fileobj=reader, mode="r:*") as tar:
            return _read_manifest(tar, path, bundle_id, policy, check_signature=True)[0].manifest
    except DAMAGED as exc:
        if _local_error(exc):
            raise
        raise VerifyFailed(f"{path} is damaged",
                           [FileProblem(path.name, f"not a readable archive, or cut short ({exc})")]) from None


def _local_error(exc: BaseException) -> bool:
    """An OSError of this machine (disk full, permissions), not a sign of a damaged archive."""
    return isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and exc.errno is not None


def _is_plain_tar(reader: PartReader) -> bool:
    """Not gzip, bzip2 or xz: member offsets are file offsets, so a cut can be measured."""
    where = reader.tell()
    reader.seek(0)
    magic = reader.read(6) or b""
    reader.seek(where)
    return not (magic.startswith(b"\x1f\x8b") or magic.startswith(b"BZh") or magic.startswith(b"\xfd7zXZ"))


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, name: str) -> bytes:
    handle = tar.extractfile(member)
    data = handle.read() if handle else b""
    if len(data) != member.size:
        raise ManifestError(f"{path}: {name} is cut short")
    return data


def _read_manifest(tar: tarfile.TarFile, path: Path, bundle_id: Optional[str],
                   policy: Optional[SignerPolicy], check_signature: bool
                   ) -> tuple[ArchiveScan, Optional[tarfile.TarInfo]]:
    """The manifest (first member) and its signature (the second, when there is one), the signature checked
    before the manifest is parsed (a second pass compares the bytes with the first one's instead); also
    the member after them, which the member scan starts with."""
    first = tar.next()
    if first is None or member_name(first) != MANIFEST_NAME or not first.isreg():
        raise ManifestError(f"{path}: the first member must be {MANIFEST_NAME} (was "
                            f"{first.name if first else 'nothing'!r}); this is not a bundle made by `bundle pack`")
    if first.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {MANIFEST_NAME} is {human(first.size)}: not a bundle manifest")
    data = _read_member(tar, first, path, MANIFEST_NAME)
    after = tar.next()
    signature = None
    if after is not None and member_name(after) == SIGNATURE_NAME and after.isreg():
        if after.size > MAX_SIGNATURE_BYTES:
            raise ManifestError(f"{path}: {SIGNATURE_NAME} is {human(after.size)}: not an SSH signature")
        signature = _read_member(tar, after, path, SIGNATURE_NAME)
        after = tar.next()
    if check_signature:
        check_bundle_signature(data, signature, policy, f"{path}:{MANIFEST_NAME}")
    manifest = parse_manifest(data, f"{path}:{MANIFEST_NAME}")
    check_bundle_id(manifest, bundle_id, f"{path}:{MANIFEST_NAME}")
    return ArchiveScan(manifest, data, signature), after


def _scan_members(tar: tarfile.TarFile, path: Path, scan: ArchiveScan, sink: Optional[FileSink],
                  plain: Optional[PartReader], expect: Optional[ArchiveScan], first: Optional[tarfile.TarInfo]) -> None:
    plain_size = plain.size if plain is not None else None
    by_path = scan.manifest.by_path()
    listed = set(by_path)
    seen: set[str] = set()
    index = 0
    pending = [first]  # the member _read_manifest already took from the stream
    while True:
        try:
            member = pending.pop() if pending else tar.next()
        except DAMAGED as exc:
            if _local_error(exc):
                raise
            scan.problems.append(FileProblem(path.name, f"archive is damaged or cut short after {len(seen)} files ({exc})"))
            return
        if member is None:
            if plain is not None:
                _check_end_marker(path, tar.offset, plain, scan)
            break
        name = member_name(member)
        signature = (name, member.type.decode(errors="replace"), member.size)
        if expect is not None and (index >= len(expect.members) or expect.members[index] != signature):
            raise ManifestError(f"{path}: the archive changed while it was being unpacked")
        scan.members.append(signature)
        index += 1
        problem = member_problem(member, name, listed)
        if problem:
            scan.problems.append(FileProblem(shown_name(name or member.name), problem))
            continue
        if member.isdir():
            continue
        entry = by_path[name]
        if name in seen:
            scan.problems.append(FileProblem(name, "appears twice in the archive: refused"))
            continue
        seen.add(name)
        if member.size != entry.size:
            scan.problems.append(FileProblem(name, f"size mismatch: manifest says {entry.size} bytes, "
                                               f"the archive holds {member.size} bytes"))
            continue
        if plain_size is not None and member.offset_data + member.size > plain_size:
            scan.problems.append(FileProblem(name, f"archive is cut short: {member.offset_data + member.size - plain_size} "
                                               "bytes of this file are missing"))
            continue
        if sink is not None:
            try:
                sunk = sink(tar, member, entry)
            except DAMAGED as exc:
                if _local_error(exc):
                    raise
                scan.problems.append(FileProblem(name, f"archive is damaged or cut short in this file ({exc})"))
                return
            if sunk:
                scan.problems.append(sunk)
    left_out = set(scan.manifest.base.sha256) if scan.manifest.base else set()  # a delta: the base supplies these
    for missing in sorted(listed - seen):
        entry = by_path[missing]
        if entry.sha256 in left_out:
            continue
        scan.problems.append(FileProblem(missing, f"missing from the archive (expected {entry.size} bytes)"))


def _check_end_marker(path: Path, offset: int, reader: PartReader, scan: ArchiveScan) -> None:
    """tarfile stops quietly at a short or unreadable header; a whole plain tar ends with zero blocks."""
    size = reader.size
    if offset + tarfile.BLOCKSIZE > size:
        scan.problems.append(FileProblem(path.name, f"archive is cut short: it ends at byte {size} without the "
                                                "end-of-archive marker"))
        return
    reader.seek(offset)
    block = reader.read(tarfile.BLOCKSIZE) or b""
    if block.count(0) != len(block):
        scan.problems.append(FileProblem(path.name, f"archive is damaged: unreadable header at byte {offset}"))


def copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry,
                 writer: Optional[IO[bytes]], progress: Progress) -> Optional[FileProblem]:
    """Stream one member (into ``writer`` or nowhere), hashing it; a FileProblem when it differs."""
    source = tar.extractfile(member)
    assert source is not None
    digest = hashlib.sha256()
    count = 0
    while chunk := source.read(CHUNK_SIZE):
        digest.update(chunk)
        if writer is not None:
            writer.write(chunk)
        count += len(chunk)
        progress.update(len(chunk))
    actual = digest.hexdigest()
    if count != entry.size:
        return FileProblem(entry.path, f"size mismatch: expected {entry.size} bytes, actual {count} bytes")
    if actual != entry.sha256:
        return FileProblem(entry.path, f"sha256 mismatch: expected {entry.sha256}, actual {actual}")
    return None


def verify_archive(path: Union[Path, ArchiveFiles], bundle_id: Optional[str] = None, quiet: bool = False,
                   policy: Optional[SignerPolicy] = None) -> Manifest:
    """Check an archive without writing anything: its signature, members, then every file's size and sha256."""
    with Progress(None, "verify", bars_wanted(quiet)) as progress:
        scan = scan_archive(path, lambda tar, member, entry: copy_member(tar, member, entry, None, progress),
                            bundle_id, policy=policy)
    if scan.problems:
        files = archive_files(path)
        raise VerifyFailed(f"{files.first.parent / files.name} is not an intact bundle", scan.problems)
    return scan.manifest
