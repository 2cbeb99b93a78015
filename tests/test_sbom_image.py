"""The SBOM of the real CPU Xinference image (tools/xinference-image.sh) against what the image itself says:
dpkg-query and importlib.metadata run inside a container of it (no network). The SBOM side reads only
the tar, as `bundle build` does; the image side is the independent reader.
"""

from __future__ import annotations

import json

import pytest

from bundle.format.manifest import FileEntry
from bundle.build.image_env import scan_image_tar
from bundle.build.sbom import ImageFacts, SbomInputs, sbom_json
from tests.docker_engines import docker, require_main_engine
from tests.docker_site import image_tar

pytestmark = pytest.mark.docker

IN_IMAGE_PYTHON = ("import importlib.metadata as m, json; "
                   "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")


def test_the_cpu_images_sbom_lists_what_dpkg_and_python_in_the_image_list():
    host = require_main_engine()
    tar = image_tar()  # cached after the first build
    info = json.loads((tar.parent / "image.json").read_text())
    env = scan_image_tar(tar)
    doc = json.loads(sbom_json(SbomInputs(
        files=[FileEntry("images/xinference.tar", info["tar_size"], info["tar_sha256"], "image")],
        images=[ImageFacts(info["tag"], "images/xinference.tar", info["image_id"], env)],
        models=[], engine_records=[], pulumi_versions={}, stacks=["local-docker"])))
    image = next(c for c in doc["components"] if c["type"] == "container")
    assert image["hashes"][0]["content"] == info["tar_sha256"]
    debs = {c["name"]: c["version"] for c in image["components"] if c["purl"].startswith("pkg:deb/")}
    pythons = {c["name"]: c["version"] for c in image["components"] if c["purl"].startswith("pkg:pypi/")}

    def in_image(*argv: str) -> str:
        return docker(host, "run", "--rm", "--network", "none", "--entrypoint", argv[0], info["tag"], *argv[1:],
                      timeout=300).stdout.decode()

    status = in_image("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n")
    installed = {name: version for name, version, state in (line.split(" ") for line in status.splitlines())
                 if state == "installed"}
    assert debs == installed and len(debs) > 50
    assert pythons == json.loads(in_image("python", "-c", IN_IMAGE_PYTHON)) and pythons["xinference"] == "4.1.0"
