"""A digest-keyed cache entry: a directory built once, under a lock, by whichever run needs it
first; complete when its stamp file holds the digest of what it was built from; stamped
`last-used` by every run that uses it; pruned when no run has used it since a given time.

The one implementation behind tools/setup.sh (the venvs), tools/xinference-image.sh (the wheel
dirs and the image tars) and tools/pulumi_toolchain.py (the toolchain dir's lock, the unpacked
plugin sources). Standard library only: setup.sh runs it with the system python3 before any
venv exists.

    python3 tools/cache_entry.py digest [--text TEXT | --file PATH | --code PATH]...
        the sha256 of its parts in order: TEXT and a newline, a file's bytes, a file's lines
        that are not comment lines (a reworded comment must not cost a rebuild)
    python3 tools/cache_entry.py ensure DIR --digest HEX [--stamp NAME] [--force] [--prog NAME] -- COMMAND...
        DIR complete: stamp it used. Else, under DIR.lock (waiting for a run that holds it):
        empty DIR, run COMMAND with DIR as its last argument, stamp DIR complete, stamp it used.
        Exit status: COMMAND's when it fails (DIR is then removed), else 0.
    python3 tools/cache_entry.py complete DIR --digest HEX [--stamp NAME]
        exit status 0 when DIR is complete, 1 when not
    python3 tools/cache_entry.py prune ROOT --glob 'venv-*' --since EPOCH [--keep PATH]...
                                      [--prog NAME] [--what 'venv(s)']
        remove the entries of ROOT not used since EPOCH, except the --keep ones and any whose
        lock a run holds

The layout of an entry DIR: DIR/<stamp> (default .complete; written last, by rename), DIR/last-used
(its mtime is the last use), DIR.lock beside DIR (so emptying DIR never drops a held lock).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEFAULT_STAMP = ".complete"
LAST_USED = "last-used"


def digest_of(parts: Iterable[tuple[str, str]]) -> str:
    """sha256 of ("text", TEXT) as TEXT + newline (what `echo TEXT | sha256sum` hashes), ("file", PATH)
    as the file's bytes, ("code", PATH) as the file's lines that are not comment lines."""
    h = hashlib.sha256()
    for kind, value in parts:
        if kind == "text":
            h.update(value.encode() + b"\n")
        elif kind == "file":
            h.update(Path(value).read_bytes())
        elif kind == "code":
            for line in Path(value).read_bytes().splitlines(keepends=True):
                if not line.lstrip().startswith(b"#"):
                    h.update(line)
        else:
            raise ValueError(f"digest part kind {kind!r}: want text, file or code")
    return h.hexdigest()


def recipe_digest(text: str, files: Iterable[Path | str] = ()) -> str:
    """The digest of a recipe: its TEXT (and a newline), then its FILES' bytes, as
    `{ echo TEXT; cat FILES; } | sha256sum` prints it."""
    return digest_of([("text", text), *(("file", str(f)) for f in files)])


def write_atomic(path: Path, text: str) -> None:
    """Write a small file by rename: a reader sees the old file or the whole new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _try_flock(f: IO[str]) -> bool:
    """Take f's exclusive flock if no other open file holds it; whether it was taken."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False


@contextlib.contextmanager
def locked(lock: Path, waiting: str | None = None, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the flock of the file LOCK; when another process holds it, say WAITING and wait."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        if not _try_flock(f):
            if waiting and log:
                log(waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_locked(lock: Path) -> Iterator[bool]:
    """Hold LOCK's flock if no other process holds it: yields whether it was had (a missing lock
    file is had at once, and not created)."""
    if not lock.exists():
        yield True
        return
    with open(lock, "a") as f:
        had = _try_flock(f)
        try:
            yield had
        finally:
            if had:
                fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Entry:
    """A cache entry DIR built from inputs whose digest is DIGEST."""

    path: Path
    digest: str
    stamp: str = DEFAULT_STAMP

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def is_complete(self) -> bool:
        try:
            return (self.path / self.stamp).read_text().strip() == self.digest
        except OSError:
            return False

    def mark_used(self) -> None:
        (self.path / LAST_USED).touch()

    def ensure(self, build: Callable[[Path], None], force: bool = False,
               log: Callable[[str], None] | None = None) -> bool:
        """Build the entry unless it is complete (or FORCE); stamp it used. True when built here."""
        if not force and self.is_complete():
            self.mark_used()
            return False
        with locked(self.lock, f"another run is building {self.path}; waiting for it", log):
            if not force and self.is_complete():  # that run built it
                self.mark_used()
                return False
            shutil.rmtree(self.path, ignore_errors=True)  # an interrupted build's leftovers, or --force
            self.path.mkdir(parents=True)
            try:
                build(self.path)
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)  # never half an entry (a kill still can: see above)
                raise
            write_atomic(self.path / self.stamp, self.digest + "\n")
        self.mark_used()
        return True


def last_used(path: Path) -> float:
    """When an entry was last used: its last-used stamp, else (made before stamps, or cut off
    before its first use) the directory itself."""
    try:
        return (path / LAST_USED).stat().st_mtime
    except OSError:
        return path.stat().st_mtime


def size_of(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def human(size: float) -> str:
    """5.12 GB: decimal units, as docker prints sizes."""
    units = ["B", "KB", "MB", "GB", "TB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{int(size)} B" if i == 0 else f"{size:.2f} {units[i]}"


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass
class Pruned:
    """What a prune did: the entries removed (path, bytes, last used), kept, and kept because held."""

    removed: list[tuple[Path, int, float]] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    held: list[Path] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(size for _path, size, _used in self.removed)


def stale_entries(root: Path, glob: str, since: float, keep: Iterable[Path] = ()) -> tuple[list[Path], list[Path]]:
    """(stale, kept): the entry dirs of ROOT matching GLOB not used since SINCE (and not in KEEP),
    and the others."""
    keep_real = {os.path.realpath(p) for p in keep}
    stale: list[Path] = []
    kept: list[Path] = []
    for path in sorted(root.glob(glob)) if root.is_dir() else []:
        if not path.is_dir() or path.is_symlink():
            continue
        if last_used(path) >= since or os.path.realpath(path) in keep_real:
            kept.append(path)
        else:
            stale.append(path)
    return stale, kept


def remove_entry(path: Path, result: Pruned) -> bool:
    """Remove one entry (and its lock file) unless a run holds its lock; record it in RESULT."""
    lock = path.with_name(path.name + ".lock")
    with try_locked(lock) as had:
        if not had:
            result.held.append(path)
            return False
        used = last_used(path)
        size = size_of(path)
        shutil.rmtree(path)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    result.removed.append((path, size, used))
    return True


def prune(root: Path, glob: str, since: float, keep: Iterable[Path] = (),
          log: Callable[[str], None] = lambda _m: None) -> Pruned:
    """Remove the entries of ROOT matching GLOB not used since SINCE, except KEEP and the held ones."""
    stale, kept = stale_entries(root, glob, since, keep)
    result = Pruned(kept=kept)
    for path in stale:
        if remove_entry(path, result):
            _p, size, used = result.removed[-1]
            log(f"prune: removed {path} ({human(size)}, last used {utc(used)})")
        else:
            log(f"prune: {path} is held by a run that is building it: kept")
    return result


def _part_of(kind: str) -> Callable[[str], tuple[str, str]]:
    return lambda value: (kind, value)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cache_entry.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dig = sub.add_parser("digest")
    for kind in ("text", "file", "code"):
        dig.add_argument(f"--{kind}", dest="parts", action="append", default=[], type=_part_of(kind))
    com = sub.add_parser("complete")
    ens = sub.add_parser("ensure")
    for p in (com, ens):
        p.add_argument("dir", type=Path)
        p.add_argument("--digest", required=True)
        p.add_argument("--stamp", default=DEFAULT_STAMP)
    ens.add_argument("--force", action="store_true")
    ens.add_argument("--prog", default="cache")
    pru = sub.add_parser("prune")
    pru.add_argument("root", type=Path)
    pru.add_argument("--glob", required=True)
    pru.add_argument("--since", required=True)
    pru.add_argument("--keep", action="append", default=[], type=Path)
    pru.add_argument("--prog", default="cache")
    pru.add_argument("--what", default="entries")
    # ensure's COMMAND is everything after the first "--" (argparse would take its options as ours)
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    if args.command == "digest":
        print(digest_of(args.parts))
        return 0
    if args.command == "complete":
        return 0 if Entry(args.dir, args.digest, args.stamp).is_complete() else 1

    def log(message: str) -> None:
        print(f"{args.prog}: {message}", file=sys.stderr, flush=True)

    if args.command == "ensure":
        if not cmd:
            parser.error("ensure wants a COMMAND after --")

        def build(path: Path) -> None:
            code = subprocess.call([*cmd, str(path)])
            if code != 0:
                raise SystemExit(code)

        entry = Entry(args.dir.absolute(), args.digest, args.stamp)
        if not entry.ensure(build, force=args.force, log=log):
            log(f"cached: {entry.path}")
        return 0
    if not args.since.isdigit():
        log(f"--prune-unused-since wants seconds since the epoch (date +%s), not '{args.since}'")
        return 2
    since = int(args.since)
    result = prune(args.root, args.glob, since, args.keep, log)
    log(f"prune: {human(result.freed)} freed; {len(result.kept) + len(result.held)} {args.what} used since "
        f"{utc(since)} kept")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
