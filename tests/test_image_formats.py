"""Image tars as newer engines save them (bundle/build/image_env.py, bundle/build/docker_image.py): gzip layers in
a `docker save` tar (Docker 29 with the containerd image store), an OCI-layout tar with no
manifest.json and zstd layers, crafted here with real gzip and the real `zstd`; and the CUDA the
image's torch says it was built for."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundle.format.errors import SetupError
from bundle.build.image_env import scan_image_tar, torch_cuda_version
from tests.bundle_kit import make_image_tar, python_layer

DISTS = {"xinference": "4.1.0", "torch": "2.11.0+cu130", "torchaudio": "2.11.0+cu130", "numpy": "2.4.6"}
SITE = "usr/local/lib/python3.12/dist-packages"  # the official image's layout: the system Python, no venv


def zstd(data: bytes) -> bytes:
    if shutil.which("zstd") is None:
        pytest.skip("no zstd command here (apt-get install zstd)")
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


def oci_tar(path: Path, layers: list[tuple[bytes, str]], image: str = "xprobe/xinference:v4.1.0",
            nested: bool = True) -> tuple[Path, str]:
    """An OCI image layout as `docker save` of a containerd-store engine writes it (index.json ->
    image index -> manifest -> config and layers as blobs/sha256/<hex>), no manifest.json. Returns the
    tar and the digest the engine reports as the image id (index.json's descriptor)."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": media, "digest": blob(data), "size": len(data)}
                                      for data, media in layers]}).encode()
    target = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
              "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"}}
    if nested:
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                           "digest": blob(b"{}"), "size": 2,
                                           "platform": {"architecture": "unknown", "os": "unknown"}}, target]}).encode()
        target = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": blob(index), "size": len(index)}
    top = json.dumps({"schemaVersion": 2, "manifests": [{**target, "annotations": {
        "io.containerd.image.name": f"docker.io/{image}", "org.opencontainers.image.ref.name": image.split(":")[1]}}]})
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": top.encode(),
             **{f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()}}
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, target["digest"]


def test_gzip_layers_of_a_docker_save_tar_are_read(tmp_path):
    base = gzip.compress(python_layer({**DISTS, "six": "1.17.0"}, python="3.12", site=SITE))
    upper = gzip.compress(python_layer({"inflect": "7.6.0"}, python="3.12", site=SITE,
                                       extra={f"{SITE}/.wh.six-1.17.0.dist-info": b""}))
    env = scan_image_tar(make_image_tar(tmp_path / "image.tar", layer=base, more_layers=(upper,)))
    assert env.python_version == "3.12" and env.installed == dict(sorted({**DISTS, "inflect": "7.6.0"}.items()))
    assert env.cuda_version == "13.0"


def test_an_oci_layout_tar_with_zstd_and_plain_layers_is_read(tmp_path):
    base = zstd(python_layer({**DISTS, "six": "1.17.0"}, python="3.12", site=SITE))
    upper = python_layer({"inflect": "7.6.0"}, python="3.12", site=SITE, extra={f"{SITE}/.wh.six-1.17.0.dist-info": b""})
    tar, _ = oci_tar(tmp_path / "oci.tar", [(base, "application/vnd.oci.image.layer.v1.tar+zstd"),
                                            (upper, "application/vnd.oci.image.layer.v1.tar")])
    env = scan_image_tar(tar)
    assert (env.python_version, env.machine, env.glibc) == ("3.12", "x86_64", "2.36")
    assert env.installed == dict(sorted({**DISTS, "inflect": "7.6.0"}.items()))


def test_a_damaged_zstd_layer_is_an_error_that_says_so(tmp_path):
    broken = zstd(python_layer(DISTS))[:-40] + b"\0" * 40
    tar, _ = oci_tar(tmp_path / "oci.tar", [(broken, "application/vnd.oci.image.layer.v1.tar+zstd")], nested=False)
    with pytest.raises(SetupError, match="zstd|cannot read the image's Python"):
        scan_image_tar(tar)


def test_a_tar_that_is_neither_layout_is_refused(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(SetupError, match="neither manifest.json nor index.json"):
        scan_image_tar(tmp_path / "x.tar")


@pytest.mark.parametrize("installed, cuda", [
    ({"torch": "2.11.0+cu130"}, "13.0"), ({"torch": "2.8.0+cu128"}, "12.8"), ({"Torch": "2.1.0+cu118"}, "11.8"),
    ({"torch": "2.15.0", "nvidia-cuda-runtime": "13.2.86"}, "13.2"),  # PyPI's torch: its CUDA runtime package
    ({"torch": "2.8.0", "nvidia-cuda-runtime-cu12": "12.8.90"}, "12.8"),
    ({"torch": "2.11.0+cpu"}, None), ({"torch": "2.11.0+rocm6.4"}, None), ({"torch": "2.15.0"}, None), ({}, None)])
def test_the_cuda_of_the_image_s_torch(installed, cuda):
    assert torch_cuda_version(installed) == cuda


def run_load_script(tmp_path: Path, tar: Path, reported_id: str, manifest_id: str) -> subprocess.CompletedProcess:
    """components/image.py's load script, run by sh with a stand-in `docker` that loads nothing and
    reports ``reported_id`` for the image (as an engine of each image store would)."""
    from components.image import load_script

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(f"#!/bin/sh\n[ \"$1\" = image ] && echo {reported_id}\nexit 0\n")
    (bin_dir / "docker").chmod(0o755)
    sha = hashlib.sha256(tar.read_bytes()).hexdigest()
    return subprocess.run(["sh", "-c", load_script("xprobe/xinference:v4.1.0", str(tar), sha, manifest_id)],
                          capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_after_a_load_the_id_a_containerd_store_engine_reports_is_accepted(tmp_path):
    tar, manifest_digest = oci_tar(tmp_path / "oci.tar", [(python_layer(DISTS), "application/vnd.oci.image.layer.v1.tar")])
    config_id = "sha256:" + "c" * 64  # what the bundle's manifest names (the config digest) and a classic engine reports
    assert run_load_script(tmp_path, tar, manifest_digest, config_id).returncode == 0  # containerd store
    other = run_load_script(tmp_path, tar, "sha256:" + "d" * 64, config_id)
    assert other.returncode == 1 and f"is not {config_id}, the id the manifest names" in other.stderr
    # an engine that reports nothing (the image is not there) is refused even for a tar without index.json
    plain = make_image_tar(tmp_path / "plain.tar", layer=python_layer(DISTS))
    assert run_load_script(tmp_path, plain, "", config_id).returncode == 1
