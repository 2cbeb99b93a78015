"""Install's locks: an `fcntl.flock` per destination directory, so two installs never write one at once.

Standard library only (install runs with the server's bare python3).

Each directory an install writes (the models directory, the project, PULUMI_HOME, a venv
outside the project) holds a lock file, `.xinference-offline.lock`. Install takes every lock
it needs, in one order (sorted by real path, so two installs never deadlock), after its
checks and before its first write, and holds them to its end.

A second install that finds a lock held **waits** for the first to finish, and says once on
stderr whom it waits for:

    install: waiting for /data/docker_models/.xinference-offline.lock: another install holds it
    (pid 4242: python3 -m bundle install ../bundle); this one goes on when that one ends
    (Ctrl-C stops this one; `kill 4242` stops that one)

Waiting rather than refusing: the second install then finds the files in place and ends with
"nothing to do", and a script that runs install twice needs no retry loop. The holder is
named from the kernel's own table (/proc/locks), so the lock file is never written: a second
install that has nothing to do changes nothing, not even the lock file's mtime. The lock
goes with the process (a killed install leaves no stale lock). The file is never removed: a
third install could otherwise lock a new file while the second still holds the old one.

The lock file is opened with O_NOFOLLOW: a symlink planted under its name is refused, never
followed (an O_CREAT through it would create a file where it points).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Iterable, Optional, TextIO

from bundle.format.layout import INSTALL_LOCK
from bundle.format.manifest import BundleError

LOCK_NAME = INSTALL_LOCK


class LockError(BundleError):
    """A lock file that cannot be used (a symlink, a directory, no permission): exit 1."""


def lock_holders(st: os.stat_result, locks_table: str = "/proc/locks") -> list[int]:
    """Pids holding a flock on the file of ``st``, from the kernel's table (empty when it cannot say:
    not Linux, a lock taken on another host of a network file system, a pid in another namespace)."""
    try:
        with open(locks_table, encoding="ascii", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    same_inode, same_file = [], []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:1048589 0 EOF" (a "->" marks a waiter, not a holder)
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK" or not fields[4].isdigit():
            continue
        parts = fields[5].split(":")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) != st.st_ino:
            continue
        pid = int(fields[4])
        if pid <= 0:
            continue
        same_inode.append(pid)
        try:
            if (int(parts[0], 16), int(parts[1], 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
                same_file.append(pid)
        except ValueError:
            continue
    return sorted(set(same_file or same_inode))


def describe_pid(pid: int) -> str:
    """``pid 4242: python3 -m bundle install ...`` (its command line when /proc shows it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read(2000).rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    command = " ".join(os.fsdecode(arg) for arg in argv if arg)
    command = command if len(command) <= 300 else command[:300] + "..."
    return f"pid {pid}: {command}" if command else f"pid {pid}"


def waiting_line(path: Path, holders: list[int]) -> str:
    """What an install that has to wait says, naming the holder."""
    if holders:
        who = "; ".join(describe_pid(pid) for pid in holders)
        stop = f"`kill {' '.join(str(pid) for pid in holders)}` stops that one"
    else:
        who = "a process this machine cannot name: another host, or another pid namespace"
        stop = "stopping that one frees it"
    return (f"install: waiting for {path}: another install holds it ({who}); this one goes on when that one ends "
            f"(Ctrl-C stops this one; {stop})")


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        why = "a symlink (install never follows one there); remove it" if os.path.islink(path) else \
            f"{exc.strerror}; remove or fix it"
        raise LockError(f"{path}: cannot be used as install's lock file: {why}") from None
    if not os.path.isfile(path) or not os.path.samestat(os.fstat(fd), os.lstat(path)):
        os.close(fd)
        raise LockError(f"{path}: is not a regular file; remove it (install keeps its lock there)")
    return fd


class InstallLocks:
    """``with InstallLocks(dirs, err):`` holds every directory's lock (waiting for other installs)."""

    def __init__(self, directories: Iterable[Path], err: Optional[TextIO] = None):
        reals = {os.path.realpath(d): Path(d) for d in directories}  # one lock per directory however spelled
        self.directories = [reals[real] for real in sorted(reals)]
        self.err = err if err is not None else sys.stderr
        self.fds: list[int] = []

    def __enter__(self) -> "InstallLocks":
        try:
            for directory in self.directories:
                directory.mkdir(parents=True, exist_ok=True)
                self.fds.append(self._take(directory / LOCK_NAME))
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _take(self, path: Path) -> int:
        fd = _open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(waiting_line(path, lock_holders(os.fstat(fd))), file=self.err, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())  # closing the descriptor releases its flock
