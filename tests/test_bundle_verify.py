"""`bundle verify DIR`: every damage to a built bundle is found, all at once, with the values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bundle.format.manifest import MANIFEST_NAME, content_digest, load_manifest
from bundle.format.verify import hash_files
from tests.bundle_kit import build_args, cli, make_site, run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    site = make_site(tmp_path_factory.mktemp("verify-site"))
    code, _ = run_cli(*build_args(site))
    assert code == 0
    return site


@pytest.fixture
def bundle(built, tmp_path) -> Path:
    """A private copy of the built bundle that a test may damage."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(built.out, copy)
    return copy


def verify(target: Path, *extra: str) -> tuple[int, str, str]:
    return cli("verify", str(target), "--quiet", *extra)


def entry(bundle: Path, path: str):
    return load_manifest(bundle).by_path()[path]


def test_an_intact_bundle_verifies(bundle):
    code, out, err = verify(bundle)
    assert code == 0, err
    assert "verify: OK" in out and "20 files" in out and load_manifest(bundle).bundle_id in out  # 19 + the SBOM


def test_a_flipped_byte_is_a_sha256_mismatch_with_both_digests(bundle):
    path = "models/emb/model.safetensors"
    data = bytearray((bundle / path).read_bytes())
    data[1000] ^= 0x01
    (bundle / path).write_bytes(bytes(data))
    code, _, err = verify(bundle)
    assert code == 1
    expected = entry(bundle, path).sha256
    import hashlib

    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert f"{path}: sha256 mismatch: expected {expected}, actual {actual}" in err


def test_a_truncated_file_is_a_size_mismatch(bundle):
    path = next(f.path for f in load_manifest(bundle).files if f.path.endswith("/layer.tar"))  # an image layer
    size = entry(bundle, path).size
    with open(bundle / path, "r+b") as handle:
        handle.truncate(size - 100)
    code, _, err = verify(bundle)
    assert code == 1
    assert f"{path}: size mismatch: expected {size} bytes, actual {size - 100} bytes" in err


def test_a_deleted_file_is_missing(bundle):
    path = "models/rr/weights.bin"
    (bundle / path).unlink()
    code, _, err = verify(bundle)
    assert code == 1
    assert f"{path}: missing (expected {entry(bundle, path).size} bytes, sha256 {entry(bundle, path).sha256})" in err


def test_an_extra_file_is_reported(bundle):
    (bundle / "models" / "emb" / "notes.txt").write_text("left behind")
    code, _, err = verify(bundle)
    assert code == 1
    assert "models/emb/notes.txt: extra file, not in the manifest" in err


def test_every_problem_is_reported_at_once(bundle):
    (bundle / "models/rr/weights.bin").unlink()
    (bundle / "models/emb/config.json").write_text("{}")
    (bundle / "wheels" / "stray.whl").write_bytes(b"x")
    with open(bundle / "models/vad/vad.onnx", "r+b") as handle:
        handle.seek(5)
        handle.write(b"\xff")
    code, _, err = verify(bundle)
    assert code == 1
    assert "4 problems" in err
    for path in ("models/rr/weights.bin: missing", "models/emb/config.json: size mismatch",
                 "wheels/stray.whl: extra file", "models/vad/vad.onnx: sha256 mismatch"):
        assert path in err


def test_a_symlink_in_place_of_a_file_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside.bin"
    path = bundle / "models/rr/weights.bin"
    outside.write_bytes(path.read_bytes())  # same content: still not trusted
    path.unlink()
    path.symlink_to(outside)
    code, _, err = verify(bundle)
    assert code == 1
    assert "models/rr/weights.bin: is a symlink, not a regular file" in err


def test_a_tampered_manifest_is_refused_before_any_file_is_read(bundle):
    manifest_path = bundle / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data["files"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(data, indent=2))
    code, _, err = verify(bundle)
    assert code == 1
    assert "content does not match its digest: the manifest was edited or damaged after it was built" in err


def test_a_consistently_rewritten_manifest_fails_on_the_files_and_on_the_bundle_id(bundle):
    original_id = load_manifest(bundle).bundle_id
    manifest_path = bundle / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    del data["digest"]
    victim = next(f for f in data["files"] if f["path"] == "models/emb/config.json")
    victim["sha256"] = "1" * 64
    data["digest"] = content_digest(data)
    manifest_path.write_text(json.dumps(data, indent=2))
    code, _, err = verify(bundle)
    assert code == 1 and "models/emb/config.json: sha256 mismatch: expected " + "1" * 64 in err
    code, _, err = verify(bundle, "--bundle-id", original_id)
    assert code == 1 and f"expected {original_id}: this is not the bundle that was built" in err


def test_a_missing_manifest_says_what_to_do(tmp_path):
    code, _, err = verify(tmp_path)
    assert code == 1
    assert "cannot read the bundle manifest" in err and "is this an unpacked bundle directory?" in err


def test_a_nonexistent_target_is_a_usage_error(tmp_path):
    code, _, err = verify(tmp_path / "nowhere")
    assert code == 2 and "no such bundle directory or archive" in err


def test_jobs_must_be_positive(bundle):
    code, _, err = verify(bundle, "--jobs", "0")
    assert code == 2 and "--jobs 0: must be at least 1" in err


def test_threads_and_one_worker_give_the_same_digests(tmp_path):
    files = []
    for i in range(6):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(300_000 + i))
        files.append((path.name, path, path.stat().st_size))
    import hashlib

    expected = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path, _ in files}
    assert hash_files(files, workers=4) == expected == hash_files(files, workers=1)
    assert hash_files([("gone", tmp_path / "gone", 1)])["gone"].startswith("error: ")


def test_verify_help_exits_0(capsys):
    code, _ = run_cli("verify", "--help")
    assert code == 0 and "DIR|FILE" in capsys.readouterr().out
