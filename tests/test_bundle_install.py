"""The offline flow end to end on real files: build -> pack -> unpack -> verify -> install -> plan,
with the offline half run as an operator runs it (`python -S -m bundle ...`: the bare python3
of a fresh server, no site-packages); then install's idempotence and recovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.format.layout import INSTALL_RECORD
from bundle.format.manifest import load_manifest
from tests.bundle_kit import WHEEL_NAME, build_args, cli, make_site, run_cli, tree, write_stack

ROOT = Path(__file__).resolve().parent.parent


def bare_python(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-S", "-m", "bundle", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Online: build + pack. Offline: unpack, verify, install (venv from the bundled wheel)."""
    root = tmp_path_factory.mktemp("flow")
    site = make_site(root / "online")
    assert cli(*build_args(site))[0] == 0
    archive = root / "carry" / "bundle.tar.gz"
    assert cli("pack", str(site.out), "-o", str(archive), "--quiet")[0] == 0
    offline = root / "offline"
    project = offline / "project"
    project.mkdir(parents=True)
    (project / "Pulumi.yaml").write_text("name: xinference-offline\nruntime: python\n")
    bundle = offline / "bundle"
    bundle_id = load_manifest(site.out).bundle_id
    steps = {
        "unpack": bare_python("unpack", str(archive), "--into", str(bundle), "--bundle-id", bundle_id),
        "verify": bare_python("verify", str(bundle), "--bundle-id", bundle_id),
        "install": bare_python("install", str(bundle), "--venv", str(project / "venv"),
                               "--pulumi-home", str(offline / "pulumi"), "--project", str(project), "--quiet",
                               cwd=project),
    }
    return {"site": site, "bundle": bundle, "project": project, "offline": offline, "models": site.host_models,
            "steps": steps}


def install(flow, *extra: str) -> tuple[int, str, str]:
    return cli("install", str(flow["bundle"]), "--venv", str(flow["project"] / "venv"), "--pulumi-home",
               str(flow["offline"] / "pulumi"), "--project", str(flow["project"]), "--quiet", *extra)


def test_the_offline_flow_works_end_to_end(flow):
    steps = flow["steps"]
    assert "every member checked and every sha256 matched" in steps["unpack"].stdout
    assert "verify: OK" in steps["verify"].stdout
    out = steps["install"].stdout
    assert "installed 1 wheel with no index" in out and "models   6 files copied" in out
    assert "program  3 files copied" in out  # the fixture's own Pulumi.yaml replaced by the bundle's
    for name in ("Pulumi.yaml", "__main__.py", "tools/deploy.sh"):
        assert (flow["project"] / name).read_bytes() == (flow["bundle"] / "program" / name).read_bytes()
    assert os.access(flow["project"] / "tools" / "deploy.sh", os.X_OK)
    # the venv really has the bundled package, installed without an index
    venv_python = flow["project"] / "venv" / "bin" / "python"
    proc = subprocess.run([str(venv_python), "-c", f"import {WHEEL_NAME}; print({WHEEL_NAME}.VERSION)"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "1.0", proc.stderr
    # Pulumi CLI and plugins in place, executable
    for name in ("pulumi", "pulumi-language-python", "pulumi-resource-docker", "pulumi-resource-command"):
        assert os.access(flow["offline"] / "pulumi" / "bin" / name, os.X_OK)
    assert "export PATH=" in out and "pulumi preview --stack t1" in out
    # model files: byte for byte the bundle's, with a record of what was installed
    bundle, models = flow["bundle"], flow["models"]
    for name in ("emb", "rr", "vad"):
        assert tree(models / name) == tree(bundle / "models" / name)
    record = json.loads((models / INSTALL_RECORD).read_text())
    assert record["meta"]["bundle"] == load_manifest(bundle).bundle_id
    assert set(record["meta"]["models"]) == {"emb", "rr"}
    stack_file = flow["project"] / "stacks" / "Pulumi.t1.yaml"
    assert stack_file.read_bytes() == (bundle / "stack/Pulumi.t1.yaml").read_bytes()
    # and the plan holds against the unpacked bundle
    code, plan_out = run_cli("plan", "--config", str(flow["project"] / "stacks" / "Pulumi.t1.yaml"),
                             "--bundle", str(bundle))
    assert code == 0 and "MISSING" not in plan_out and plan_out.count("  ok") == 9  # 8 items + sbom.cdx.json


def snapshot(flow) -> dict[str, tuple[int, int]]:
    roots = [flow["models"], flow["offline"] / "pulumi", flow["project"]]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for r in roots for p in r.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_a_second_install_is_a_no_op_and_says_so(flow):
    before = snapshot(flow)
    code, out, err = install(flow)
    assert code == 0, err
    assert "install: nothing to do: everything is already in place" in out
    assert "already installed from these 1 wheel" in out and "6 already in place" in out
    assert snapshot(flow) == before


def test_install_repairs_a_changed_model_file_and_keeps_foreign_files(flow):
    models = flow["models"]
    (models / "rr" / "weights.bin").write_bytes(b"edited by hand")
    (models / "rr" / "operator-notes.txt").write_text("not ours")
    code, out, err = install(flow, "--skip", "venv")
    assert code == 0, err
    assert "1 file" in out and "copied" in out
    assert (models / "rr" / "weights.bin").read_bytes() == (flow["bundle"] / "models/rr/weights.bin").read_bytes()
    assert (models / "rr" / "operator-notes.txt").read_text() == "not ours"
    assert "nothing to do" in install(flow, "--skip", "venv")[1]


def test_install_stops_on_a_damaged_bundle_file_then_carries_on_after_the_fix(flow, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(flow["bundle"], bundle)
    models = tmp_path / "models"
    good = (bundle / "models/emb/model.safetensors").read_bytes()
    damaged = bytearray(good)
    damaged[7] ^= 0xFF
    (bundle / "models/emb/model.safetensors").write_bytes(bytes(damaged))
    args = ["install", str(bundle), "--models-dir", str(models), "--skip", "venv", "--skip", "pulumi",
            "--skip", "stack", "--skip", "program", "--quiet"]
    code, out, err = cli(*args)
    assert code == 1
    assert "models/emb/model.safetensors:" in err and "sha256 mismatch" in err and "bundle is damaged" in err
    assert not (models / "emb" / "model.safetensors").exists()  # never a damaged file under the real name
    assert not [p for p in models.rglob(".*part-*")]
    assert (models / "rr" / "weights.bin").is_file()  # what was fine is installed
    (bundle / "models/emb/model.safetensors").write_bytes(good)
    code, out, err = cli(*args)
    assert code == 0, err
    assert "1 file copied" in out and "5 already in place" in out


def models_only_install(tmp_path: Path) -> tuple:
    """A site built once and its models installed into tmp_path/models; the install argv to re-run."""
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    models = tmp_path / "models"
    args = ["install", str(site.out), "--models-dir", str(models), "--skip", "venv", "--skip", "pulumi",
            "--skip", "stack", "--skip", "program", "--quiet"]
    assert cli(*args)[0] == 0
    return site, models, args


def test_files_an_earlier_install_put_there_are_removed_when_the_bundle_drops_them(flow, tmp_path):
    site, models, args = models_only_install(tmp_path)
    (site.src("emb") / "tokenizer" / "vocab.txt").unlink()
    assert cli(*build_args(site))[0] == 0
    code, out, err = cli(*args)
    assert code == 0 and "1 stale file removed" in out
    assert not (models / "emb" / "tokenizer").exists()  # the directory it leaves empty goes too
    assert (models / "emb" / "config.json").is_file()


def test_a_model_dropped_from_the_stack_keeps_its_weights_and_install_says_so(flow, tmp_path):
    site, models, args = models_only_install(tmp_path)
    weights = (models / "rr" / "weights.bin").read_bytes()
    write_stack(site, ["emb"], companion="vad")  # rr is no longer wanted
    assert cli(*build_args(site))[0] == 0
    code, out, _ = cli(*args)
    # weights cross the air gap at a cost: an install never deletes a whole model, it says so
    assert code == 0 and "kept 1 model directory this bundle no longer lists" in out and str(models / "rr") in out
    assert (models / "rr" / "weights.bin").read_bytes() == weights
    assert "kept 1 model directory" in cli(*args)[1]  # said again on every run while it is there
    write_stack(site, ["emb", "rr"], companion="vad")  # wanted again: nothing to copy
    assert cli(*build_args(site))[0] == 0
    code, out, _ = cli(*args)
    assert code == 0 and "copied" not in out and "kept" not in out, out


def test_wheels_for_another_python_are_refused_with_the_fix(flow, tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site, "--python-version", "3.99"))[0] == 0
    code, _, err = cli("install", str(site.out), "--venv", str(tmp_path / "venv"), "--skip", "pulumi",
                       "--skip", "models", "--skip", "stack", "--skip", "program", "--quiet")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert code == 1
    assert f"is Python {here}, the bundled wheels are for Python 3.99" in err and "--python-version" in err
    assert not (tmp_path / "venv").exists()


def test_an_incomplete_bundle_installs_nothing(flow, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(flow["bundle"], bundle)
    (bundle / "models/rr/config.json").unlink()
    code, _, err = cli("install", str(bundle), "--models-dir", str(tmp_path / "models"), "--skip", "venv",
                       "--skip", "program")
    assert code == 1 and "is incomplete; nothing was installed" in err and "models/rr/config.json: missing" in err
    assert not (tmp_path / "models").exists()


def test_install_help_exits_0(capsys):
    code, _ = run_cli("install", "--help")
    assert code == 0 and "--models-dir" in capsys.readouterr().out


def test_bytes_needed_counts_what_grows_and_the_largest_temp_copy(tmp_path):
    from bundle.format.manifest import FileEntry
    from bundle.install.space import bytes_needed

    (tmp_path / "same.bin").write_bytes(b"x" * 100)
    (tmp_path / "grows.bin").write_bytes(b"x" * 10)
    entries = [(FileEntry("m/same.bin", 100, "0" * 64, "model"), tmp_path / "same.bin"),  # in place: nothing
               (FileEntry("m/grows.bin", 60, "0" * 64, "model"), tmp_path / "grows.bin"),  # +50
               (FileEntry("m/new.bin", 30, "0" * 64, "model"), tmp_path / "sub" / "new.bin")]  # +30
    assert bytes_needed(entries) == 50 + 30 + 60  # and the 60-byte temp copy beside the old file
    assert bytes_needed(entries[:1]) == 0


def test_an_install_that_does_not_fit_on_the_disk_writes_nothing(flow, tmp_path, monkeypatch):
    import bundle.install.space

    site, models, args = models_only_install(tmp_path / "first")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(bundle.install.space.shutil, "disk_usage",  # a disk with 4 KiB left
                        lambda path: real_usage(path)._replace(free=4096))
    code, out, err = cli(*args)  # everything already in place: needs nothing, runs on a full disk
    assert code == 0 and "already in place" in out, err
    fresh = tmp_path / "fresh-models"
    args[args.index("--models-dir") + 1] = str(fresh)
    code, out, err = cli(*args)
    assert code == 1
    assert "not enough disk space for the models; nothing was installed" in err
    assert "4.0 KiB free on this disk, the model files need" in err and "--models-dir DIR" in err
    assert str(tmp_path) in err and not fresh.exists()
