"""tools/cache_entry.py, the digest-keyed cache entry behind setup.sh's venvs, the image script's
wheel dirs and tars, and the toolchain's unpacked plugin sources: the digest is the one the shell
formulas printed (so existing entries stay valid), an entry is built once under its lock and
stamped last, a failed build leaves nothing that looks finished, and prune keeps what it must."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import cache_entry  # noqa: E402
from cache_entry import Entry, digest_of, prune, recipe_digest  # noqa: E402

TOOL = ROOT / "tools" / "cache_entry.py"


def sh(script: str, cwd: Path) -> str:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_the_digests_are_the_shell_formulas_digests(tmp_path):
    """`{ echo TEXT; cat FILES; } | sha256sum` (setup.sh's venv key, the toolchain's recipes) and
    `grep -v '^[[:space:]]*#' SCRIPT` (the image recipe without comment lines)."""
    (tmp_path / "a.txt").write_text("pulumi==3.272.0\n")
    (tmp_path / "b.txt").write_bytes(b"no newline at the end")
    (tmp_path / "s.sh").write_text("#!/bin/sh\n# a comment\n  \t# indented comment\necho hi  # kept\n\n")
    shell = sh("{ echo 'Python 3.11.7'; cat a.txt b.txt; } | sha256sum | cut -d' ' -f1", tmp_path).strip()
    assert recipe_digest("Python 3.11.7", [tmp_path / "a.txt", tmp_path / "b.txt"]) == shell
    assert digest_of([("text", "Python 3.11.7"), ("file", str(tmp_path / "a.txt")),
                      ("file", str(tmp_path / "b.txt"))]) == shell
    code = sh("{ echo base; grep -v '^[[:space:]]*#' s.sh; } | sha256sum | cut -d' ' -f1", tmp_path).strip()
    assert digest_of([("text", "base"), ("code", str(tmp_path / "s.sh"))]) == code
    cli = subprocess.run([sys.executable, str(TOOL), "digest", "--text", "base", "--code", str(tmp_path / "s.sh")],
                         capture_output=True, text=True, check=True)
    assert cli.stdout.strip() == code
    with pytest.raises(ValueError, match="want text, file or code"):
        digest_of([("url", "x")])


def test_an_entry_is_built_once_and_stamped_used_each_time(tmp_path):
    entry = Entry(tmp_path / "venv-abc", "abc" * 20, stamp=".installed-x")
    builds: list[Path] = []

    def build(path: Path) -> None:
        builds.append(path)
        (path / "bin").mkdir()

    assert entry.ensure(build) is True and builds == [entry.path]
    assert (entry.path / ".installed-x").read_text() == entry.digest + "\n"
    stamp = entry.path / "last-used"
    os.utime(stamp, (1, 1))
    assert entry.ensure(build) is False and len(builds) == 1
    assert stamp.stat().st_mtime > 1  # a hit is a use
    assert entry.ensure(build, force=True) is True and len(builds) == 2
    # another digest under the same stamp name is not this entry
    assert not Entry(entry.path, "def", stamp=".installed-x").is_complete()


def test_an_interrupted_or_failed_build_never_looks_finished(tmp_path):
    entry = Entry(tmp_path / "e", "d1")
    entry.path.mkdir()
    (entry.path / "half-written").write_text("x")  # a build killed before its stamp
    assert not entry.is_complete()

    def fails(path: Path) -> None:
        (path / "part").write_text("y")
        raise RuntimeError("pip failed")

    with pytest.raises(RuntimeError, match="pip failed"):
        entry.ensure(fails)
    assert not entry.path.exists()  # no half entry left behind
    entry.ensure(lambda path: (path / "whole").write_text("z"))
    assert sorted(p.name for p in entry.path.iterdir()) == [".complete", "last-used", "whole"]


def test_a_second_run_waits_for_the_first_and_then_finds_it_built(tmp_path):
    entry = Entry(tmp_path / "e", "d1")
    said: list[str] = []
    started = threading.Event()

    def slow(path: Path) -> None:
        started.set()
        time.sleep(0.5)
        (path / "x").write_text("built")

    first = threading.Thread(target=entry.ensure, args=(slow,))
    first.start()
    started.wait(5)
    built_again = entry.ensure(lambda path: pytest.fail("built twice"), log=said.append)
    first.join()
    assert built_again is False and (entry.path / "x").read_text() == "built"
    assert said == [f"another run is building {entry.path}; waiting for it"]


def test_the_command_line_builds_with_the_entry_last_and_passes_a_failure_on(tmp_path):
    target = tmp_path / "w"
    ok = subprocess.run([sys.executable, str(TOOL), "ensure", str(target), "--digest", "d1", "--prog", "t", "--",
                         "sh", "-c", 'echo made > "$0/f"'], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (target / "f").read_text() == "made\n" and (target / ".complete").read_text() == "d1\n"
    again = subprocess.run([sys.executable, str(TOOL), "ensure", str(target), "--digest", "d1", "--prog", "t", "--",
                            "false"], capture_output=True, text=True)
    assert again.returncode == 0 and f"t: cached: {target}" in again.stderr
    complete = [sys.executable, str(TOOL), "complete", str(target), "--digest"]
    assert subprocess.run([*complete, "d1"]).returncode == 0 and subprocess.run([*complete, "d2"]).returncode == 1
    failed = subprocess.run([sys.executable, str(TOOL), "ensure", str(target), "--digest", "d2", "--",
                             "sh", "-c", "exit 7"], capture_output=True, text=True)
    assert failed.returncode == 7 and not target.exists()


def made(root: Path, name: str, used_at: float, stamped: bool = True) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "payload").write_bytes(b"p" * 2000)
    if stamped:
        (path / "last-used").touch()
    for p in (*path.iterdir(), path):
        os.utime(p, (used_at, used_at))
    return path


def test_prune_removes_what_was_not_used_since_and_keeps_the_rest(tmp_path):
    now = time.time()
    stale = made(tmp_path, "x-1", now - 3600)
    unstamped = made(tmp_path, "x-2", now - 3600, stamped=False)  # falls back to the directory's time
    used = made(tmp_path, "x-3", now + 5)
    kept = made(tmp_path, "x-4", now - 3600)
    held = made(tmp_path, "x-5", now - 3600)
    other = made(tmp_path, "y-1", now - 3600)
    said: list[str] = []
    with open(tmp_path / "x-5.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run building it
        result = prune(tmp_path, "x-*", now, keep=[kept], log=said.append)
    assert not stale.exists() and not unstamped.exists()
    assert used.exists() and kept.exists() and held.exists() and other.exists()
    assert [p for p, _size, _used in result.removed] == [stale, unstamped] and result.freed >= 4000
    assert result.held == [held] and sorted(result.kept) == [used, kept]
    assert f"prune: removed {stale} (2.00 KB, last used " in said[0]
    assert said[-1] == f"prune: {held} is held by a run that is building it: kept"


def test_prune_from_the_command_line_checks_its_time(tmp_path):
    bad = subprocess.run([sys.executable, str(TOOL), "prune", str(tmp_path), "--glob", "x-*", "--since", "yesterday",
                          "--prog", "setup"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "setup: --prune-unused-since wants seconds since the epoch (date +%s), not 'yesterday'" in bad.stderr
    none = subprocess.run([sys.executable, str(TOOL), "prune", str(tmp_path / "missing"), "--glob", "x-*", "--since", "0",
                           "--what", "things"], capture_output=True, text=True)
    assert none.returncode == 0 and "prune: 0 B freed; 0 things used since 1970-01-01T00:00:00Z kept" in none.stderr


def test_human_sizes_are_decimal_as_docker_prints_them():
    assert [cache_entry.human(n) for n in (0, 999, 1000, 5_300_000_000)] == ["0 B", "999 B", "1.00 KB", "5.30 GB"]
