"""`bundle diff OLD NEW`: what an update changes per stack, from manifests, directories or archives, on the
site's bare python3. Real builds of two bundle versions (image, models, wheels, program changed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bundle.format.manifest import MANIFEST_NAME
from tests.bundle_kit import build_args, cli, make_image_tar, make_model, make_site, make_wheel, site_python, write_stack



def bare(*argv: str) -> subprocess.CompletedProcess:
    proc = site_python(*argv)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """v1; v2 = one model changed; v3 = v2 + new image layer, a model added, a wheel and a program file newer."""
    root = tmp_path_factory.mktemp("diff")
    site = make_site(root / "online")
    plugin = root / "online" / "toolchain" / "plugins" / "resource-docker-v4.5.0" / "pulumi-resource-docker"
    plugin.parent.mkdir(parents=True)
    plugin.write_text("#!/bin/sh\necho docker 4.5.0\n")
    made = {}

    def build(name: str) -> Path:
        assert cli(*build_args(site))[0] == 0
        shutil.copytree(site.out, root / name)
        assert cli("pack", str(site.out), "-o", str(root / f"{name}.tar"), "--quiet")[0] == 0
        return root / name

    made["v1"] = build("v1")
    (site.src("rr") / "weights.bin").write_bytes(os.urandom(48 * 1024))
    made["v2"] = build("v2")
    make_image_tar(root / "online" / "image" / "xinference.tar", more_layers=(b"a new layer " * 3000,))
    make_model(site.src("asr"), {"model.pt": os.urandom(20 * 1024)})
    write_stack(site, ["emb", "rr", "asr"], companion="vad")
    for wheel in (root / "online" / "wheels").glob("*.whl"):
        wheel.unlink()
    make_wheel(root / "online" / "wheels", version="1.1")
    (root / "online" / "requirements.txt").write_text("xoffline_probe==1.1\n")
    (site.project / "__main__.py").write_text("print('the Pulumi program, newer')\n")
    newer = plugin.parent.with_name("resource-docker-v4.6.0")
    plugin.parent.rename(newer)
    (newer / plugin.name).write_text("#!/bin/sh\necho docker 4.6.0\n")
    made["v3"] = build("v3")
    assert cli(*build_args(site), "--base", str(made["v1"]))[0] == 0  # v3 as a delta on v1, as an update carries it
    assert cli("pack", str(site.out), "-o", str(root / "v3-on-v1.tar"), "--quiet")[0] == 0
    return root, made


def test_one_model_changed_relaunches_that_model_only(versions):
    root, made = versions
    report = json.loads(bare("diff", str(made["v1"]), str(made["v2"]), "--json").stdout)
    (stack,) = report["stacks"]
    assert stack["image"]["same"] and not stack["up"]["container_replaced"]
    (changed,) = stack["models"]["changed"]
    assert changed["uid"] == "rr" and changed["bytes"] == 48 * 1024
    assert stack["up"]["relaunch"] == ["rr"] and not stack["models"]["added"] and not stack["wheels"]
    assert not stack["plugins"] and not any(stack["pulumi"].values())
    assert report["delta_files"] == 2  # the model file, and the SBOM that lists its sha256
    sbom = (made["v2"] / "sbom.cdx.json").stat().st_size
    assert 48 * 1024 + sbom < report["delta_archive_bytes"] < 48 * 1024 + sbom + 32 * 1024
    text = bare("diff", str(made["v1"]), str(made["v2"])).stdout
    assert "image    the same" in text and "model    changed rr: 1 file, 48.0 KiB" in text, text
    assert "up       relaunches rr" in text


@pytest.mark.parametrize("form", ["directory", "archive", "manifest"])
def test_a_bigger_update_names_every_change(versions, form):
    root, made = versions
    spell = {"directory": lambda v: made[v], "archive": lambda v: root / f"{v}.tar",
             "manifest": lambda v: made[v] / MANIFEST_NAME}[form]
    report = json.loads(bare("diff", str(spell("v2")), str(spell("v3")), "--json").stdout)
    (stack,) = report["stacks"]
    image = stack["image"]
    assert not image["same"]
    if form == "manifest":
        assert "new_layers" not in image  # a manifest alone does not hold the layers
    else:
        assert image["new_layers"] == 1 and image["layers"] == 2 and image["new_layer_bytes"] == 12 * 3000
    assert [m["uid"] for m in stack["models"]["added"]] == ["asr"]
    assert stack["wheels"] == [{"name": "xoffline-probe", "old": "1.0", "new": "1.1"}]
    assert stack["program"]["changed"] == ["program/__main__.py"]
    assert stack["plugins"] == [{"name": "docker", "old": "4.5.0", "new": "4.6.0"}]
    assert stack["stack_file_changed"]
    assert stack["up"]["container_replaced"] and stack["up"]["relaunch"] == ["emb", "rr"]
    assert stack["up"]["launch"] == ["asr"]
    text = bare("diff", str(spell("v2")), str(spell("v3"))).stdout
    assert "plugin   docker 4.5.0 -> 4.6.0" in text
    assert "wheel    xoffline-probe 1.0 -> 1.1" in text and "up       replaces the container (new image)" in text


def test_the_figures_are_the_bytes_pack_writes(versions):
    """The full and the delta archive's sizes `diff` tells before anything is built are those of the
    archives `pack` then writes (tar pads to 10 KiB records: an estimate off by a little is off by a record)."""
    root, made = versions
    report = json.loads(bare("diff", str(made["v1"]), str(made["v3"]), "--json").stdout)
    assert report["full_archive_bytes"] == (root / "v3.tar").stat().st_size
    assert report["delta_archive_bytes"] == (root / "v3-on-v1.tar").stat().st_size
    assert report["delta_archive_bytes"] < report["full_archive_bytes"]
