"""EngineImage's provider against the real engine: an image removed by hand (`docker rmi -f`) is
read as gone and loaded again from its tar, never pulled; a missing tar fails naming it and
changes nothing. A small image made for the test (busybox), its own id (a nonce label).
"""

from __future__ import annotations

import hashlib
import uuid
from types import SimpleNamespace

import pytest

from components.docker_cli import DockerHostUnreachable
from components.engine_image import EngineImageProvider, ImageLoadFailed
from components.image import load_script, no_tar_script
from tests.docker_engines import docker, require_main_engine
from tests.remote_engine import busybox_image

pytestmark = [pytest.mark.docker]


@pytest.fixture
def image(tmp_path):
    host = require_main_engine()
    made = busybox_image(nonce=uuid.uuid4().hex[:8], out_dir=tmp_path)
    yield host, made
    docker(host, "rmi", "-f", made.ref, made.id, check=False)


def props_of(host: str, made, tar: str) -> dict:
    sha = hashlib.sha256(made.path.read_bytes()).hexdigest()
    return {"image_name": made.ref, "tar_digest": sha, "docker_host": host, "expected_id": made.id,
            "load_script": load_script(made.ref, tar, sha, made.id, host), "load_env": {"DOCKER_HOST": host},
            "docker_ssh": None, "image_id": None}


def test_an_image_removed_by_hand_is_read_as_gone_and_loaded_again_from_its_tar(image):
    host, made = image
    provider = EngineImageProvider()
    props = props_of(host, made, str(made.path))
    created = provider.create(dict(props))
    assert created.id == made.id and created.outs["image_id"] == made.id
    assert provider.read(created.id, created.outs).id == made.id  # on the engine: unchanged
    docker(host, "rmi", "-f", made.ref)
    assert provider.read(created.id, created.outs).id is None  # gone: the next up creates it ...
    again = provider.create(dict(props))  # ... from the tar (a pull of xo-busybox could not succeed here)
    assert again.id == made.id
    assert docker(host, "image", "inspect", "--format", "{{.Id}}", made.ref).stdout.decode().strip() == made.id


def test_an_image_already_on_the_engine_is_adopted_without_reading_the_tar(image, tmp_path):
    host, made = image
    docker(host, "load", "-q", "-i", str(made.path))
    props = props_of(host, made, str(tmp_path / "no-such.tar"))  # nothing to load from, nothing needed
    assert EngineImageProvider().create(props).id == made.id


def test_a_missing_image_whose_tar_is_gone_too_fails_naming_the_tar(image, tmp_path):
    host, made = image
    missing = str(tmp_path / "bundle" / "images" / "gone.tar")
    with pytest.raises(ImageLoadFailed) as failed:
        EngineImageProvider().create(props_of(host, made, missing))
    message = str(failed.value)
    assert made.ref in message and host in message and missing in message and "not found" in message
    no_tar = {**props_of(host, made, missing), "load_script": no_tar_script(made.ref, host)}
    with pytest.raises(ImageLoadFailed, match="never pulled"):
        EngineImageProvider().create(no_tar)


def test_an_engine_that_does_not_answer_is_not_read_as_a_removed_image(image, tmp_path):
    host, made = image
    away = {**props_of(host, made, str(made.path)), "docker_host": f"unix://{tmp_path}/no-engine.sock"}
    with pytest.raises(DockerHostUnreachable):
        EngineImageProvider().read(made.id, away)


def test_preview_refuses_a_missing_image_whose_tar_is_missing_and_passes_once_the_engine_has_it(image, tmp_path):
    from components.image_check import image_tar_problems
    from stackspec.load import load_stack_config

    host, made = image
    tar = tmp_path / "images" / "xinference.tar"
    cfg = load_stack_config({"mode": "docker", "image": {"name": made.ref, "tar": str(tar)},
                             "models_dir": str(tmp_path / "models"), "docker": {"host": host}}, namespaced=False)
    problems = image_tar_problems(cfg, None)
    assert len(problems) == 1, problems
    for part in (made.ref, host, str(tar), "<unpacked bundle>/images/", "nothing was changed"):
        assert part in problems[0], part
    docker(host, "load", "-q", "-i", str(made.path))
    assert image_tar_problems(cfg, None) == []  # nothing to load: the tar is not needed


# ---------------------------------------------------------------------------------------------
# an image the bundle keeps as the members of its tar (bundle/format/image_dir.py)


def members_of(made, tmp_path):
    """A bundle directory keeping ``made`` as its members, the way `bundle build` lays it out."""
    import json

    from bundle.format.image_dir import members_digest, split_tar
    from components.image import BundleImage

    bundle = tmp_path / "bundle"
    members = split_tar(made.path, bundle / "images" / "xo")
    files = [{"path": f"images/xo/{m.name}", "size": m.size, "sha256": m.sha256} for m in members]
    (bundle / "MANIFEST.json").write_text(json.dumps({"files": files}))
    return BundleImage(str(bundle), "images/xo", members_digest(members)), members


def member_props(host: str, made, image) -> dict:
    from components.image import members_load_script

    return {"image_name": made.ref, "tar_digest": image.digest, "docker_host": host, "expected_id": made.id,
            "load_script": members_load_script(made.ref, image, made.id, host), "load_env": {"DOCKER_HOST": host},
            "docker_ssh": None, "image_id": None}


def test_the_members_of_the_bundle_are_streamed_into_docker_load_and_the_id_checked(image, tmp_path):
    host, made = image
    bundle_image, _ = members_of(made, tmp_path)
    created = EngineImageProvider().create(member_props(host, made, bundle_image))
    assert created.id == made.id
    assert docker(host, "image", "inspect", "--format", "{{.Id}}", made.ref).stdout.decode().strip() == made.id
    import shutil
    shutil.rmtree(bundle_image.bundle_dir)  # on the engine now: nothing is read or sent again
    assert EngineImageProvider().create(member_props(host, made, bundle_image)).id == made.id


def test_a_damaged_layer_is_refused_and_nothing_is_loaded(image, tmp_path):
    host, made = image
    bundle_image, members = members_of(made, tmp_path)
    layer = next(m for m in members if m.name.endswith("layer.tar"))
    path = tmp_path / "bundle" / "images" / "xo" / layer.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # the same size: only the sha256 tells
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadFailed) as failed:
        EngineImageProvider().create(member_props(host, made, bundle_image))
    message = str(failed.value)
    assert f"{layer.name} is damaged" in message and "nothing was loaded" in message, message
    assert docker(host, "image", "inspect", made.id, check=False).returncode != 0  # not on the engine


def test_preview_names_the_missing_member_of_an_image_kept_as_files(image, tmp_path):
    from components.image_check import image_tar_problems
    from stackspec.load import load_stack_config

    host, made = image
    bundle_image, members = members_of(made, tmp_path)
    cfg = load_stack_config({"mode": "docker", "image": {"name": made.ref}, "bundle_dir": bundle_image.bundle_dir,
                             "models_dir": str(tmp_path / "models"), "docker": {"host": host}}, namespaced=False)
    view = SimpleNamespace(entry=SimpleNamespace(image_dir="images/xo", image_tar=None, image_id=made.id),
                           role=lambda role: members, image_sha256=lambda: bundle_image.digest,
                           image_members=lambda: members)
    assert image_tar_problems(cfg, view) == []
    layer = next(m for m in members if m.name.endswith("layer.tar"))
    (tmp_path / "bundle" / "images" / "xo" / layer.name).unlink()
    (problem,) = image_tar_problems(cfg, view)
    assert f"{layer.name} is missing" in problem and "nothing was changed" in problem, problem
