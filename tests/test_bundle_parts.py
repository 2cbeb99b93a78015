"""Big archives on ordinary media: `pack --max-part-size` parts, checked part by part on the site, and an
unpack / install killed with kill -9 part-way that carries on from the files it completed.

Real archives throughout; the offline half runs as the site runs it (`python3 -S -m bundle`)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.format.manifest import MANIFEST_NAME, load_manifest
from tests.bundle_kit import build_args, cli, make_site, site_python, tree

ROOT = Path(__file__).resolve().parent.parent
PART = 1_000_000  # --max-part-size 1M: decimal, as 4G is


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A bundle of about 3.4 MB (a model with a 3 MB weight file): four parts of 1 MB."""
    site = make_site(tmp_path_factory.mktemp("parts-site"), models={
        "emb": {"config.json": b'{"dim": 384}', "model.safetensors": os.urandom(3 * 1024 * 1024)},
        "rr": {"weights.bin": os.urandom(300 * 1024)}})
    assert cli(*build_args(site))[0] == 0
    return site.out


@pytest.fixture(params=["b.tar", "b.tar.gz"])
def packed(request, tmp_path, built):
    archive = tmp_path / "carry" / request.param
    code, out, err = cli("pack", str(built), "-o", str(archive), "--max-part-size", "1M", "--quiet")
    assert code == 0, err
    return archive


def parts_of(archive: Path) -> list[Path]:
    return sorted(archive.parent.glob(archive.name + ".part*"))


def test_pack_writes_parts_under_the_limit_and_a_sha256_of_each_part_and_the_whole(packed, built):
    parts = parts_of(packed)
    assert [p.name for p in parts] == [f"{packed.name}.part{i:03d}" for i in range(len(parts))]
    assert len(parts) >= 3 and not packed.exists()
    assert all(p.stat().st_size <= PART for p in parts) and all(p.stat().st_size == PART for p in parts[:-1])
    lines = (packed.parent / f"{packed.name}.sha256").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [p.name for p in parts] + [packed.name]
    whole = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    assert lines[-1].split()[0] == whole
    proc = subprocess.run(["sha256sum", "-c", "--ignore-missing", f"{packed.name}.sha256"], cwd=packed.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.count(": OK") == len(parts), proc.stdout
    # joined by hand (`cat NAME.part* > NAME`), the parts are the ordinary archive
    joined = packed.parent / "joined" / packed.name
    joined.parent.mkdir()
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    assert cli("verify", str(joined), "--quiet")[0] == 0


@pytest.mark.parametrize("given", ["first part", "every part", "the archive's name"])
def test_unpack_and_verify_take_the_first_part_or_the_set(packed, built, tmp_path, given):
    parts = parts_of(packed)
    argv = {"first part": [str(parts[0])], "every part": [str(p) for p in parts],
            "the archive's name": [str(packed)]}[given]
    bundle_id = load_manifest(built).bundle_id
    proc = site_python("unpack", *argv, "--into", str(tmp_path / "site" / "bundle"), "--bundle-id", bundle_id)
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "site" / "bundle") == tree(built)
    proc = site_python("verify", str(parts[0]), "--bundle-id", bundle_id)
    assert proc.returncode == 0 and "verify: OK" in proc.stdout, proc.stderr


def test_a_missing_part_is_named_and_nothing_is_written(packed, tmp_path):
    parts = parts_of(packed)
    parts[1].unlink()
    target = tmp_path / "site" / "bundle"
    for argv in (["unpack", str(parts[0]), "--into", str(target)], ["install", str(parts[0]), "--into", str(target)]):
        proc = site_python(*argv)
        assert proc.returncode == 1, proc.stderr
        assert f"{parts[1].name}: missing (listed in {packed.name}.sha256)" in proc.stderr, proc.stderr
        assert not (tmp_path / "site").exists()
    # the last part missing: the listing names it even though the numbering has no gap
    parts[-1].unlink()
    proc = site_python("unpack", str(parts[0]), "--into", str(target))
    assert proc.returncode == 1 and f"{parts[-1].name}: missing" in proc.stderr, proc.stderr


def test_a_damaged_part_is_named_with_the_file_it_damages(packed, tmp_path):
    """A flipped byte in a part: the bundle file it lies in is named, and so is the part to copy again."""
    parts = parts_of(packed)
    middle = parts[1]
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    middle.write_bytes(bytes(data))
    target = tmp_path / "site" / "bundle"
    for argv in (["verify", str(parts[0])], ["unpack", str(parts[0]), "--into", str(target)]):
        proc = site_python(*argv)
        assert proc.returncode == 1, proc.stderr
        assert f"{middle.name}: damaged: sha256" in proc.stderr and "copy this part again" in proc.stderr
        assert "model.safetensors" in proc.stderr or "not a readable archive" in proc.stderr, proc.stderr
        assert f"{parts[0].name}: damaged" not in proc.stderr  # only the damaged part is named
    assert not target.exists() and not list(target.parent.glob(".bundle.*"))


def test_a_part_of_another_archive_is_refused(packed, tmp_path):
    stranger = tmp_path / "other.tar.part000"
    stranger.write_bytes(b"x")
    proc = site_python("unpack", str(parts_of(packed)[0]), str(stranger), "--into", str(tmp_path / "b"))
    assert proc.returncode == 2 and f"{stranger}: not a part of" in proc.stderr, proc.stderr


def test_a_part_size_is_a_size(built, tmp_path):
    for value, message in (("4x", "expected a size like 4G"), ("10K", "below the 1M (1,000,000 bytes) minimum")):
        code, _, err = cli("pack", str(built), "-o", str(tmp_path / "b.tar"), "--max-part-size", value)
        assert code == 2 and f"--max-part-size {value!r}" in err and message in err, err
    assert not list(tmp_path.iterdir())


def test_pack_without_parts_removes_the_parts_of_an_earlier_pack(packed, built):
    assert parts_of(packed)
    assert cli("pack", str(built), "-o", str(packed), "--quiet")[0] == 0
    assert packed.is_file() and not parts_of(packed)
    assert len((packed.parent / f"{packed.name}.sha256").read_text().splitlines()) == 1


# -- kill -9 part-way, then run again ---------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A bundle of 12 weight files of 16 MiB: an unpack of it takes long enough to be killed part-way."""
    root = tmp_path_factory.mktemp("big")
    weights = {f"shard-{i:02d}.safetensors": os.urandom(16 * 1024 * 1024) for i in range(12)}
    site = make_site(root / "online", models={"emb": weights})
    assert cli(*build_args(site))[0] == 0
    archive = root / "carry" / "big.tar"
    assert cli("pack", str(site.out), "-o", str(archive), "--max-part-size", "50M", "--quiet")[0] == 0
    return site.out, archive


def kill_when_complete_files(command: list[str], watched: tuple[Path, str], count: int) -> dict[str, tuple]:
    """Start ``command``, kill -9 it once ``count`` shard files are complete in the directory ``watched``
    (parent, glob) names; returns {path below it: (inode, mtime_ns)} of those files at the moment of the kill."""
    parent, pattern = watched
    proc = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    complete: dict[str, tuple] = {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = list(parent.glob(pattern))
            shards = sorted(dirs[0].rglob("shard-*")) if dirs else []
            # a shard is complete once the next one exists: files are written one after another
            if len(shards) > count:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                complete = {str(p.relative_to(dirs[0])): (p.stat().st_ino, p.stat().st_mtime_ns)
                            for p in shards[:count]}
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed part-way: {proc.returncode} {proc.stderr.read()}"
    return complete


@pytest.mark.parametrize("verb", ["unpack", "install", "install, in its models step"])
def test_killed_part_way_and_run_again_keeps_the_completed_files_and_ends_verified(big, tmp_path, verb):
    bundle, archive = big
    bundle_id = load_manifest(bundle).bundle_id
    target = tmp_path / "site" / "bundle"
    target.parent.mkdir()
    models = tmp_path / "models"
    if verb == "unpack":
        argv = ["unpack", str(archive), "--into", str(target), "--bundle-id", bundle_id, "--quiet"]
    else:  # the one command on the site, models to a host directory, no venv (that step has its own test)
        argv = ["install", str(archive), "--into", str(target), "--bundle-id", bundle_id, "--skip", "venv",
                "--skip", "program", "--skip", "stack", "--models-dir", str(models),
                "--pulumi-home", str(tmp_path / "pulumi"), "--quiet"]
    command = [sys.executable, "-S", "-m", "bundle", *argv]
    if verb.endswith("models step"):  # files appear there under their names only once complete (renamed)
        watched, where = (models, "emb"), models / "emb"
    else:
        watched, where = (target.parent, ".bundle.unpack-*"), target
    complete = kill_when_complete_files(command, watched, 3)
    assert len(complete) == 3
    proc = site_python(*argv)
    assert proc.returncode == 0, proc.stderr
    for rel, (inode, mtime_ns) in complete.items():  # kept, not written again
        st = (where / rel).stat()
        assert (st.st_ino, st.st_mtime_ns) == (inode, mtime_ns), rel
    assert not list(target.parent.glob(".bundle.*"))
    proc = site_python("verify", str(target), "--bundle-id", bundle_id)
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == tree(bundle)
    if verb != "unpack":
        assert tree(models / "emb") == tree(bundle / "models" / "emb")


def test_a_second_install_of_the_same_archive_unpacks_nothing(big, tmp_path):
    bundle, archive = big
    target = tmp_path / "bundle"
    argv = ["install", str(archive), "--into", str(target), "--skip", "venv", "--skip", "program", "--skip",
            "stack", "--skip", "models", "--pulumi-home", str(tmp_path / "pulumi")]
    assert site_python(*argv).returncode == 0
    before = {p: p.stat().st_ino for p in target.rglob("*")}
    proc = site_python(*argv)
    assert proc.returncode == 0, proc.stderr
    assert "already holds bundle" in proc.stderr and "nothing unpacked" in proc.stderr
    assert {p: p.stat().st_ino for p in target.rglob("*")} == before
    assert (target / MANIFEST_NAME).is_file()


def test_a_second_unpack_of_the_same_bundle_while_one_runs_is_refused(built, tmp_path):
    """The first one's resume directory is locked (flock, as a running unpack holds it): the second must not
    clear away the files the first is writing."""
    import fcntl

    archive = tmp_path / "b.tar"
    assert cli("pack", str(built), "-o", str(archive), "--quiet")[0] == 0
    target = tmp_path / "site" / "bundle"
    running = target.parent / f".bundle.unpack-{load_manifest(built).bundle_id[:16]}"
    (running / "models").mkdir(parents=True)
    (running / "models" / "half-written").write_bytes(b"x")
    fd = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = site_python("unpack", str(archive), "--into", str(target))
        assert proc.returncode == 1 and "another unpack of this bundle" in proc.stderr, proc.stderr
        assert (running / "models" / "half-written").read_bytes() == b"x" and not target.exists()
    finally:
        os.close(fd)
    assert site_python("unpack", str(archive), "--into", str(target)).returncode == 0  # the lock gone: it goes on
    assert tree(target) == tree(built)
