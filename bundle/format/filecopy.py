"""Copy a file with its sha256 taken on the way, atomically; remember hashes by (size, mtime).

Shared by `build` (sources -> bundle) and `install` (bundle -> host directories):

- ``copy_with_sha256`` reads the source once, hashing what it writes into a temp file beside
  the target, checks the expected sha256 when one is given, and only then renames the temp
  file into place (mode 0644, or 0755 for an executable, never mkstemp's 0600; with ``fsync``
  the file and then its directory are fsynced, so the rename survives a power cut): a reader
  never sees a half-written file under the real name.
- Temp files are named ``.<name>.part-<pid>-<random>``: unique per process and per copy, and
  naming their owner. An interrupted copy leaves one behind; ``remove_partials`` deletes those
  whose owner is gone, never one that a live process (another install or build) is writing.
- ``HashCache`` is a small JSON file of {relative path: [size, mtime_ns, inode, sha256]}: a
  file whose size, mtime and inode are unchanged is not read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from bundle.format.manifest import CHUNK_SIZE, BundleError, fsync_directory, sha256_file, write_atomic

PART_PREFIX = ".part-"
PART_NAME_KEEP = 120  # bytes of the target's name kept in its temp name (NAME_MAX is 255 bytes)
# .<name>.part-<pid>-<8 random> (mkstemp), .<name>.part-<pid>-<8 random>-link (link_or_copy);
# before pids were in the names: .<name>.part-<8 random> and .<name>.part-link (owner unknown)
_PART_RE = re.compile(r"\..*\.part-(?:(?P<pid>[0-9]{1,10})-)?[a-z0-9_]{8}(?:-link)?|\..*\.part-link", re.S)


class CopyError(BundleError):
    """A copied file did not have the content the manifest promises."""


def file_mode(st_mode: int) -> int:
    """0755 for executables (the Pulumi CLI and plugins), 0644 for the rest; never setuid."""
    return 0o755 if st_mode & 0o111 else 0o644


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def part_prefix(dest: Path) -> str:
    """The start of a temp file's name for ``dest``: ``.<name>.part-<pid>-`` (mkstemp adds 8 random characters)."""
    kept = os.fsencode(dest.name)[:PART_NAME_KEEP].decode("utf-8", "ignore")  # never half a character
    return f".{kept}{PART_PREFIX}{os.getpid()}-"


def copy_with_sha256(src: Path, dest: Path, *, expect_sha256: Optional[str] = None,
                     expect_size: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
                     fsync: bool = True) -> str:
    """Copy ``src`` to ``dest`` atomically; returns the sha256 of the bytes written.

    ``fsync``: the file's data before the rename, and its directory after it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=part_prefix(dest))
    written = 0
    try:
        with open(src, "rb", buffering=0) as reader, os.fdopen(fd, "wb", buffering=0) as writer:
            src_stat = os.fstat(reader.fileno())
            while count := reader.readinto(buffer):
                chunk = view[:count]
                digest.update(chunk)
                writer.write(chunk)
                written += count
                if progress:
                    progress(count)
            if fsync:
                os.fsync(writer.fileno())
        sha = digest.hexdigest()
        if expect_size is not None and written != expect_size:
            raise CopyError(f"{src}: size mismatch: expected {expect_size} bytes, actual {written} bytes")
        if expect_sha256 is not None and sha != expect_sha256:
            raise CopyError(f"{src}: sha256 mismatch: expected {expect_sha256}, actual {sha}")
        os.chmod(tmp, file_mode(src_stat.st_mode))
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_directory(dest.parent)
    return sha


def link_or_copy(src: Path, dest: Path, progress: Optional[Callable[[int], None]] = None) -> Optional[str]:
    """Hard-link ``src`` to ``dest`` (atomically) when both are on one file system; returns None then,
    else copies and returns the sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{part_prefix(dest)}{secrets.token_hex(4)}-link"  # unique: never another's temp link
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
        return None
    except OSError:
        if os.path.lexists(tmp):
            tmp.unlink()
        return copy_with_sha256(src, dest, progress=progress)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (this process counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def partial_owner(name: str) -> Optional[int]:
    """The pid in a temp file's name; -1 for a temp file of unknown owner (older names); None: no temp file."""
    match = _PART_RE.fullmatch(name)
    if match is None:
        return None
    return int(match.group("pid")) if match.group("pid") else -1


def remove_partials(root: Path, recursive: bool = True) -> int:
    """Delete leftovers of interrupted copies in ``root`` (and below it when ``recursive``).

    Only those no live process owns: a temp file whose pid runs on this machine is another
    install's (or build's) copy in progress and stays; one of a dead pid, or of an older name
    without a pid, is a leftover. Install calls this while it holds the directory's lock, so no
    other install is writing there at that moment. Symlinks are never followed."""
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            owner = partial_owner(name)
            if owner is None or (owner > 0 and pid_alive(owner)):
                continue
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:  # its owner finished (renamed or removed it) just now
                pass
        if not recursive:
            break
    return removed


class HashCache:
    """{key: (size, mtime_ns, inode, sha256)} persisted as JSON; unreadable means empty."""

    FORMAT = 1

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, list[Any]] = {}
        self.meta: dict[str, Any] = {}  # free-form facts saved alongside (install: the bundle id, the stack)
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and data.get("format") == self.FORMAT and isinstance(data.get("files"), dict):
                self.entries = data["files"]
                meta = data.get("meta")
                self.meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            pass

    @staticmethod
    def _signature(st: os.stat_result) -> list[Any]:
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def lookup(self, key: str, st: os.stat_result) -> Optional[str]:
        entry = self.entries.get(key)
        if entry and len(entry) == 4 and entry[:3] == self._signature(st) and stat.S_ISREG(st.st_mode):
            return str(entry[3])
        return None

    def record(self, key: str, st: os.stat_result, sha256: str) -> None:
        value = [*self._signature(st), sha256]
        if self.entries.get(key) != value:
            self.entries[key] = value
            self._dirty = True

    def set_meta(self, **values: Any) -> None:
        if any(self.meta.get(k) != v for k, v in values.items()):
            self.meta.update(values)
            self._dirty = True

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._dirty = True

    def forget_except(self, keep: set[str]) -> None:
        for key in set(self.entries) - keep:
            del self.entries[key]
            self._dirty = True

    def sha256(self, key: str, path: Path, progress: Optional[Callable[[int], None]] = None) -> str:
        """The cached sha256 of ``path`` when unchanged, else hash it now (and remember)."""
        st = os.stat(path)
        cached = self.lookup(key, st)
        if cached is not None:
            return cached
        sha = sha256_file(path, progress=progress)
        self.record(key, st, sha)
        return sha

    def save(self) -> None:
        if self._dirty:
            data = {"format": self.FORMAT, "meta": self.meta, "files": self.entries}
            write_atomic(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
            self._dirty = False
