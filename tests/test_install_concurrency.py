"""Two installs at once (issue 12, class 9): real processes, one models directory, no lost files.

The second install waits for the first (an `fcntl.flock` on `.xinference-offline.lock` in the
models directory), naming it; temp files carry their owner's pid, and the cleanup of
interrupted copies removes only those whose owner is gone. Every install here runs as an
operator runs it: `python3 -S -m bundle install`, a bare Python, as a separate process.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bundle.format.filecopy
from bundle.format.filecopy import partial_owner, remove_partials
from bundle.format.layout import INSTALL_RECORD
from bundle.install.lock import LOCK_NAME, lock_holders
from tests.bundle_kit import build_args, cli, make_site, tree

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 64  # 64 x 512 KiB: long enough to copy that a second install meets the first at work
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("concurrency")
    shards = {f"shard-{i:03}.bin": os.urandom(512 * 1024) for i in range(SHARDS)}
    site = make_site(root / "online", models={"big": shards, "small": {"config.json": b'{"dim": 8}'}})
    code, _, err = cli(*build_args(site))
    assert code == 0, err
    return site.out


def install_cmd(bundle: Path, models: Path) -> list[str]:
    return [sys.executable, "-S", "-m", "bundle", "install", str(bundle), "--models-dir", str(models),
            "--skip", "program", "--skip", "venv", "--skip", "pulumi", "--skip", "stack", "--quiet"]


def start(argv: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(argv, cwd=cwd, env=env, text=True, **kwargs)


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if partial_owner(p.name) is not None]


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_installed(bundle: Path, models: Path) -> None:
    """Every model file byte for byte the bundle's, a complete record, no temp file left."""
    for name in ("big", "small"):
        assert tree(models / name) == tree(bundle / "models" / name), name
    record = json.loads((models / INSTALL_RECORD).read_text())
    assert set(record["files"]) == {str(p.relative_to(bundle / "models")) for p in (bundle / "models").rglob("*")
                                    if p.is_file()}
    assert partials(models) == []


def test_two_installs_in_parallel_leave_a_correct_directory_and_lose_no_file(big_bundle, tmp_path):
    models = tmp_path / "models"
    procs = [start(install_cmd(big_bundle, models), tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    results = [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs, strict=True)]
    for code, _out, err in results:
        assert code == 0, err
    assert_installed(big_bundle, models)
    # one after the other: exactly one copied everything, the other found it all in place
    outs = sorted(out for _code, out, _err in results)
    copied = [out for out in outs if f"{SHARDS + 1} files copied" in out]
    idle = [out for out in outs if "install: nothing to do: everything is already in place" in out]
    assert len(copied) == 1 and len(idle) == 1, outs


def test_a_second_install_waits_for_the_holder_naming_it_then_finishes(big_bundle, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    holder = start([sys.executable, "-c", HOLDER, str(models / LOCK_NAME)], tmp_path, stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "same-models").symlink_to(models)  # the lock is the directory's, however it is spelled
        err_file = tmp_path / "install.err"
        with open(err_file, "w") as err:
            waiting = start(install_cmd(big_bundle, tmp_path / "same-models"), tmp_path, stdout=subprocess.PIPE,
                            stderr=err)
        wait_for(lambda: "waiting for" in err_file.read_text(), what="the waiting message")
        message = err_file.read_text()
        assert f"install: waiting for {tmp_path / 'same-models' / LOCK_NAME}: another install holds it (pid " \
               f"{holder.pid}: {sys.executable} -c" in message, message
        assert f"this one goes on when that one ends (Ctrl-C stops this one; `kill {holder.pid}` stops that one)" \
            in message
        time.sleep(0.3)
        assert waiting.poll() is None and not (models / "big").exists()  # it waits, writing nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    out, _ = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err_file.read_text()
    assert f"{SHARDS + 1} files copied" in out
    assert_installed(big_bundle, models)


def test_a_killed_install_leaves_no_lock_and_the_next_one_finishes_its_work(big_bundle, tmp_path):
    models = tmp_path / "models"
    first = start(install_cmd(big_bundle, models), tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (models / "big").is_dir() and any((models / "big").iterdir()), what="the first copy")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    proc = subprocess.run(install_cmd(big_bundle, models), cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "waiting for" not in proc.stderr  # the kernel dropped the dead install's lock
    assert_installed(big_bundle, models)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_cleanup_removes_only_partials_no_live_process_owns(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        names = {
            "live": f".weights.bin.part-{sleeper.pid}-abcd1234",
            "live link": f".weights.bin.part-{sleeper.pid}-0a1b2c3d-link",
            "dead": f".weights.bin.part-{dead_pid()}-abcd1234",
            "older, owner unknown": ".weights.bin.part-x1y2z3w4",
            "older link": ".weights.bin.part-link",
            "a model's own file": ".notes.part-of-the-model.txt",
            "not hidden": "weights.bin.part-123-abcd1234",
        }
        sub = tmp_path / "m" / "sub"
        sub.mkdir(parents=True)
        for name in names.values():
            (sub / name).write_text("x")
        assert remove_partials(tmp_path / "m") == 3
        left = {p.name for p in sub.iterdir()}
        assert left == {names[k] for k in ("live", "live link", "a model's own file", "not hidden")}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_partials(tmp_path / "m") == 2  # their owner is gone now


def test_an_install_leaves_another_live_installs_partial_alone(big_bundle, tmp_path):
    """What made the first of two installs fail halfway: the second deleted its temp file."""
    models = tmp_path / "models"
    (models / "big").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    in_flight = models / "big" / f".shard-000.bin.part-{sleeper.pid}-abcd1234"
    in_flight.write_bytes(b"half a copy")
    try:
        proc = subprocess.run(install_cmd(big_bundle, models), cwd=tmp_path, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert in_flight.read_bytes() == b"half a copy"  # its owner still runs: not ours to delete
    finally:
        sleeper.kill()
        sleeper.wait()
    proc = subprocess.run(install_cmd(big_bundle, models), cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not in_flight.exists()
    assert_installed(big_bundle, models)


def test_temp_names_carry_the_pid_and_differ_per_copy(tmp_path, monkeypatch):
    temps: list[str] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        temps.append(Path(src).name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 100)
    for _ in range(2):
        bundle.format.filecopy.copy_with_sha256(source, tmp_path / "out" / "weights.bin")
    assert len(temps) == 2 and temps[0] != temps[1]
    for name in temps:
        assert re.fullmatch(rf"\.weights\.bin\.part-{os.getpid()}-[a-z0-9_]{{8}}", name), name
        assert partial_owner(name) == os.getpid()


@pytest.mark.parametrize("name", ["w" * 250, "权重" * 41], ids=["250 ASCII", "246 bytes of UTF-8"])
def test_a_long_file_name_still_gets_a_temp_name_the_file_system_takes(tmp_path, name):
    # NAME_MAX is 255 bytes: ".<name>.part-<pid>-<8 random>" would not fit
    source = tmp_path / name
    source.write_bytes(b"long")
    bundle.format.filecopy.copy_with_sha256(source, tmp_path / "out" / name)
    assert (tmp_path / "out" / name).read_bytes() == b"long"
    assert partials(tmp_path / "out") == []


def test_the_holder_is_read_from_the_kernels_lock_table(tmp_path):
    lock = tmp_path / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert lock_holders(os.stat(lock)) == [os.getpid()]
    finally:
        os.close(fd)
    assert lock_holders(os.stat(lock)) == []
