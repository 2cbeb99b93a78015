"""tools/xinference-image.sh --prune-unused-since on a scratch cache: what a run did not use goes
(with its image in the real engine), what it used stays, and a bad value is a usage error."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.docker_engines import MAIN_DOCKER_HOST, docker, require_main_engine
from tests.test_docker_cli import empty_image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "xinference-image.sh"

pytestmark = pytest.mark.docker  # the machine's real engine


def prune(cache: Path, since: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DOCKER_HOST=MAIN_DOCKER_HOST)
    return subprocess.run(["bash", str(SCRIPT), "--cache", str(cache), "--prune-unused-since", since],
                          capture_output=True, text=True, timeout=120, env=env)


def entry(cache: Path, digest: str, image_id: str, used_at: float, stamped: bool, kind: str = "base") -> Path:
    """An image entry as the script leaves it: image.json, image.tar, and (since stamps) last-used."""
    e = cache / f"xinference-image-{digest}"
    e.mkdir(parents=True)
    (e / "image.tar").write_bytes(b"t" * 4096)
    (e / "image.json").write_text(json.dumps({"image_id": image_id, "tar_size": 4096, "kind": kind}, indent=2) + "\n")
    if stamped:
        (e / "last-used").touch()
    for path in e.iterdir():
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
