"""tools/setup.sh --prune-unused-since on a scratch cache: the venvs a run did not link go, the
ones it linked stay, and neither the venv a checkout names nor one an install holds is touched."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(tmp_path: Path) -> Path:
    """A checkout holding only tools/setup.sh and the cache entries it uses (the prune needs nothing else)."""
    project = tmp_path / "checkout"
    (project / "tools").mkdir(parents=True)
    for name in ("setup.sh", "cache_entry.py"):
        shutil.copy(ROOT / "tools" / name, project / "tools" / name)
    return project


def prune(project: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XINFERENCE_OFFLINE_CACHE=str(cache))
    return subprocess.run(["bash", str(project / "tools" / "setup.sh"), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def venv(cache: Path, digest: str, used_at: float, stamped: bool = True) -> Path:
    """A cached venv as setup.sh leaves it: bin/python, its install stamp, and (since stamps) last-used."""
    v = cache / f"venv-{digest}"
    (v / "bin").mkdir(parents=True)
    (v / "bin" / "python").write_bytes(b"x" * 10_000)
    (v / ".installed-requirements-test").write_text(digest + "\n")
    if stamped:
        (v / "last-used").touch()
    for path in (*v.rglob("*"), v):
        os.utime(path, (used_at, used_at))
    return v


def test_prune_removes_the_venvs_not_used_since_and_keeps_the_rest(tmp_path):
    project, cache = checkout(tmp_path), tmp_path / "cache"
    started = time.time()
    stale = venv(cache, "aaaaaaaaaaaa", started - 7200)
    unstamped = venv(cache, "bbbbbbbbbbbb", started - 7200, stamped=False)
    used = venv(cache, "cccccccccccc", started + 5)
    linked = venv(cache, "dddddddddddd", started - 7200)
    (project / "venv").symlink_to(linked)
    installing = venv(cache, "eeeeeeeeeeee", started - 7200)
    with open(f"{installing}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as an install in another run holds it
        done = prune(project, cache, "--prune-unused-since", str(int(started)))
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and not unstamped.exists()
    assert used.is_dir() and linked.is_dir() and installing.is_dir()
    assert f"setup: prune: removed {stale} (10.01 KB, last used " in done.stderr
    assert f"setup: prune: {installing} is held by a run that is building it: kept" in done.stderr
    assert "3 venv(s) used since" in done.stderr, done.stderr
    assert (project / "venv" / "bin" / "python").is_file()  # the checkout's link still resolves


def test_prune_of_an_empty_or_missing_cache_does_nothing(tmp_path):
    done = prune(checkout(tmp_path), tmp_path / "nothing-here", "--prune-unused-since", "0")
    assert done.returncode == 0 and "setup: prune: 0 B freed; 0 venv(s)" in done.stderr, done.stderr


def test_a_bad_prune_value_or_argument_is_a_usage_error(tmp_path):
    project, cache = checkout(tmp_path), tmp_path / "cache"
    kept = venv(cache, "aaaaaaaaaaaa", 0)
    for args, said in ((["--prune-unused-since", "yesterday"], "wants seconds since the epoch (date +%s), not 'yesterday'"),
                       (["--prune-unused-since"], "not ''"),
                       (["--tests"], "unknown argument '--tests' (--test, or --prune-unused-since EPOCH)")):
        done = prune(project, cache, *args)
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
    assert kept.is_dir()
