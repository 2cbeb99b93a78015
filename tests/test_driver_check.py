"""The driver preflight (components/driver_check.py): the CUDA an image says it needs, read from its
tar's config, against what the docker host's NVIDIA driver supports, asked through a stand-in
`nvidia-smi` on PATH (as the NVIDIA runtime hook is stood in for in tests/test_docker_gpu.py); then
the whole preflight on a real engine with the NVIDIA device driver registered, before anything exists."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from bundle.format.image_tar import image_config, required_cuda
from components.driver_check import driver_cuda, driver_problem
from components.preflight import docker_host_problems
from stackspec.load import load_stack_config
from tests.docker_engines import TestDaemon, docker, require_main_engine
from tests.stack_configs import docker_stack, namespaced

SLIM = "xprobe/xinference:v4.1.0"
SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
"""


def image_tar(path: Path, env: list[str], labels: dict | None = None) -> Path:
    """A `docker save` tar whose config carries ``env`` and ``labels`` (the layer is not read)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/usr/local/bin:/usr/bin", *env], "Labels": labels or {}}}).encode()
    name = hashlib.sha256(config).hexdigest() + ".json"
    files = {name: config, "l/layer.tar": b"", "manifest.json": json.dumps(
        [{"Config": name, "RepoTags": [SLIM], "Layers": ["l/layer.tar"]}]).encode()}
    with tarfile.open(path, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch):
    """Put a stand-in `nvidia-smi` that reports driver CUDA ``cuda`` on PATH."""
    bin_dir = tmp_path / "smi-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")

    def install(cuda: str, driver: str = "550.54.15") -> Path:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\ncat <<'EOF'\n" + SMI.format(driver=driver, cuda=cuda) + "EOF\n")
        smi.chmod(0o755)
        return smi

    return install


@pytest.mark.parametrize("env, labels, needed", [
    (["NVIDIA_REQUIRE_CUDA=cuda>=13.0 brand=tesla,driver>=535,driver<536", "CUDA_VERSION=13.0.1"], {}, "13.0"),
    (["CUDA_VERSION=12.8.1"], {}, "12.8"),
    ([], {"com.nvidia.cuda.version": "12.4.1"}, "12.4"),
    (["NVIDIA_REQUIRE_CUDA=cuda>=13.0", "NVIDIA_DISABLE_REQUIRE=1"], {}, None),
    ([], {}, None)])
def test_the_cuda_an_image_needs_is_read_from_its_tar_config(tmp_path, env, labels, needed):
    assert required_cuda(image_config(image_tar(tmp_path / "i.tar", env, labels))) == needed


def test_the_driver_s_cuda_is_read_from_nvidia_smi():
    assert driver_cuda(SMI.format(driver="580.65.06", cuda="13.0")) == "13.0"
    assert driver_cuda("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.") is None


def test_a_driver_too_old_for_the_image_is_refused_naming_both_versions_and_the_fix(tmp_path, nvidia_smi):
    tar = image_tar(tmp_path / "slim.tar", ["NVIDIA_REQUIRE_CUDA=cuda>=13.0", "CUDA_VERSION=13.0.1"])
    nvidia_smi("12.4")
    problem = driver_problem("unix:///var/run/docker.sock", SLIM, str(tar))
    assert problem is not None
    assert f"image {SLIM} needs CUDA >= 13.0, but the NVIDIA driver there supports CUDA 12.4 (driver 550.54.15)" in problem
    assert "Nothing was changed" in problem and "upgrade that host's NVIDIA driver to one for CUDA 13.0" in problem
    nvidia_smi("13.0", driver="580.65.06")
    assert driver_problem("unix:///var/run/docker.sock", SLIM, str(tar)) is None
    nvidia_smi("13.2", driver="590.1")
    assert driver_problem("unix:///var/run/docker.sock", SLIM, str(tar)) is None


def test_nothing_is_asked_when_the_image_says_no_cuda_or_the_host_has_no_nvidia_smi(tmp_path, nvidia_smi,
                                                                                       monkeypatch):
    cpu = image_tar(tmp_path / "cpu.tar", [])
    smi = nvidia_smi("11.8")
    smi.write_text("#!/bin/sh\necho asked >> " + str(tmp_path / "asked") + "\nexit 1\n")
    assert driver_problem("unix:///var/run/docker.sock", SLIM, str(cpu)) is None
    assert not (tmp_path / "asked").exists()  # a CPU image: the driver is not asked
    slim = image_tar(tmp_path / "slim.tar", ["NVIDIA_REQUIRE_CUDA=cuda>=13.0"])
    assert driver_problem("unix:///var/run/docker.sock", SLIM, str(slim)) is None  # nvidia-smi failed: not judged
    monkeypatch.setenv("PATH", "/nonexistent")
    assert driver_problem("unix:///var/run/docker.sock", SLIM, str(slim)) is None  # none there


def test_the_driver_is_asked_over_the_stack_s_ssh(tmp_path):
    """For an ssh:// host the command runs through the host's ssh argv (here a stand-in for ssh that
    runs the remote command in its own PATH, where the host's nvidia-smi is)."""
    remote_bin = tmp_path / "remote-bin"
    remote_bin.mkdir()
    (remote_bin / "nvidia-smi").write_text("#!/bin/sh\ncat <<'EOF'\n" + SMI.format(driver="535.1", cuda="12.2") + "EOF\n")
    (remote_bin / "nvidia-smi").chmod(0o755)
    ssh = tmp_path / "ssh"
    ssh.write_text(f"#!/bin/sh\nshift  # the host name\nPATH={remote_bin}:$PATH exec \"$@\"\n")
    ssh.chmod(0o755)
    tar = image_tar(tmp_path / "slim.tar", ["NVIDIA_REQUIRE_CUDA=cuda>=13.0"])
    problem = driver_problem("ssh://ops@gpu-node-2", SLIM, str(tar), ssh_argv=[str(ssh), "ops@gpu-node-2"])
    assert problem and "docker host ssh://ops@gpu-node-2" in problem and "supports CUDA 12.2" in problem


@pytest.mark.docker
def test_the_preflight_refuses_an_old_driver_before_anything_exists(tmp_path, nvidia_smi):
    require_main_engine()
    daemon = TestDaemon("drv", gpu_hook=True, subnet="10.231.9").start()
    try:
        nvidia_smi("12.4")
        tar = image_tar(tmp_path / "slim.tar", ["NVIDIA_REQUIRE_CUDA=cuda>=13.0"])
        name = f"xo-drv-{uuid.uuid4().hex[:6]}"
        cfg = load_stack_config(namespaced(docker_stack(
            image={"name": SLIM, "tar": str(tar)}, docker={"host": daemon.host},
            container={"name": name}, models=[], models_dir=str(tmp_path / "models"))))
        problems = docker_host_problems(cfg, "drv")
        assert any("needs CUDA >= 13.0, but the NVIDIA driver there supports CUDA 12.4" in p for p in problems), problems
        assert docker(daemon.host, "ps", "-aq").stdout.strip() == b""  # nothing was created
        nvidia_smi("13.0")
        assert docker_host_problems(cfg, "drv") == []
    finally:
        daemon.stop()


def test_a_bundle_that_keeps_the_image_as_its_members_is_judged_the_same(tmp_path, nvidia_smi):
    # new bundles hold images/NAME/ (the tar's members), not the tar: the program passes that directory
    from bundle.format.image_dir import split_tar

    tar = image_tar(tmp_path / "slim.tar", ["NVIDIA_REQUIRE_CUDA=cuda>=13.0"])
    members = tmp_path / "bundle" / "images" / "slim"
    split_tar(tar, members)
    nvidia_smi("12.4")
    problem = driver_problem("unix:///var/run/docker.sock", SLIM, str(members))
    assert problem is not None and "needs CUDA >= 13.0, but the NVIDIA driver there supports CUDA 12.4" in problem
    (members / "manifest.json").write_text("[]")  # damaged: named as a problem, before anything changes
    problem = driver_problem("unix:///var/run/docker.sock", SLIM, str(members))
    assert problem is not None and f"{members}: cannot read the image config of this image directory" in problem
