"""Model files on this machine checked against the bundle manifest at refresh and restored by up
(components/local_repair.py), on real files: bit rot with size and mtime kept, a rewritten file,
a missing file, a directory gone. The check is RemoteFilesCheck's (the ssh:// hosts' one), run
here with no ssh; the restore is the shell `up` runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundle.format.manifest import load_manifest
from components.deployment import repaired_digest
from components.local_repair import parallel_check_script, restore_script, split_by_size
from components.remote_check import RemoteFilesCheckProvider
from components.remote_sync import directory_copies
from tests.bundle_kit import build_args, cli, make_site


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A built bundle and its emb model copied to a host directory, as install leaves it."""
    root = tmp_path_factory.mktemp("local-repair")
    site = make_site(root / "online")
    assert cli(*build_args(site))[0] == 0
    return site


@pytest.fixture
def host(installed, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(installed.out / "models" / "emb", models / "emb")
    manifest = load_manifest(installed.out).for_stack(installed.stack)
    (copy,) = directory_copies(manifest, {"models/emb": str(models / "emb")})
    groups = split_by_size([(rel, sha, (installed.out / "models/emb" / rel).stat().st_size) for rel, sha in copy.files], 2)
    props = {"ssh_argv": [], "remote_dir": copy.remote_dir, "digest": copy.digest,
             "script": parallel_check_script(copy.remote_dir, groups), "generation": 0, "damaged": []}
    return models / "emb", copy, props, installed.out


def refresh(props: dict) -> dict:
    return RemoteFilesCheckProvider().read(props["remote_dir"], dict(props)).outs


def flip_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as f:  # in place: the same inode, as a bad disk does
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_intact_files_pass_and_bit_rot_is_found_though_size_and_mtime_are_kept(host):
    directory, _copy, props, _bundle = host
    assert refresh(props)["damaged"] == [] and refresh(props)["generation"] == 0
    flip_keeping_size_and_mtime(directory / "model.safetensors")
    outs = refresh(props)
    assert outs["damaged"] == ["model.safetensors"] and outs["generation"] == 1


def test_a_missing_file_and_a_rewritten_one_are_named(host):
    directory, _copy, props, _bundle = host
    (directory / "tokenizer" / "vocab.txt").unlink()
    (directory / "config.json").write_bytes(b'{"dim": 385}')
    assert refresh(props)["damaged"] == ["config.json", "tokenizer/vocab.txt"]


def test_a_directory_gone_as_a_whole_is_named(host):
    directory, _copy, props, _bundle = host
    shutil.rmtree(directory)
    assert refresh(props)["damaged"] == ["."]


def test_restore_copies_exactly_the_damaged_files_back_from_the_bundle(host):
    directory, copy, props, bundle = host
    flip_keeping_size_and_mtime(directory / "model.safetensors")
    (directory / "tokenizer" / "vocab.txt").unlink()
    untouched = (directory / "config.json").stat().st_ino
    done = subprocess.run(["sh", "-c", restore_script(copy, str(bundle))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("restored")) == [
        "restored model.safetensors from the bundle (models/emb)", "restored tokenizer/vocab.txt from the bundle (models/emb)"]
    assert refresh(props)["damaged"] == []
    assert (directory / "config.json").stat().st_ino == untouched  # a good file is not copied again
    shutil.rmtree(directory)
    assert subprocess.run(["sh", "-c", restore_script(copy, str(bundle))], capture_output=True).returncode == 0
    assert refresh(props)["damaged"] == []


def test_the_check_is_split_over_the_cores_by_size():
    files = [("a", "1", 100), ("b", "2", 60), ("c", "3", 50), ("d", "4", 5)]
    assert split_by_size(files, 2) == [[("a", "1"), ("d", "4")], [("b", "2"), ("c", "3")]]
    assert split_by_size(files[:1], 4) == [[("a", "1")]]


def test_a_repair_changes_the_weights_digest_once_and_nothing_before():
    assert repaired_digest("abc", [0, None]) == "abc"  # no damage ever found: the manifest's digest as today
    assert repaired_digest("abc", [1, 0]) == "abc+repaired:1.0"


def test_a_local_docker_stack_with_a_bundle_checks_and_restores_each_model_directory(tmp_path):
    from tests.stack_configs import docker_stack, reference_models
    from tests.test_program import run_program
    from tests.test_remote_sync import FILES, make_bundle

    bundle = tmp_path / "bundle"
    make_bundle(bundle, FILES)
    models = reference_models()[:1]
    models[0]["path"] = "emb"
    mocks, _ = run_program(docker_stack(models=models, bundle_dir=str(bundle), models_dir="/data/m"))
    check = mocks.resources["xinference-files-emb-check"].inputs
    assert check["ssh_argv"] == [] and check["remote_dir"] == "/data/m/emb"  # the ssh hosts' check, run here
    assert "sha256sum -c --quiet --strict" in check["script"] and "weights/model.safetensors" in check["script"]
    restore = mocks.resources["xinference-files-emb-restore"].inputs
    assert restore["create"] == "true"  # generation 0: nothing to restore (install put the files there)
    from components.volume import weights_digests
    from stackspec.load import load_stack_config

    # until a refresh finds damage the model's digest is today's (the manifest's): no relaunch on upgrade
    cfg = load_stack_config(docker_stack(models=models, bundle_dir=str(bundle), models_dir="/data/m"),
                            namespaced=False)
    today = weights_digests(cfg, load_manifest(bundle).for_stack("gpu-node-1"), local_host=True)
    assert mocks.models()[models[0]["uid"]].inputs.get("weights_digest") in (today[models[0]["uid"]], None)


def test_a_stack_without_a_bundle_has_no_check():
    from tests.stack_configs import docker_stack, reference_models
    from tests.test_program import run_program

    mocks, _ = run_program(docker_stack(models=reference_models()[:1]))
    assert not [name for name in mocks.resources if name.endswith("-check") and "files" in name]
