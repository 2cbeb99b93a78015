"""One command on the site: `python3 -m bundle install ARCHIVE --bundle-id ID --stack S ...` unpacks (every
file hashed as it is extracted), installs, and prints the pulumi commands; run as the site runs it, with the
bare python3 of a fresh server, from the program taken out of the archive."""

from __future__ import annotations

import subprocess
import tarfile

import pytest

from bundle.format.manifest import load_manifest
from tests.bundle_kit import WHEEL_NAME, build_args, cli, make_site, site_python, tree



@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    root = tmp_path_factory.mktemp("install-archive")
    site = make_site(root / "online")
    assert cli(*build_args(site))[0] == 0
    archive = root / "site" / "gpu-node-1.tar"
    assert cli("pack", str(site.out), "-o", str(archive), "--quiet")[0] == 0
    return site, archive


def test_install_takes_the_archive_itself_and_prints_the_pulumi_commands(carried, tmp_path):
    site, archive = carried
    bundle_id = load_manifest(site.out).bundle_id
    project = tmp_path / "program"
    with tarfile.open(archive) as tar:  # the README's step: the program out of the archive first
        tar.extractall(tmp_path, members=[m for m in tar.getmembers() if m.name.startswith("program/")],
                       filter="data")
    proc = site_python("install", str(archive), "--bundle-id", bundle_id, "--stack", site.stack, "--project", ".",
                       "--models-dir", str(tmp_path / "models"), "--pulumi-home", str(tmp_path / "pulumi"),
                       "--quiet", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bundle = archive.parent / "bundle"  # the default: beside the archive
    out = proc.stdout
    assert f"unpack: {archive} -> {bundle}:" in out and f"bundle id {bundle_id}" in out
    assert "installed 1 wheel with no index" in out and "models   6 files copied" in out
    for line in ("pulumi login file://$PWD/.state", f"pulumi stack select --create {site.stack}",
                 f"pulumi preview --stack {site.stack}   # then: pulumi up --stack {site.stack}",
                 f"export PATH={tmp_path / 'pulumi'}/bin:$PATH PULUMI_HOME={tmp_path / 'pulumi'}"):
        assert line in out, out
    assert tree(bundle) == tree(site.out)
    assert site_python("verify", str(bundle), "--bundle-id", bundle_id, cwd=project).returncode == 0
    assert tree(tmp_path / "models" / "emb") == tree(site.out / "models" / "emb")
    venv_python = project / "venv" / "bin" / "python"
    check = subprocess.run([str(venv_python), "-c", f"import {WHEEL_NAME}"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # a second run: the bundle is already there (hashed, not unpacked again), nothing else to do
    proc = site_python("install", str(archive), "--bundle-id", bundle_id, "--stack", site.stack, "--project", ".",
                       "--models-dir", str(tmp_path / "models"), "--pulumi-home", str(tmp_path / "pulumi"),
                       cwd=project)
    assert proc.returncode == 0 and "install: nothing to do" in proc.stdout, proc.stdout + proc.stderr
    assert "already holds bundle" in proc.stderr


def test_a_wrong_bundle_id_refuses_the_archive_before_anything_is_written(carried, tmp_path):
    site, archive = carried
    proc = site_python("install", str(archive), "--bundle-id", "0" * 64, "--into", str(tmp_path / "bundle"),
                       "--project", str(tmp_path / "project"), cwd=tmp_path)
    assert proc.returncode == 1 and f"expected {'0' * 64}" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_into_with_a_bundle_directory_is_a_usage_error(carried, tmp_path):
    site, _archive = carried
    code, _, err = cli("install", str(site.out), "--into", str(tmp_path / "b"))
    assert code == 2 and "--into" in err and "only with an archive" in err, err
