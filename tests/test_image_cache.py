"""tools/xinference-image.sh --prune-unused-since on a scratch cache: what a run did not use goes
(with its image in the real engine), what it used stays, and a bad value is a usage error. The
image.json the build writes (tools/xinference-image/image_cache.py) is checked without an engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.docker_engines import MAIN_DOCKER_HOST, docker, require_main_engine
from tests.test_docker_cli import empty_image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "xinference-image.sh"

sys.path.insert(0, str(ROOT / "tools" / "xinference-image"))
import image_cache  # noqa: E402

docker_engine = pytest.mark.docker  # the machine's real engine


def prune(cache: Path, since: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DOCKER_HOST=MAIN_DOCKER_HOST)
    return subprocess.run(["bash", str(SCRIPT), "--cache", str(cache), "--prune-unused-since", since],
                          capture_output=True, text=True, timeout=120, env=env)


def entry(cache: Path, digest: str, image_id: str, used_at: float, stamped: bool, kind: str = "base") -> Path:
    """An image entry as the script leaves it (a tools/cache_entry.py entry): image.json, image.tar,
    .complete, and (since stamps) last-used; an unstamped one was last changed when it was built."""
    e = cache / f"xinference-image-{digest}"
    e.mkdir(parents=True)
    (e / "image.tar").write_bytes(b"t" * 4096)
    (e / "image.json").write_text(json.dumps({"image_id": image_id, "tar_size": 4096, "kind": kind}, indent=2) + "\n")
    (e / ".complete").write_text(digest + "\n")
    if stamped:
        (e / "last-used").touch()
    for path in (*e.iterdir(), e):
        os.utime(path, (used_at, used_at))
    return e


@pytest.fixture
def engine_image():
    """(engine, image id) of a throw-away empty image in the real engine, removed afterwards."""
    host = require_main_engine()
    image = empty_image(host)
    yield host, docker(host, "image", "inspect", "-f", "{{.Id}}", image).stdout.decode().strip()
    docker(host, "rmi", "-f", image, check=False)


def image_exists(host: str, image_id: str) -> bool:
    return docker(host, "image", "inspect", image_id, check=False).returncode == 0


@docker_engine
def test_prune_removes_what_the_run_did_not_use_and_its_image_keeps_what_it_used(tmp_path, engine_image):
    host, image_id = engine_image
    started = time.time()
    stale = entry(tmp_path, "aaaaaaaaaaaa", image_id, started - 7200, stamped=True)
    unstamped = entry(tmp_path, "bbbbbbbbbbbb", "sha256:" + "0" * 64, started - 7200, stamped=False)
    used = entry(tmp_path, "cccccccccccc", "sha256:" + "1" * 64, started + 5, stamped=True)
    cut_off = tmp_path / "xinference-image-999999999999"  # a build cut off: no image.json
    cut_off.mkdir()
    (cut_off / "image.tar.part").write_bytes(b"p" * 10)
    os.utime(cut_off, (started - 7200, started - 7200))
    being_written = tmp_path / "xinference-image-888888888888"  # a build writing now: no image.json yet
    being_written.mkdir()
    os.utime(being_written, (started + 5, started + 5))
    other_wheels = tmp_path / "xinference-wheels-000000000000"
    other_wheels.mkdir()
    (other_wheels / "x-1-py3-none-any.whl").write_bytes(b"w" * 100)

    proc = prune(tmp_path, str(int(started)))

    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and not unstamped.exists() and not other_wheels.exists()
    assert not cut_off.exists() and being_written.exists()
    assert (used / "image.tar").read_bytes() == b"t" * 4096
    assert not image_exists(host, image_id)
    assert f"removed its image {image_id} from the engine" in proc.stderr
    assert "2 image entries used since" in proc.stderr


@docker_engine
def test_an_image_a_container_holds_stays_in_the_engine_and_docker_says_why(tmp_path, engine_image):
    host, image_id = engine_image
    container = docker(host, "create", image_id, "/none").stdout.decode().strip()
    try:
        stale = entry(tmp_path, "dddddddddddd", image_id, time.time() - 7200, stamped=True)
        proc = prune(tmp_path, str(int(time.time())))
        assert proc.returncode == 0, proc.stderr
        assert not stale.exists() and image_exists(host, image_id)
        assert f"its image {image_id} stays in the engine" in proc.stderr and container[:12] in proc.stderr
    finally:
        docker(host, "rm", "-f", container, check=False)


@docker_engine
def test_an_image_a_kept_entry_shares_stays_in_the_engine(tmp_path, engine_image):
    """A tag-only variant has its base's image id: pruning one must not take the other's image."""
    host, image_id = engine_image
    now = time.time()
    stale = entry(tmp_path, "eeeeeeeeeeee", image_id, now - 7200, stamped=True)
    kept = entry(tmp_path, "ffffffffffff", image_id, now + 5, stamped=True)
    proc = prune(tmp_path, str(int(now)))
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and kept.exists() and image_exists(host, image_id)
    assert f"its image {image_id} stays in the engine: a kept entry has it too" in proc.stderr


@docker_engine
def test_a_stale_base_and_its_stale_variant_both_leave_the_engine(tmp_path, engine_image):
    """docker refuses to remove a base while an image built on it is there: the variant goes first,
    whatever the entries' names sort as."""
    host, base_id = engine_image
    label = f"xinference-offline.test=prune-{uuid.uuid4().hex[:6]}"
    built = docker(host, "build", "-q", "--label", label, "-", stdin=f"FROM {base_id}\n".encode())
    variant_id = built.stdout.decode().strip()
    try:
        now = time.time()
        base = entry(tmp_path, "000000000000", base_id, now - 7200, stamped=True)
        variant = entry(tmp_path, "ffffffffffff", variant_id, now - 7200, stamped=True, kind="variant")
        proc = prune(tmp_path, str(int(now)))
        assert proc.returncode == 0, proc.stderr
        assert not base.exists() and not variant.exists()
        assert not image_exists(host, variant_id) and not image_exists(host, base_id), proc.stderr
        assert proc.stderr.index(f"removed its image {variant_id}") < proc.stderr.index(f"removed its image {base_id}")
    finally:
        docker(host, "rmi", variant_id, check=False)


def test_a_bad_prune_time_is_a_usage_error_that_names_the_value(tmp_path):
    proc = prune(tmp_path, "yesterday")
    assert proc.returncode == 2
    assert "--prune-unused-since wants seconds since the epoch (date +%s), not 'yesterday'" in proc.stderr


def test_prune_without_an_engine_still_frees_the_cache(tmp_path, monkeypatch):
    """No engine answers (or the images are gone): the entries go all the same; the wheel dirs of
    other recipe files go, the current one stays whatever its age."""
    now = time.time()
    stale = entry(tmp_path, "aaaaaaaaaaaa", "sha256:" + "9" * 64, now - 7200, stamped=True)
    current_wheels, other_wheels = tmp_path / "xinference-wheels-111111111111", tmp_path / "xinference-wheels-222222222222"
    for w in (current_wheels, other_wheels):
        w.mkdir()
        os.utime(w, (now - 7200, now - 7200))
    said: list[str] = []
    monkeypatch.setattr(image_cache, "log", said.append)
    result = image_cache.prune(tmp_path, int(now), keep_wheels=current_wheels)
    assert not stale.exists() and not other_wheels.exists() and current_wheels.exists()
    assert [p for p, _size, _used in result.removed] == [stale, other_wheels]
    assert said[-1].startswith("prune: ") and "0 image entries used since" in said[-1]


def test_image_json_keeps_what_takes_the_space():
    text = ("total 5300000\t/\ntotal 5100000\t/opt/xinference\nsite 3000000\t/opt/x/site-packages/nvidia\n"
            "torch 900000\t/opt/x/site-packages/torch/lib\n")
    assert image_cache.breakdown_of(text) == {
        "total": {"/": 5300000, "/opt/xinference": 5100000}, "site": {"/opt/x/site-packages/nvidia": 3000000},
        "nvidia": {}, "torch": {"/opt/x/site-packages/torch/lib": 900000}}


def test_a_reworded_comment_does_not_change_the_image_recipe(tmp_path):
    """The recipe hashes the script's code, not its comment lines (no 10 GB rebuild for a comment)."""
    script = (ROOT / "tools" / "xinference-image.sh").read_text()
    reworded = tmp_path / "xinference-image.sh"
    reworded.write_text(script.replace("# Build a real CPU Xinference image", "# Build the CPU Xinference image", 1))
    changed = tmp_path / "changed.sh"
    changed.write_text(script.replace("SUITE=bookworm", "SUITE=trixie", 1))
    digest = [sys.executable, str(ROOT / "tools" / "cache_entry.py"), "digest", "--code"]
    original, same, other = (subprocess.run([*digest, str(p)], capture_output=True, text=True, check=True).stdout
                             for p in (ROOT / "tools" / "xinference-image.sh", reworded, changed))
    assert original == same != other
