"""Engine packages carried across the gap (bundle/build/image_env.py, bundle/build/engine_wheels.py), for real:
the image's Python read from a `docker save`-shaped tar with real layers, the split against it
compared with xoscar's own, and a bundle for a SenseVoiceSmall stand-in built from PyPI whose
funasr 1.2.7 and everything it pulls in a virtualenv over the image's Python then installs with
no index at all, as a launch does (uv), the image's own numpy carried as its metadata alone.

The download is cached under ~/.cache/xinference-offline/test-engine-wheels (the build's own
cache, keyed by the resolution's inputs), so only the first run on a machine fetches it (57 wheels,
about 160 MiB, and four sdists built into wheels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml
from packaging.utils import canonicalize_name, parse_wheel_filename

from bundle.build.engine_wheels import resolve_model, split_for_image
from bundle.format.errors import SetupError
from bundle.format.manifest import load_manifest, sha256_file
from bundle.build.image_env import ImageEnv, image_env, scan_image_tar
from stackspec.engine_packages import ModelPackages
from tests.bundle_kit import build_args, cli, make_image_tar, make_site, python_layer

CACHE = Path(os.environ.get("XINFERENCE_OFFLINE_CACHE") or Path.home() / ".cache" / "xinference-offline")
IMAGE_DISTS = {"xinference": "4.1.0", "torch": "2.15.0", "torchaudio": "2.15.0", "numpy": "2.4.6",
               "typing_extensions": "4.16.0", "sentence-transformers": "6.3.0"}


def test_the_image_python_is_read_from_the_layers_of_its_tar(tmp_path):
    base = python_layer({**IMAGE_DISTS, "six": "1.17.0"})
    # A later layer deletes six (a whiteout) and adds one more distribution.
    site = "opt/xinference/lib/python3.11/site-packages"
    upper = python_layer({"inflect": "7.6.0"}, extra={f"{site}/.wh.six-1.17.0.dist-info": b""})
    tar = make_image_tar(tmp_path / "image.tar", layer=base, more_layers=(upper,))
    env = scan_image_tar(tar)
    assert (env.python_version, env.machine, env.glibc) == ("3.11", "x86_64", "2.36")
    assert env.installed == dict(sorted({**IMAGE_DISTS, "inflect": "7.6.0"}.items()))
    assert env.platform == "manylinux_2_36_x86_64"
    assert env.platforms[:2] == ["manylinux_2_36_x86_64", "manylinux_2_35_x86_64"]
    assert "manylinux2014_x86_64" in env.platforms and "manylinux_2_17_x86_64" in env.platforms
    # remembered per tar: a second read does not open it
    assert image_env(tar, tmp_path / "cache") == env
    assert json.loads((tmp_path / "cache" / "image-env.json").read_text())
    tar.chmod(0)
    try:
        assert image_env(tar, tmp_path / "cache") == env
    finally:
        tar.chmod(0o644)


def test_the_image_python_s_patch_level_is_read_from_dpkg_or_from_a_source_built_python_s_headers(tmp_path):
    assert scan_image_tar(make_image_tar(tmp_path / "plain.tar", layer=python_layer(IMAGE_DISTS))).python_full_version \
        is None  # the tar does not say: the build machine's judgement stands
    status = ("Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u14\n\n"
              "Package: python3.11-minimal\nStatus: install ok installed\nVersion: 3.11.2-6+deb12u6\n\n").encode()
    debian = python_layer(IMAGE_DISTS, extra={"var/lib/dpkg/status": status})
    assert scan_image_tar(make_image_tar(tmp_path / "debian.tar", layer=debian)).python_full_version == "3.11.2"
    # a python:3.11 image: Python built from source into /usr/local, Debian's own python3.11 beside it
    header = b'#define PY_MINOR_VERSION 11\n#define PY_VERSION      "3.11.7"\n'
    source = python_layer(IMAGE_DISTS, site="usr/local/lib/python{py}/site-packages",
                          extra={"var/lib/dpkg/status": status, "usr/local/include/python3.11/patchlevel.h": header})
    assert scan_image_tar(make_image_tar(tmp_path / "source.tar", layer=source)).python_full_version == "3.11.7"


def test_a_tar_without_xinference_is_refused_with_the_reason(tmp_path):
    tar = make_image_tar(tmp_path / "image.tar", layer=python_layer({"numpy": "2.4.6"}))
    with pytest.raises(Exception, match="no site-packages in this image holds xinference"):
        scan_image_tar(tar)
    with pytest.raises(Exception, match="cannot read the image's Python"):
        scan_image_tar(make_image_tar(tmp_path / "flat.tar"))  # its layer is not a tar


def test_the_split_is_xoscar_s_own():
    pytest.importorskip("xoscar")
    from xoscar.virtualenv.uv import UVVirtualEnvManager

    env = ImageEnv("3.11", "x86_64", "2.36", dict(IMAGE_DISTS))
    requirements = ("funasr==1.2.7", "numpy>=2", "torch<2", "sentence_transformers", "sentence-transformers[onnx]",
                    "typing_extensions", "bitsandbytes ; sys_platform=='darwin'")
    ours = split_for_image(ModelPackages("m", None, requirements, ("torch", "torchaudio", "numpy", "pandas")), env)
    installed = {name.lower(): version for name, version in IMAGE_DISTS.items()}
    # xoscar's process_packages: #system_X# -> X==<installed, no local label>, or X when the image lacks it
    system = ["torch==2.15.0", "torchaudio==2.15.0", "numpy==2.4.6", "pandas"]
    specs = system + [r for r in requirements if "darwin" not in r]
    keep, to_resolve, pinned = UVVirtualEnvManager._split_specs(specs, installed)
    assert keep == []
    assert list(ours.to_resolve) == to_resolve
    assert ours.pinned == pinned
    assert ours.not_for_image == ("bitsandbytes ; sys_platform=='darwin'",)
    # the lower-cased comparison is xoscar's: sentence_transformers is not the installed sentence-transformers
    assert "sentence_transformers" in ours.to_resolve and "funasr==1.2.7" in ours.to_resolve


def sense_voice_site(tmp_path: Path):
    site = make_site(tmp_path, models={"sv": {"model.pt": b"stand-in weights " * 64, "config.yaml": b"a: 1\n"},
                                       "vad": {"model.pt": b"stand-in vad " * 16}})
    make_image_tar(tmp_path / "image" / "xinference.tar", layer=python_layer(IMAGE_DISTS))
    stack = yaml.safe_load((site.stacks / f"Pulumi.{site.stack}.yaml").read_text())
    stack["config"].pop("xinference-offline:container")  # virtualenvs on: the model installs its packages
    stack["config"]["xinference-offline:models"] = [
        {"uid": "SenseVoiceSmall", "type": "audio", "path": "SenseVoiceSmall",
         "source": {"hub": "local", "path": str(site.src("sv"))},
         "companions": [{"path": "fsmn-vad", "source": {"hub": "local", "path": str(site.src("vad"))}}],
         "extra": {"vad_model": "/root/.xinference/models/fsmn-vad"}}]
    (site.stacks / f"Pulumi.{site.stack}.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return site


@pytest.mark.network  # resolves against PyPI
def test_a_bundle_for_a_sense_voice_stand_in_carries_funasr_and_a_launch_installs_it_offline(tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the stand-in image's Python is 3.11: engine packages resolve with the image's Python")
    site = sense_voice_site(tmp_path)
    code, out, err = cli(*build_args(site, "--cache-dir", str(CACHE / "test-engine-wheels")))
    assert code == 0, err
    packages = site.out / "models" / "_engine_packages"
    wheels = packages / "wheels"
    record, = json.loads((packages / "packages.json").read_text())["models"]
    assert record["model"] == "SenseVoiceSmall" and record["requirements"] == ["funasr==1.2.7"]
    assert record["pinned_to_image"] == {"numpy": "2.4.6", "torch": "2.15.0", "torchaudio": "2.15.0"}
    assert record["resolved"] == ["funasr==1.2.7"] and (record["image_python"], record["image_platform"]) == \
        ("3.11", "manylinux_2_36_x86_64")
    names = sorted(os.listdir(wheels))
    assert names == record["wheels"] and "funasr-1.2.7-py3-none-any.whl" in names and len(names) > 40
    # what funasr pulls in, sdist-only ones built into wheels
    for project in ("kaldiio-", "librosa-", "modelscope-", "jieba-", "antlr4_python3_runtime-"):
        assert any(n.startswith(project) for n in names), project
    assert not any(n.startswith(("torch-", "torchaudio-")) for n in names)  # the image keeps those
    # every wheel is in the manifest with its hash, as a file of the model's directories
    manifest = load_manifest(site.out).for_stack(site.stack)
    entries = {f.path: f for f in manifest.files}
    for name in names:
        entry = entries[f"models/_engine_packages/wheels/{name}"]
        assert entry.sha256 == sha256_file(wheels / name) and entry.role == "model"
    assert "models/_engine_packages" in manifest.entry.models["SenseVoiceSmall"]
    assert (packages / "pip.conf").read_text().count("/root/.xinference/models/_engine_packages/wheels") == 2
    code, verified, err = cli("verify", str(site.out))
    assert code == 0, err
    # plan --bundle shows what was carried and its size
    code, plan, err = cli("plan", "--stack", site.stack, "--stacks-dir", str(site.stacks), "--bundle", str(site.out))
    assert f"wheels: {len(names)} ({len(record['image_stand_ins'])} of them the image's own, metadata only)," in plan
    assert "left to the image: torch torchaudio numpy" in plan, plan

    # numpy (and any other dependency the image has at the resolved version) is carried as its metadata alone
    assert "numpy-2.4.6-0image-py3-none-any.whl" in record["image_stand_ins"], record["image_stand_ins"]
    in_image = {}
    for stand_in in record["image_stand_ins"]:
        name, version, _build, _tags = parse_wheel_filename(stand_in)
        assert IMAGE_DISTS[next(n for n in IMAGE_DISTS if canonicalize_name(n) == name)] == str(version), stand_in
        assert (wheels / stand_in).stat().st_size < 10_000 and stand_in in names
        in_image[name] = str(version)
    python, image_python = install_as_the_site_does(tmp_path, wheels, in_image, "funasr==1.2.7")
    check = subprocess.run([python, "-c", "import importlib.metadata as m, kaldiio, jieba, oss2, hydra, librosa.util; "
                            "import numpy; print(m.version('funasr'), numpy.__file__)"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    version, numpy_file = check.stdout.split()
    assert version == "1.2.7" and numpy_file.startswith(str(image_python)), check.stdout  # numpy: the image's


def install_as_the_site_does(tmp_path: Path, wheels: Path, image: dict[str, str], requirement: str) -> tuple[str, Path]:
    """What a launch does with the carried folder, as Xinference and xoscar do it: a virtualenv over
    the image's Python (here a venv holding ``image``'s distributions, from PyPI) that sees its
    site-packages after its own, ``uv pip install --dry-run`` offline with the folder alone, then
    ``--no-deps`` of what the image lacks. (the model virtualenv's python, the image Python's prefix)"""
    system, model = tmp_path / "image-python", tmp_path / "model-venv"
    subprocess.run([sys.executable, "-m", "venv", str(system)], check=True)
    subprocess.run([str(system / "bin" / "pip"), "install", "-q", *(f"{n}=={v}" for n, v in image.items())],
                   check=True)
    uv = [str(Path(sys.executable).parent / "uv"), "pip", "install", "-p", str(model), "--offline", "--no-index",
          "-f", str(wheels)]
    subprocess.run([str(Path(sys.executable).parent / "uv"), "venv", "-q", str(model), "--system-site-packages",
                    "--python", str(system / "bin" / "python")], check=True)
    # as Xinference's worker does: the image's site-packages added after the virtualenv's own
    image_site = subprocess.run([str(system / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                 "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    (next(model.glob("lib/python3*/site-packages")) / "_xinference_parent.pth").write_text(
        f"import site; site.addsitedir({image_site!r})\n")
    plan = subprocess.run([*uv, "--dry-run", requirement], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    resolved = [line.strip()[2:] for line in plan.stderr.splitlines() if line.strip().startswith("+ ")]
    # uv sees the stand-ins, not the image
    assert {canonicalize_name(r.split("==")[0]): r.split("==")[1] for r in resolved}.items() >= image.items(), resolved
    missing = [r for r in resolved if canonicalize_name(r.split("==")[0]) not in image]
    done = subprocess.run([*uv, "--no-deps", *missing], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return str(model / "bin" / "python"), system


def python_312() -> Optional[Path]:
    """A Python 3.12 interpreter of this machine (on PATH, or one pyenv installed but has not activated)."""
    candidates = [shutil.which("python3.12"), *sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        done = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                              capture_output=True, text=True)
        if done.stdout.strip() == "True":
            return Path(candidate)
    return None


def test_an_image_of_another_python_is_resolved_by_a_build_venv_of_its_python(tmp_path, monkeypatch):
    """A 3.12 image from this 3.11 build: jaraco.context 6.0.1 asks backports.tarfile only below 3.12, so
    the set is the 3.12 one only when pip runs under 3.12 (``--python-version`` alone keeps this
    Python's markers), in a build venv bundle/build/resolving_python.py makes from an interpreter here."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the test resolves for 3.12 from a 3.11 build")
    interpreter = python_312()
    if interpreter is None:
        pytest.skip("no Python 3.12 on this machine to make the build venv from")
    monkeypatch.setenv("PATH", f"{interpreter.parent}:{os.environ['PATH']}")  # where uv looks for it
    said: list[str] = []
    packages = ModelPackages("m", None, ("jaraco.context==6.0.1",), ())
    for python, expected in (("3.12", ["jaraco.context"]), ("3.11", ["backports.tarfile", "jaraco.context"])):
        env = ImageEnv(python, "x86_64", "2.36", {"xinference": "4.1.0"})
        wheels = resolve_model(packages, env, tmp_path / "cache", said.append)
        assert sorted(parse_wheel_filename(f)[0] for f in wheels.files) == sorted(map(canonicalize_name, expected))
    venv = tmp_path / "cache" / "build-python" / "3.12"
    assert any(f"making a build venv of Python 3.12 in {venv}" in line for line in said), said
    assert (venv / "bin" / "python").exists() and not (tmp_path / "cache" / "build-python" / "3.11").exists()

def test_an_image_python_this_machine_lacks_is_refused_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no pyenv, no Python 3.5 anywhere on it
    env = ImageEnv("3.5", "x86_64", "2.36", {"xinference": "4.1.0"})
    with pytest.raises(SetupError) as refused:
        resolve_model(ModelPackages("m", None, ("inflect==7.6.0",), ()), env, tmp_path / "cache")
    assert "this machine has no Python 3.5 to resolve its engine packages with" in str(refused.value)
    assert "Fix: install one (apt-get install python3.5, or pyenv install 3.5)" in str(refused.value)
    assert not (tmp_path / "cache" / "build-python" / "3.5").exists()
