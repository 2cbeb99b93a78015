"""Delta bundles: `build --base OLD` names the base, `pack` carries only what the base lacks, and on the site
`unpack`/`install --base DIR` rebuilds the complete new bundle (unchanged files hard-linked from DIR, every
sha256 checked), leaving DIR as it was. Real builds, archives and files; the site half with the bare python3;
properties: any change set verifies with the new id, a damaged base file is always named."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle.build.pack import pack
from bundle.install.unpack import unpack
from bundle.format.errors import VerifyFailed
from bundle.format.manifest import MANIFEST_NAME, FileEntry, Manifest, StackEntry, load_manifest, sha256_file
from bundle.format.verify import verify_directory
from bundle.format.delta import base_of, read_base
from tests.bundle_kit import build_args, cli, make_site, site_python, tree



@pytest.fixture(scope="module")
def update(tmp_path_factory):
    """Bundle 1 unpacked on the site; bundle 2 = bundle 1 with one weight file changed, built with --base."""
    root = tmp_path_factory.mktemp("delta")
    site = make_site(root / "online")
    assert cli(*build_args(site))[0] == 0
    old = root / "site" / "bundle"
    assert cli("pack", str(site.out), "-o", str(root / "v1.tar"), "--quiet")[0] == 0
    assert cli("unpack", str(root / "v1.tar"), "--into", str(old), "--quiet")[0] == 0
    (site.src("rr") / "weights.bin").write_bytes(os.urandom(40 * 1024))
    code, out, err = cli(*build_args(site), "--base", str(root / "v1.tar"))
    assert code == 0, err
    # the changed weight file and the SBOM, which lists every model file's sha256
    assert "delta on bundle" in out and "`pack` carries 2 files" in out, out
    code, out, err = cli("pack", str(site.out), "-o", str(root / "v2.tar"), "--quiet")
    assert code == 0, err
    return {"root": root, "old": old, "new": site.out, "archive": root / "v2.tar", "pack_out": out}


def test_the_new_manifest_lists_every_file_and_names_its_base(update):
    new, old = load_manifest(update["new"]), load_manifest(update["old"])
    assert new.base is not None and new.base.bundle_id == old.bundle_id
    assert len(new.files) == len(old.files)  # the full list, not a diff
    # the same base whichever way OLD is named: directory, MANIFEST.json, archive
    for spelling in (update["old"], update["old"] / MANIFEST_NAME, update["root"] / "v1.tar"):
        assert base_of(read_base(spelling), new) == new.base


def test_pack_carries_only_the_changed_file(update):
    with tarfile.open(update["archive"]) as tar:
        assert tar.getnames() == [MANIFEST_NAME, "models/rr/weights.bin", "sbom.cdx.json"]
    assert "delta on bundle" in update["pack_out"] and "left out" in update["pack_out"]
    proc = site_python("verify", str(update["archive"]))  # intact as a delta: it says what it lacks
    assert proc.returncode == 0 and "verify: a delta on bundle" in proc.stdout, proc.stdout + proc.stderr


def test_unpack_with_base_rebuilds_the_new_bundle_and_leaves_the_base_as_it_was(update, tmp_path):
    old_tree = tree(update["old"])
    new_id = load_manifest(update["new"]).bundle_id
    target = tmp_path / "bundle-2"
    proc = site_python("unpack", str(update["archive"]), "--into", str(target), "--base", str(update["old"]),
                "--bundle-id", new_id)
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == tree(update["new"])
    assert site_python("verify", str(target), "--bundle-id", new_id).returncode == 0
    assert tree(update["old"]) == old_tree
    same = "models/emb/model.safetensors"  # unchanged: hard-linked (one file system here)
    assert (target / same).stat().st_ino == (update["old"] / same).stat().st_ino


def test_a_delta_without_its_base_is_refused_naming_it(update, tmp_path):
    base_id = load_manifest(update["old"]).bundle_id
    proc = site_python("unpack", str(update["archive"]), "--into", str(tmp_path / "b"))
    assert proc.returncode == 2 and f"a delta on bundle {base_id}" in proc.stderr and "--base DIR" in proc.stderr
    other = tmp_path / "other"
    shutil.copytree(update["new"], other)
    proc = site_python("unpack", str(update["archive"]), "--into", str(tmp_path / "b"), "--base", str(other))
    assert proc.returncode == 2 and f"this delta is on bundle {base_id}" in proc.stderr, proc.stderr
    proc = site_python("unpack", str(update["archive"]), "--into", str(update["old"]), "--base", str(update["old"]))
    assert proc.returncode == 2 and "is the base bundle itself" in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()


def test_missing_and_damaged_base_files_are_each_named_with_the_bundle_that_supplies_them(update, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(update["old"], base)
    (base / "models/emb/config.json").unlink()
    weights = base / "models/emb/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    before = tree(base)
    target = tmp_path / "bundle-2"
    proc = site_python("unpack", str(update["archive"]), "--into", str(target), "--base", str(base))
    assert proc.returncode == 1, proc.stderr
    base_id = load_manifest(update["old"]).bundle_id
    assert "models/emb/config.json: missing from the base" in proc.stderr
    assert "models/emb/model.safetensors: damaged in the base" in proc.stderr
    assert proc.stderr.count(f"bundle {base_id} (the base) supplies it") == 2, proc.stderr
    assert not target.exists() and not list(tmp_path.glob(".bundle-2.*")) and tree(base) == before


def test_install_takes_the_delta_archive_with_its_base(update, tmp_path):
    new_id = load_manifest(update["new"]).bundle_id
    proc = site_python("install", str(update["archive"]), "--base", str(update["old"]), "--bundle-id", new_id,
                "--skip", "venv", "--skip", "program", "--skip", "stack", "--models-dir", str(tmp_path / "models"),
                "--pulumi-home", str(tmp_path / "pulumi"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    target = update["archive"].parent / f"bundle-{new_id[:12]}"  # the default beside the archive: a new directory
    try:
        assert tree(target) == tree(update["new"])
        assert tree(tmp_path / "models" / "rr") == tree(update["new"] / "models" / "rr")
    finally:
        shutil.rmtree(target)


# -- properties: base + delta = full ------------------------------------------------------------

PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NAMES = st.sampled_from([f"f{i}.bin" for i in range(8)])
CONTENT = st.binary(min_size=0, max_size=64)


def write_bundle(root: Path, files: dict[str, bytes]) -> Manifest:
    """A one-model bundle of ``files`` (models/m/NAME), its manifest saved as build saves it."""
    entries = []
    for name, data in files.items():
        path = root / "models" / "m" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(FileEntry(f"models/m/{name}", len(data), sha256_file(path), "model", "m"))
    stack = StackEntry(models_dir="/data/models", model_dirs={"models/m": "m"},
                       models={"m": ["models/m"]} if entries else {})
    manifest = Manifest({"s": stack}, sorted(entries, key=lambda e: e.path), created="2026-01-01T00:00:00+00:00")
    root.mkdir(parents=True, exist_ok=True)
    manifest.save(root)
    return manifest


def apply_delta(root: Path, old_files: dict[str, bytes], new_files: dict[str, bytes]) -> tuple[Manifest, Path, Path]:
    old_dir, new_dir = root / "old", root / "new"
    old = write_bundle(old_dir, old_files)
    new = write_bundle(new_dir, new_files)
    new.base = base_of(old, new)
    new.save(new_dir)
    pack(new_dir, root / "delta.tar", quiet=True)
    return new, old_dir, root / "delta.tar"


@PROPERTY
@given(old=st.dictionaries(NAMES, CONTENT, max_size=6), changes=st.dictionaries(NAMES, st.none() | CONTENT))
def test_any_change_set_gives_a_bundle_that_verifies_with_the_new_id(tmp_path_factory, old, changes):
    """changes: NAME -> new content (changed or added) or None (removed)."""
    root = tmp_path_factory.mktemp("prop")
    new_files = {n: d for n, d in {**old, **changes}.items() if d is not None}
    new, old_dir, archive = apply_delta(root, old, new_files)
    old_tree = tree(old_dir)
    unpack(archive, root / "site", new.bundle_id, quiet=True, base_dir=old_dir)
    assert verify_directory(root / "site", new.bundle_id, quiet=True).bundle_id == new.bundle_id
    assert tree(root / "site") == tree(root / "new") and tree(old_dir) == old_tree
    with tarfile.open(archive) as tar:  # only contents the base lacks were carried
        carried = {m.name for m in tar.getmembers()} - {MANIFEST_NAME}
    assert carried == {f"models/m/{n}" for n, d in new_files.items() if d not in old.values()}


@PROPERTY
@given(old=st.dictionaries(NAMES, st.binary(min_size=1, max_size=64), min_size=1, max_size=6), data=st.data())
def test_a_damaged_base_file_is_always_named(tmp_path_factory, old, data):
    root = tmp_path_factory.mktemp("prop")
    old = {name: content + name.encode() for name, content in old.items()}  # no two base files alike
    new_files = dict(old, **{"added.bin": b"new content"})
    new, old_dir, archive = apply_delta(root, old, new_files)
    victim = data.draw(st.sampled_from(sorted(old)))
    path = old_dir / "models" / "m" / victim
    damage = data.draw(st.sampled_from(["flip", "remove", "truncate"]))
    if damage == "remove":
        path.unlink()
    else:
        content = bytearray(path.read_bytes())
        if damage == "flip":
            content[data.draw(st.integers(0, len(content) - 1))] ^= 0xFF
        path.write_bytes(bytes(content[:-1] if damage == "truncate" else content))
    users = sorted(e.path for e in new.files if e.sha256 == hashlib.sha256(old[victim]).hexdigest())
    with pytest.raises(VerifyFailed) as failed:
        unpack(archive, root / "site", new.bundle_id, quiet=True, base_dir=old_dir)
    named = {p.path for p in failed.value.problems}
    assert set(users) <= named, (users, str(failed.value))
    assert all("(the base) supplies it" in p.message for p in failed.value.problems)
    assert not (root / "site").exists()


def test_a_base_on_another_file_system_is_copied_and_checked(update, tmp_path):
    """/dev/shm (tmpfs) is another file system than the test's tmp dir: no hard link is possible there."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system here (/dev/shm missing or on the same one as the tmp dir)")
    base = Path(tempfile.mkdtemp(prefix="xo-delta-base-", dir=shm))
    try:
        shutil.copytree(update["old"], base, dirs_exist_ok=True)
        new_id = load_manifest(update["new"]).bundle_id
        target = tmp_path / "bundle-2"
        proc = site_python("unpack", str(update["archive"]), "--into", str(target), "--base", str(base),
                           "--bundle-id", new_id)
        assert proc.returncode == 0, proc.stderr
        same = "models/emb/model.safetensors"
        assert (target / same).stat().st_nlink == 1 and (target / same).read_bytes() == (base / same).read_bytes()
        assert site_python("verify", str(target), "--bundle-id", new_id).returncode == 0
    finally:
        shutil.rmtree(base)
