"""The image kept as the members of its `docker save` tar (bundle/format/image_dir.py): each layer a bundle
file, so a delta carries only new layers (a label-only change only the config and manifest.json); the
members streamed back as one tar with manifest.json last, a damaged member cut inside and never loaded;
old bundles holding one tar still build, verify and install. Real tars, bundles and archives; the engine
half is in tests/test_engine_image.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from bundle.format import image_dir
from bundle.format.delta import carried
from bundle.format.errors import ManifestError
from bundle.format.image_dir import ImageDirError, MemberDamaged, members_digest, split_tar, stream_order, write_tar
from bundle.format.manifest import MANIFEST_NAME, load_manifest, parse_manifest
from components.deployment import image_tar_path
from components.image import bundle_image
from tests.bundle_kit import IMAGE, build_args, cli, make_image_tar, make_site, site_python

BASE_LAYER, NEW_LAYER = os.urandom(300 * 1024), os.urandom(200 * 1024)


def classic_tar(path: Path) -> Path:
    """make_image_tar's tar plus what a classic `docker save` also writes: a directory entry, a layer
    linked to one already written (a symlink), and `repositories`."""
    make_image_tar(path, layer=BASE_LAYER, more_layers=(NEW_LAYER,))
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        directory = tarfile.TarInfo("dup")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        link = tarfile.TarInfo("dup/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../" + members[1][0].name
        tar.addfile(link)
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        repositories = json.dumps({"xprobe/xinference": {"v4.1.0": "x"}}).encode()
        info = tarfile.TarInfo("repositories")
        info.size = len(repositories)
        tar.addfile(info, io.BytesIO(repositories))
    return path


def contents(tar_bytes: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def test_the_members_stream_back_as_the_same_files_with_manifest_json_last(tmp_path):
    tar = classic_tar(tmp_path / "image.tar")
    members = split_tar(tar, tmp_path / "members")
    names = [m.name for m in members]
    assert "dup/layer.tar" in names and "repositories" in names and "dup" not in names
    out = io.BytesIO()
    write_tar(tmp_path / "members", stream_order(members), out)
    with tarfile.open(tar) as original:
        expected = {m.name: original.extractfile(m).read() for m in original if m.isreg()}
    got = contents(out.getvalue())
    assert got["dup/layer.tar"] == got[next(n for n in expected if n.endswith("/layer.tar"))]  # the link's bytes
    del got["dup/layer.tar"]
    assert got == expected
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as streamed:
        files = [m.name for m in streamed if m.isreg()]
    assert files[-2:] == ["repositories", "manifest.json"]
    assert {m.sha256 for m in members} >= {hashlib.sha256(data).hexdigest() for data in expected.values()}


def test_a_damaged_member_is_cut_inside_and_manifest_json_is_never_sent(tmp_path):
    members = split_tar(make_image_tar(tmp_path / "image.tar", layer=BASE_LAYER), tmp_path / "members")
    layer = next(m for m in members if m.name.endswith("/layer.tar"))
    path = tmp_path / "members" / layer.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the same size, one bit off
    path.write_bytes(bytes(data))
    out = io.BytesIO()
    with pytest.raises(MemberDamaged, match=f"{layer.name} is damaged: its sha256"):
        write_tar(tmp_path / "members", stream_order(members), out)
    sent = out.getvalue()
    assert b"manifest.json" not in sent
    start = sent.index(layer.name.encode())
    assert len(sent) - start < layer.size  # the member's last chunk was held back: never sent whole


def bundle_of(tmp_path: Path) -> tuple[Path, list[image_dir.Member]]:
    """A bundle directory holding only an image kept as members (what load reads: MANIFEST.json's files)."""
    bundle = tmp_path / "bundle"
    members = split_tar(make_image_tar(tmp_path / "image.tar", layer=BASE_LAYER), bundle / "images" / "x")
    files = [{"path": f"images/x/{m.name}", "size": m.size, "sha256": m.sha256} for m in members]
    (bundle / MANIFEST_NAME).write_text(json.dumps({"files": files}))
    return bundle, members


def loader(out: Path) -> list[str]:
    return [sys.executable, "-c", f"import shutil,sys; shutil.copyfileobj(sys.stdin.buffer, open({str(out)!r}, 'wb'))"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    """image_dir.py as the load script runs it: `python3 -I FILE ...` (standard library only)."""
    return subprocess.run([sys.executable, "-I", image_dir.__file__, *args], capture_output=True, text=True,
                          timeout=120)


def test_the_load_script_streams_the_planned_members_into_the_loader(tmp_path):
    bundle, members = bundle_of(tmp_path)
    got = tmp_path / "loaded.tar"
    done = run_script("load", "--bundle", str(bundle), "--image", "images/x", "--digest", members_digest(members),
                      "--", *loader(got))
    assert done.returncode == 0, done.stderr
    assert set(contents(got.read_bytes())) == {m.name for m in members}


def test_a_damaged_missing_or_unplanned_member_is_refused_and_nothing_is_loaded(tmp_path):
    bundle, members = bundle_of(tmp_path)
    digest, got = members_digest(members), tmp_path / "loaded.tar"
    layer = next(m for m in members if m.name.endswith("/layer.tar"))
    args = ["load", "--bundle", str(bundle), "--image", "images/x", "--digest", digest, "--", *loader(got)]
    (bundle / "images" / "x" / layer.name).write_bytes(b"\0" * layer.size)
    done = run_script(*args)
    assert done.returncode == 1 and "is damaged" in done.stderr and "nothing was loaded" in done.stderr
    assert not got.exists() or b"manifest.json" not in got.read_bytes()  # killed, maybe before it opened it
    got.unlink(missing_ok=True)
    (bundle / "images" / "x" / layer.name).unlink()
    done = run_script(*args)
    assert done.returncode == 1 and f"{layer.name} is missing" in done.stderr and "Nothing was sent" in done.stderr
    assert not got.exists()  # refused before the loader started
    args[args.index(digest)] = "0" * 64
    done = run_script(*args)
    assert done.returncode == 1 and "than the program planned with" in done.stderr and not got.exists()


def test_split_refuses_what_is_not_a_docker_save_tar(tmp_path):
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ImageDirError, match="not a plain relative path"):
        split_tar(tmp_path / "evil.tar", tmp_path / "m1")
    with tarfile.open(tmp_path / "none.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("a.json"), io.BytesIO(b""))
    with pytest.raises(ImageDirError, match="has no manifest.json"):
        split_tar(tmp_path / "none.tar", tmp_path / "m2")


# ---------------------------------------------------------------------------------------------
# bundles


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """v1 with the base image; B: a new image on top of it (one layer more); C: a label-only change."""
    root = tmp_path_factory.mktemp("image-dir")
    site = make_site(root / "online")
    image = site.root / "image" / "xinference.tar"
    make_image_tar(image, layer=BASE_LAYER)
    assert cli(*build_args(site))[0] == 0
    v1 = root / "v1"
    os.rename(site.out, v1)
    assert cli(*build_args(site, "--image-form", "tar"))[0] == 0
    os.rename(site.out, root / "old")
    out = {"site": site, "v1": v1, "old": root / "old"}
    for name, layers, arch in (("b", (NEW_LAYER,), "amd64"), ("c", (), "arm64")):  # C: only the config differs
        make_image_tar(image, layer=BASE_LAYER, more_layers=layers, architecture=arch)
        code, _, err = cli(*build_args(site), "--base", str(v1))
        assert code == 0, err
        assert cli("pack", str(site.out), "-o", str(root / f"{name}.tar"), "--quiet")[0] == 0
        out[name] = root / name
        os.rename(site.out, out[name])
    return out


def test_each_layer_is_a_bundle_file_and_the_bundle_verifies(releases):
    manifest = load_manifest(releases["v1"])
    entry = manifest.stacks["t1"]
    assert entry.image_tar is None and entry.image_dir == "images/xprobe_xinference_v4.1.0"
    images = [f.path for f in manifest.files if f.role == "image"]
    assert f"{entry.image_dir}/manifest.json" in images and len(images) == 3  # config, layer, manifest.json
    assert manifest.for_stack("t1").image_sha256() == members_digest(manifest.for_stack("t1").image_members())
    assert cli("verify", str(releases["v1"]), "--bundle-id", manifest.bundle_id)[0] == 0


def test_a_new_image_on_the_same_base_carries_only_its_new_layer(releases):
    new = load_manifest(releases["b"])
    images = [f for f in carried(new) if f.role == "image"]
    layers = [f for f in images if f.path.endswith("/layer.tar")]
    assert len(layers) == 1 and layers[0].size == len(NEW_LAYER)
    assert sum(f.size for f in images) < len(NEW_LAYER) + 4096  # + the config and manifest.json
    assert not any(f.size == len(BASE_LAYER) for f in carried(new))


def test_a_label_only_change_carries_only_the_config_and_manifest_json(releases):
    images = [f for f in carried(load_manifest(releases["c"])) if f.role == "image"]
    assert sorted(f.path.rsplit("/", 1)[-1].rsplit(".", 1)[-1] for f in images) == ["json", "json"]
    assert sum(f.size for f in images) < 4096


def test_the_delta_of_new_layers_unpacks_on_the_site_into_a_bundle_that_verifies(releases, tmp_path):
    into = tmp_path / "b-site"
    done = site_python("unpack", str(releases["b"].with_suffix(".tar")), "--into", str(into), "--base",
                       str(releases["v1"]), "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = load_manifest(into)
    assert cli("verify", str(into), "--bundle-id", manifest.bundle_id)[0] == 0


def test_an_old_form_bundle_keeps_one_tar_and_installs(tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site, "--image-form", "tar"))[0] == 0
    text = (site.out / MANIFEST_NAME).read_text()
    assert '"image_dir"' not in text  # as bundles built before: their ids are unchanged
    manifest = load_manifest(site.out)
    assert manifest.stacks["t1"].image_tar == "images/xprobe_xinference_v4.1.0.tar"
    assert cli("pack", str(site.out), "-o", str(tmp_path / "old.tar"), "--quiet")[0] == 0
    project = tmp_path / "site-project"
    done = site_python("install", str(tmp_path / "old.tar"), "--bundle-id", manifest.bundle_id, "--project",
                       str(project), "--models-dir", str(tmp_path / "models"), "--into", str(tmp_path / "bundle"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bundle" / "images" / "xprobe_xinference_v4.1.0.tar").is_file()


def test_the_program_loads_a_tar_or_the_members_as_the_bundle_keeps_the_image(releases, tmp_path):
    view = load_manifest(releases["v1"]).for_stack("t1")
    cfg = SimpleNamespace(bundle_dir=str(releases["v1"]), image=SimpleNamespace(name=IMAGE, tar=None))
    image = bundle_image(cfg, view)  # type: ignore[arg-type]
    assert image is not None and image.image_dir == "images/xprobe_xinference_v4.1.0"
    assert image.digest == view.image_sha256() and image_tar_path(cfg, view) is None  # type: ignore[arg-type]
    old = load_manifest(releases["old"]).for_stack("t1")
    assert bundle_image(cfg, old) is None  # type: ignore[arg-type]
    assert image_tar_path(cfg, old) == os.path.join(cfg.bundle_dir, "images/xprobe_xinference_v4.1.0.tar")  # type: ignore[arg-type]


def test_the_manifest_refuses_an_image_dir_without_its_manifest_json_or_beside_a_tar(releases):
    data = json.loads((releases["v1"] / MANIFEST_NAME).read_text())
    data.pop("digest")
    from bundle.format.manifest_check import content_digest

    def checked(doc: dict) -> None:
        doc = dict(doc, digest=content_digest({k: v for k, v in doc.items() if k != "digest"}))
        parse_manifest(json.dumps(doc).encode(), "M")

    both = json.loads(json.dumps(data))
    both["stacks"]["t1"]["image_tar"] = "images/xprobe_xinference_v4.1.0.tar"
    with pytest.raises(ManifestError, match=r"image_dir: expected null when image_tar"):
        checked(both)
    nothing = json.loads(json.dumps(data))
    nothing["files"] = [f for f in nothing["files"] if not f["path"].endswith("/manifest.json")]
    with pytest.raises(ManifestError, match="a directory whose manifest.json this manifest lists"):
        checked(nothing)


@pytest.mark.parametrize("form", ["layers", "tar"])
def test_the_program_loads_the_image_as_the_bundle_keeps_it(tmp_path, form):
    """The Pulumi program (under mocks) on a bundle: one keeping the image as files runs image_dir.py with the
    planned digest (also the reload trigger); an old-form bundle loads its one tar, as before."""
    from tests.test_program import ENGINE_IMAGE, run_program
    from tests.stack_configs import docker_stack

    site = make_site(tmp_path / "online", stack="gpu-node-1")
    assert cli(*build_args(site, "--image-form", form))[0] == 0
    view = load_manifest(site.out).for_stack("gpu-node-1")
    models = [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "path": "emb"},
              {"uid": "rr", "name": "bce-reranker-base_v1", "type": "rerank", "path": "rr"}]
    mocks, _ = run_program(docker_stack(bundle_dir=str(site.out), image={"name": IMAGE}, models=models,
                                        models_dir=str(tmp_path / "models"), gpus=[]))
    load = mocks.resources["xinference-image-load"].inputs
    if form == "layers":
        assert f"{image_dir.__file__} load --bundle {site.out} --image images/xprobe_xinference_v4.1.0 " \
               f"--digest {view.image_sha256()} -- docker load" in load["create"]
    else:
        assert f"docker load -i {site.out}/images/xprobe_xinference_v4.1.0.tar" in load["create"]
    assert load["triggers"] == [view.image_sha256()]
    image = mocks.one(ENGINE_IMAGE)
    assert image.inputs["expected_id"] == view.entry.image_id and image.inputs["load_script"] == load["create"]
