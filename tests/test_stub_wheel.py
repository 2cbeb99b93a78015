"""Metadata-only stand-ins for the image's own distributions (bundle/build/stub_wheel.py) and the
resolution that decides them (bundle/build/engine_wheels.py): real pip and uv, real venvs; the
resolutions ask PyPI (a few small wheels)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundle.build.engine_wheels import ImageSplit, image_constraints, resolve_model
from bundle.format.errors import FetchError
from bundle.build.image_env import ImageEnv
from bundle.install.pip_env import offline_pip_env
from bundle.build.stub_wheel import stub_filename, stub_wheel_bytes, write_stub_wheel
from stackspec.engine_packages import ModelPackages


def test_the_stand_in_installs_as_its_metadata_and_nothing_to_import(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name = write_stub_wheel(wheels, "Typing_Extensions", "4.12.2", ["mypy-extensions>=1; python_version<'3.8'"],
                            ">=3.8")
    assert name == "typing_extensions-4.12.2-0image-py3-none-any.whl" == stub_filename("typing-extensions", "4.12.2")
    # the same bytes every time (the cache and the manifest stay stable)
    assert (wheels / name).read_bytes() == stub_wheel_bytes("Typing_Extensions", "4.12.2",
                                                            ["mypy-extensions>=1; python_version<'3.8'"], ">=3.8")
    with zipfile.ZipFile(wheels / name) as wheel:
        assert sorted(wheel.namelist()) == [f"typing_extensions-4.12.2.dist-info/{f}" for f in ("METADATA", "RECORD",
                                                                                                 "WHEEL")]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    uv = str(Path(sys.executable).parent / "uv")
    done = subprocess.run([uv, "pip", "install", "-p", str(venv), "--offline", "--no-index", "-f", str(wheels),
                           "typing-extensions==4.12.2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    probe = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                            "import importlib.metadata as m, importlib.util as u; d = m.distribution('typing_extensions');"
                            "print(d.version, d.requires, d.metadata['Requires-Python'], u.find_spec('typing_extensions'))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == ("4.12.2 [\"mypy-extensions>=1; python_version<'3.8'\"] >=3.8 None"), probe


def test_a_local_version_keeps_its_label_in_the_file_name():
    assert stub_filename("torch", "2.8.0+cu128") == "torch-2.8.0+cu128-0image-py3-none-any.whl"
    assert stub_filename("nvidia-cublas-cu12", "12.8.4.1") == "nvidia_cublas_cu12-12.8.4.1-0image-py3-none-any.whl"


def test_the_constraints_are_the_image_s_versions_less_what_the_model_asks_anew():
    env = ImageEnv("3.11", "x86_64", "2.36", {"torch": "2.8.0+cu128", "Typing_Extensions": "4.0.0", "numpy": "2.1.0",
                                             "weird": "not a version"})
    split = ImageSplit(to_resolve=("typing-extensions>=4.10", "inflect==7.6.0"), pinned={"numpy": "2.1.0"})
    # local labels dropped (an index serves the public version), names canonical, a bad version skipped
    assert image_constraints(split, env) == {"numpy": "2.1.0", "torch": "2.8.0"}


@pytest.fixture
def resolve(tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the stand-in image's Python is 3.11: engine packages resolve with the image's Python")
    said: list[str] = []

    def run(installed: dict[str, str], *requirements: str, from_image: tuple[str, ...] = ()):
        env = ImageEnv("3.11", "x86_64", "2.36", {"xinference": "4.1.0", **installed})
        wheels = resolve_model(ModelPackages("m", None, requirements, from_image), env, tmp_path / "cache", said.append)
        return wheels, said

    return run


@pytest.mark.network  # resolves against PyPI
def test_a_dependency_the_image_has_is_taken_at_its_version_and_carried_as_a_stand_in(resolve):
    # typeguard 4.4.4 asks typing_extensions>=4.14.0: PyPI has newer ones, the image's 4.15.0 fits
    wheels, said = resolve({"typing_extensions": "4.15.0"}, "typeguard==4.4.4")
    assert wheels.stubs == ["typing_extensions-4.15.0-0image-py3-none-any.whl"]
    assert sorted(wheels.files) == ["typeguard-4.4.4-py3-none-any.whl", *wheels.stubs]
    assert not any("do not fit" in line for line in said), said


@pytest.mark.network  # resolves against PyPI
def test_an_image_version_that_does_not_fit_is_resolved_anew_and_said_the_others_stay(resolve):
    # the image's typing_extensions 4.0.0 is older than typeguard asks: resolved from the index instead;
    # its more-itertools fits what inflect asks, and stays the image's
    wheels, said = resolve({"typing_extensions": "4.0.0", "more-itertools": "10.8.0"}, "typeguard==4.4.4",
                           "inflect==7.6.0")
    assert wheels.stubs == ["more_itertools-10.8.0-0image-py3-none-any.whl"]
    assert any(f.startswith("typing_extensions-") and "0image" not in f for f in wheels.files), wheels.files
    assert any("m's engine packages need other versions than the image's of typing-extensions: resolved anew"
               in line for line in said), said


@pytest.mark.network  # resolves against PyPI
def test_a_model_pin_that_does_not_fit_fails_with_pip_s_reason(resolve):
    # #system_numpy# pins the image's numpy; the model also asks numpy>=2: the pin is never dropped
    with pytest.raises(FetchError) as failed:
        resolve({"numpy": "1.26.4"}, "numpy>=2", from_image=("numpy",))
    assert "resolving m's engine packages: `pip install --dry-run ...` failed" in str(failed.value)
    assert "The user requested (constraint) numpy==1.26.4" in str(failed.value), failed.value


@pytest.mark.network  # resolves against PyPI
def test_the_stand_ins_let_pip_install_offline_over_an_image_that_has_them(tmp_path, resolve):
    """pip in a virtualenv that sees the image's site-packages takes the image's copy, never the stand-in."""
    wheels, _ = resolve({"typing_extensions": "4.15.0"}, "typeguard==4.4.4")
    image = tmp_path / "image-python"
    subprocess.run([sys.executable, "-m", "venv", str(image)], check=True)
    subprocess.run([str(image / "bin" / "pip"), "install", "-q", "typing_extensions==4.15.0"], check=True)
    done = subprocess.run([str(image / "bin" / "pip"), "install", "--no-index", "-f", str(wheels.directory),
                           "typeguard==4.4.4"], capture_output=True, text=True, env=offline_pip_env())
    assert done.returncode == 0 and "Requirement already satisfied: typing_extensions>=4.14.0" in done.stdout, done
    probe = subprocess.run([str(image / "bin" / "python"), "-c", "import typeguard, typing_extensions as t; "
                            "print(t.__file__)"], capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.startswith(str(image)), probe


def test_a_stand_in_carries_the_image_s_local_label_so_xoscar_s_pin_resolves_with_uv(tmp_path, resolve, monkeypatch):
    """The official image's torch is 2.11.0+cu130 and xoscar pins that installed version: uv, given
    only the carried folder, must find a distribution of exactly that version. Here the image's
    typing_extensions plays torch (same steps, a few KB from PyPI)."""
    from xoscar.virtualenv.uv import UVVirtualEnvManager

    wheels, _ = resolve({"typing_extensions": "4.15.0+cu130"}, "typeguard==4.4.4", from_image=("typing_extensions",))
    assert wheels.split.pinned == {"typing_extensions": "4.15.0+cu130"}
    assert wheels.stubs == ["typing_extensions-4.15.0+cu130-0image-py3-none-any.whl"]
    with zipfile.ZipFile(wheels.directory / wheels.stubs[0]) as stub:
        assert "Version: 4.15.0+cu130\n" in stub.read("typing_extensions-4.15.0+cu130.dist-info/METADATA").decode()
    manager = UVVirtualEnvManager(tmp_path / "venv")
    manager.create_env(Path(sys.executable))
    monkeypatch.setenv("UV_OFFLINE", "1")
    folder = str(wheels.directory)
    # xoscar's own resolution step: its pins as constraints, the carried folder as the only index
    plan = manager._resolve_install_plan(["typeguard==4.4.4"], wheels.split.pinned, index_url=folder,
                                         find_links=[folder])
    assert sorted(plan) == ["typeguard==4.4.4", "typing-extensions==4.15.0+cu130"], plan
