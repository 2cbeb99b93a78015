"""An archive split into parts for media with a file size limit (standard library only).

`pack --max-part-size 4G` writes ``NAME.tar.part000``, ``NAME.tar.part001``, ... and
``NAME.tar.sha256``, which lists the sha256 of every part and of the whole archive (the parts
joined), so `sha256sum -c --ignore-missing NAME.tar.sha256` checks the parts anywhere. Sizes take
decimal units (4G = 4,000,000,000 bytes, under FAT32's 4 GiB - 1 limit; 4Gi is 4 GiB, too big for
FAT32) so the usual spelling fits the usual stick.

On the site ``open_archive`` takes the archive, its first part, or the set of parts, and reads the
parts as one file (``PartReader``: seekable, as tarfile wants). The set is checked before any byte
is used: numbering from 000 without a gap, the same parts the .sha256 lists. Every bundle file's
sha256 is checked as the parts are read, so an intact set is read once; when a file or header is
found damaged, ``PartReader.problems`` hashes the parts and names each one whose sha256 differs from
the listing (the part to copy again).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from bundle.format.errors import FileProblem, UsageError, VerifyFailed
from bundle.format.manifest import fsync_directory, sha256_file

PART_RE = re.compile(r"^(?P<archive>.+)\.part(?P<index>\d{3,})$")
_UNITS = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12,
          "ki": 2 ** 10, "mi": 2 ** 20, "gi": 2 ** 30, "ti": 2 ** 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.I)
MIN_PART_SIZE = 10 ** 6  # 1M; smaller parts would only make a long list of files


def part_name(archive_name: str, index: int) -> str:
    return f"{archive_name}.part{index:03d}"


def parse_part_size(text: str) -> int:
    """``4G`` -> 4,000,000,000 (decimal units; ``Ki``/``Mi``/``Gi`` are binary). UsageError names the value."""
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(f"--max-part-size {text!r}: expected a size like 4G (4,000,000,000 bytes: fits FAT32), "
                         "700M or 4000000000")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size < MIN_PART_SIZE:
        raise UsageError(f"--max-part-size {text!r}: {size} bytes is below the 1M (1,000,000 bytes) minimum; "
                         "give e.g. 4G")
    return size


def sums_text(parts: Sequence[tuple[str, str]], whole_name: str, whole_sha256: str) -> str:
    """The .sha256 file: every part, then the whole archive, in `sha256sum` format."""
    return "".join(f"{digest}  {name}\n" for name, digest in (*parts, (whole_name, whole_sha256)))


def read_sums(path: Path) -> dict[str, str]:
    """{file name: sha256} of a `sha256sum` file ({} when there is none); malformed lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if re.fullmatch(r"[0-9a-f]{64}", digest) and name:
            sums[name.lstrip("*")] = digest
    return sums


# ---------------------------------------------------------------------------------------------
# writing


class PartWriter:
    """A write-only file that cuts what it is given into parts of at most ``max_size`` bytes, each
    written under a hidden temp name; ``commit`` renames them all into place (removing parts of an
    earlier pack of the same name beyond the new count), ``discard`` removes them."""

    def __init__(self, output: Path, max_size: int):
        self.output, self.max_size = output, max_size
        self._token = secrets.token_hex(4)
        self._temps: list[Path] = []
        self.digests: list[str] = []
        self._handle: Optional[io.BufferedWriter] = None
        self._hash = hashlib.sha256()
        self._left = 0

    def _next_part(self) -> None:
        self._close_part()
        temp = self.output.parent / f".{part_name(self.output.name, len(self._temps))}.{self._token}"
        self._temps.append(temp)
        self._handle = open(temp, "xb")
        self._hash = hashlib.sha256()
        self._left = self.max_size

    def _close_part(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
            self.digests.append(self._hash.hexdigest())

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # commit or discard decides what stays

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._handle is None or self._left == 0:
                self._next_part()
            piece = view[:self._left]
            assert self._handle is not None
            self._handle.write(piece)
            self._hash.update(piece)
            self._left -= len(piece)
            view = view[len(piece):]
        return len(data)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def commit(self) -> list[tuple[str, str]]:
        """Rename every part into place; returns [(part name, sha256)]."""
        if self._handle is None and not self._temps:
            self._next_part()  # an empty stream still makes one (empty) part
        self._close_part()
        names = [part_name(self.output.name, index) for index in range(len(self._temps))]
        for temp, name in zip(self._temps, names, strict=True):
            os.chmod(temp, 0o644)
            os.replace(temp, self.output.parent / name)
        self._temps = []
        stale = [p for p in existing_parts(self.output) if p.name not in names]
        for path in stale + ([self.output] if self.output.is_file() else []):
            path.unlink()  # an earlier pack's extra parts, or its single file, would mix with these
        fsync_directory(self.output.parent)
        return list(zip(names, self.digests, strict=True))

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for temp in self._temps:
            if temp.exists():
                temp.unlink()


def existing_parts(archive: Path) -> list[Path]:
    """``archive``'s parts that exist beside it, in numeric order."""
    if not archive.parent.is_dir():
        return []
    found = []
    for path in archive.parent.iterdir():
        match = PART_RE.match(path.name)
        if match and match.group("archive") == archive.name:
            found.append((int(match.group("index")), path))
    return [path for _index, path in sorted(found)]


# ---------------------------------------------------------------------------------------------
# reading


@dataclass
class ArchiveFiles:
    """What the site was given: one archive file, or the parts of one."""

    name: str  # the archive's name (NAME.tar), for messages and the .sha256 lookup
    paths: list[Path]
    expected: dict[str, str] = field(default_factory=dict)  # part name -> sha256, from NAME.tar.sha256

    @property
    def split(self) -> bool:
        return bool(PART_RE.match(self.paths[0].name))

    @property
    def first(self) -> Path:
        return self.paths[0]

    def reader(self) -> "PartReader":
        return PartReader(self.paths, self.expected)


def resolve_archive(given: Sequence[Path]) -> ArchiveFiles:
    """The archive named on the command line: a file, its first part (the others are found beside it),
    NAME.tar when only its parts exist, or the parts themselves. The set must run from part000 without
    a gap and hold every part NAME.tar.sha256 lists: a missing one is named (exit 1)."""
    paths = [Path(p) for p in given]
    first = paths[0]
    match = PART_RE.match(first.name)
    if len(paths) == 1 and match is None:
        if first.is_file() or not existing_parts(first):
            if not first.is_file():
                raise UsageError(f"{first}: no such archive (nor any {part_name(first.name, 0)} beside it)")
            return ArchiveFiles(first.name, [first])
        match = PART_RE.match(existing_parts(first)[0].name)
        paths = existing_parts(first)
    assert match is not None or len(paths) > 1
    archive = first.parent / (match.group("archive") if match else first.name)
    if len(paths) == 1:
        paths = existing_parts(archive)
    named = {}
    for path in paths:
        part = PART_RE.match(path.name)
        if part is None or part.group("archive") != archive.name or path.parent != archive.parent:
            raise UsageError(f"{path}: not a part of {archive} (give the first part, or every part of one archive)")
        named[int(part.group("index"))] = path
    sums = read_sums(archive.parent / f"{archive.name}.sha256")
    listed = {name: digest for name, digest in sums.items() if PART_RE.match(name)}
    problems = []
    count = max([*named, *(int(PART_RE.match(n).group("index")) for n in listed)], default=-1) + 1  # type: ignore
    for index in range(count):
        name = part_name(archive.name, index)
        if index not in named or not named[index].is_file():
            where = f"listed in {archive.name}.sha256" if name in listed else "the parts run on past it"
            problems.append(FileProblem(name, f"missing ({where}): copy it from the medium beside the others"))
    if problems:
        raise VerifyFailed(f"{archive}: the archive's parts are incomplete; nothing was written", problems)
    return ArchiveFiles(archive.name, [named[index] for index in range(count)], listed)


class PartReader(io.RawIOBase):
    """The parts (or the one archive file) read as one seekable file."""

    def __init__(self, paths: Sequence[Path], expected: dict[str, str]):
        super().__init__()
        self.paths = list(paths)
        self.expected = expected
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.size = sum(self.sizes)
        self._handles = [open(p, "rb", buffering=0) for p in self.paths]
        self._at = [0] * len(self.paths)  # where each handle is (a seek only when a read starts elsewhere)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _part_at(self, pos: int) -> int:
        index = 0
        while index + 1 < len(self.starts) and self.starts[index + 1] <= pos:
            index += 1
        return index

    def read(self, size: int = -1) -> bytes:
        """Bytes straight from the part files (no intermediate buffer: this is the archive's hot path)."""
        if size is None or size < 0:
            size = self.size - self._pos
        pieces = []
        while size > 0 and self._pos < self.size:
            index = self._part_at(self._pos)
            local = self._pos - self.starts[index]
            handle = self._handles[index]
            if self._at[index] != local:
                handle.seek(local)
            data = handle.read(min(size, self.sizes[index] - local))
            if not data:
                break  # a part shorter than when it was opened
            pieces.append(data)
            self._at[index] = local + len(data)
            self._pos += len(data)
            size -= len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: Any) -> int:  # io.RawIOBase's buffer: any writable bytes-like object
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()

    def problems(self) -> list[FileProblem]:
        """Each part whose sha256 is not the one its .sha256 lists (reads every listed part once more)."""
        found = []
        for path in self.paths:
            wanted = self.expected.get(path.name)
            if wanted is None:
                continue
            actual = sha256_file(path)
            if actual != wanted:
                found.append(FileProblem(path.name, f"damaged: sha256 {actual}, the .sha256 lists {wanted}: "
                                                    "copy this part again"))
        return found
