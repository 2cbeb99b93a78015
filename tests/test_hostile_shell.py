"""No value from a config or a manifest reaches a shell unquoted.

The program builds three shell scripts (they run through pulumi-command on the docker host):
the image load (components/image.py), the model-directory presence check
(components/volume.py) and the remote `sha256sum -c` (components/remote_sync.py). Each test
puts `$(...)`, backticks, `;`, a newline and both quotes into every value, runs the real
generated script with /bin/sh, and shows the marker file absent and the value handled as text.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from components.image import load_script
from components.remote_sync import DirectoryCopy, checksum_line, verify_script
from components.volume import presence_script


def hostile(marker: "Marker") -> str:
    """One value with every way into a shell; no slash, so it is also a valid file name."""
    name = marker.name
    return f"x$(touch {name})`touch {name}`;touch {name}\ntouch {name}'\"y"


class Marker:
    """A file the hostile values would create (relative: wherever the script runs)."""

    name = "MARKER"

    def __init__(self, root: Path):
        self.root = root

    def exists(self) -> bool:
        return any(self.root.rglob(self.name))


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def marker(tmp_path) -> Marker:
    return Marker(tmp_path)


def test_image_load_names_a_missing_hostile_tar_literally(tmp_path, marker):
    tar = str(tmp_path / hostile(marker)) + ".tar"
    done = sh(load_script(hostile(marker), tar, "a" * 64), tmp_path)
    assert done.returncode == 1 and not marker.exists()
    assert done.stderr == f"image tar {tar} not found; unpack and verify the bundle first\n"


def test_image_load_refuses_a_damaged_hostile_tar_before_docker_load(tmp_path, marker):
    tar = tmp_path / (hostile(marker) + ".tar")
    tar.write_bytes(b"not the manifest's image")
    done = sh(load_script("xprobe/xinference:v4.1.0", str(tar), "b" * 64), tmp_path)
    assert done.returncode == 1 and not marker.exists()
    assert done.stderr.startswith(f"image tar {tar} is damaged: its sha256 is not the manifest's {'b' * 64}")


def test_image_load_quotes_a_hostile_image_name(tmp_path, marker):
    tar = tmp_path / "image.tar"
    tar.write_bytes(b"x")
    sha = hashlib.sha256(b"x").hexdigest()
    # PATH without docker: the script reaches `docker load` with the name as one quoted word
    done = subprocess.run(["/bin/sh", "-c", load_script(hostile(marker), str(tar), sha)], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": str(tmp_path / "no-bin")})
    assert done.returncode != 0 and not marker.exists()


def test_presence_check_names_missing_hostile_directories_literally(tmp_path, marker):
    path = str(tmp_path / hostile(marker))
    done = sh(presence_script({"emb;rm -rf /": path}), tmp_path)
    assert done.returncode == 1 and not marker.exists()
    assert f"model emb;rm -rf /: directory {path} is missing\n" in done.stderr


def test_presence_check_passes_an_existing_hostile_directory(tmp_path, marker):
    path = tmp_path / hostile(marker)
    path.mkdir()
    done = sh(presence_script({"emb": str(path)}), tmp_path)
    assert done.returncode == 0 and not marker.exists(), done.stderr


def copy_of(directory: Path, files: dict[str, bytes]) -> DirectoryCopy:
    for rel, data in files.items():
        (directory / rel).write_bytes(data)
    listed = tuple(sorted((rel, hashlib.sha256(data).hexdigest()) for rel, data in files.items()))
    return DirectoryCopy("models/x", str(directory), listed, "d")


def test_remote_verify_checks_hostile_file_names_and_directory_as_text(tmp_path, marker):
    directory = tmp_path / hostile(marker)
    directory.mkdir()
    # a name that would end the here-document early if written raw, then run a command
    names = {hostile(marker): b"one", f"a\nXINFERENCE_OFFLINE_SHA256\ntouch {marker.name}\nb": b"two",
             "back\\slash": b"3"}
    copy = copy_of(directory, names)
    done = sh(verify_script(copy), tmp_path)
    assert done.returncode == 0 and not marker.exists(), done.stderr


def test_remote_verify_still_fails_a_damaged_hostile_file(tmp_path, marker):
    directory = tmp_path / "models"
    directory.mkdir()
    copy = copy_of(directory, {hostile(marker): b"one"})
    (directory / hostile(marker)).write_bytes(b"damaged")
    done = sh(verify_script(copy), tmp_path)
    assert done.returncode != 0 and not marker.exists()
    assert "FAILED" in done.stdout + done.stderr


def test_checksum_lines_never_carry_a_raw_newline():
    line = checksum_line("a\nb\\c", "0" * 64)
    assert "\n" not in line and line == "\\" + "0" * 64 + "  a\\nb\\\\c"
