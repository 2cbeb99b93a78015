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

from components.image import load_script, remote_load_script
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


def fake_ssh(bin_dir: Path, log: Path) -> None:
    """An `ssh` that records its argv and runs the remote command line with /bin/sh, as sshd runs it
    through the login shell (ssh joins its words with spaces: only the quoting makes them arrive whole)."""
    bin_dir.mkdir()
    script = bin_dir / "ssh"
    script.write_text("#!/bin/sh\n"
                      f"printf '%s\\n' \"$*\" >> {log}\n"
                      'while [ "$1" != "--" ]; do shift; done; shift; shift\n'  # options, --, host
                      'exec /bin/sh -c "$*"\n')
    script.chmod(0o755)
    (bin_dir / "docker").write_text(f"#!/bin/sh\nprintf 'docker %s\\n' \"$*\" >> {log}\ncat >/dev/null\n")
    (bin_dir / "docker").chmod(0o755)


def test_remote_load_quotes_every_value_for_both_shells(tmp_path, marker):
    """The ssh:// load runs `ssh ... host docker ...` here: each remote word is quoted for the remote
    shell, then the whole command for this one. A hostile image name, tar path, host option and user
    stay text on both sides (the remote `docker` sees the name as one argument)."""
    from stackspec.ssh import ssh_target

    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    fake_ssh(bin_dir, log)
    tar = tmp_path / (hostile(marker) + ".tar")
    tar.write_bytes(b"tar bytes")
    target = ssh_target("ssh://ops@gpu-node-2", ["-o", f"ConnectTimeout={hostile(marker)}"], None, None)
    image = hostile(marker)
    script = remote_load_script(image, str(tar), hashlib.sha256(b"tar bytes").hexdigest(), None, target)
    done = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert not marker.exists(), done.stderr
    assert log.exists(), done.stdout + done.stderr
    docker_calls = [line for line in log.read_text().splitlines() if line.startswith("docker ")]
    assert docker_calls[0] == "docker load" and docker_calls[1] == f"docker image inspect {image}".split("\n")[0]
    assert done.returncode == 0, done.stderr


def test_a_good_tar_with_a_newline_in_its_name_reaches_docker_load(tmp_path, marker):
    """sha256sum prefixes its line with `\\` for such a name; the check reads the tar from stdin instead."""
    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    fake_ssh(bin_dir, log)
    tar = tmp_path / (hostile(marker) + ".tar")
    tar.write_bytes(b"tar bytes")
    done = subprocess.run(["/bin/sh", "-c", load_script("x/y:1", str(tar), hashlib.sha256(b"tar bytes").hexdigest())],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 0 and not marker.exists(), done.stderr
    assert log.read_text().splitlines()[0].startswith("docker load -i ")


def test_a_remote_load_whose_engine_reports_another_id_fails_naming_both(tmp_path, marker):
    """With the manifest's image id the tar is streamed unhashed; what proves it is the id the engine
    reports after `docker load` (here the stand-in engine reports none)."""
    from stackspec.ssh import ssh_target

    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    fake_ssh(bin_dir, log)
    tar = tmp_path / "image.tar"
    tar.write_bytes(b"tar bytes")
    image_id = "sha256:" + "c" * 64
    script = remote_load_script("x/y:1", str(tar), "", image_id, ssh_target("ssh://ops@gpu-node-2", [], None, None))
    done = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 1 and "docker load" in log.read_text()
    assert done.stderr == (f"after loading {tar}, image x/y:1 on ssh://ops@gpu-node-2 is not {image_id}, the id the "
                           "manifest names: the tar is damaged or holds another image; unpack the bundle again and "
                           "run `python3 -m bundle verify`\n")


def test_a_local_load_of_an_id_the_engine_holds_loads_nothing_and_needs_no_tar(tmp_path, marker):
    """`docker load` unpacks the whole tar into the engine's temp dir before it sees the layers are
    there: when the engine reports the manifest's id for the (hostile, quoted) name, nothing runs
    but the inspect, and a tar already removed does not matter."""
    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    image_id = "sha256:" + "d" * 64
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"#!/bin/sh\nprintf 'docker %s\\n' \"$*\" >> {log}\necho {image_id}\n")
    (bin_dir / "docker").chmod(0o755)
    image, tar = hostile(marker), tmp_path / "gone.tar"
    done = subprocess.run(["/bin/sh", "-c", load_script(image, str(tar), "e" * 64, image_id, "unix:///x.sock")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 0 and not marker.exists(), done.stderr
    assert done.stdout == f"image {image} ({image_id}) is already on unix:///x.sock: nothing to load\n"
    assert log.read_text() == f"docker image inspect --format {{{{.Id}}}} {image}\n"


def test_a_local_load_that_leaves_another_id_fails_naming_both(tmp_path, marker):
    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    fake_ssh(bin_dir, log)  # its docker reports no id
    tar = tmp_path / "image.tar"
    tar.write_bytes(b"tar bytes")
    image_id = "sha256:" + "c" * 64
    script = load_script("x/y:1", str(tar), hashlib.sha256(b"tar bytes").hexdigest(), image_id, "unix:///x.sock")
    done = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 1 and f"docker load -i {tar}" in log.read_text()
    assert done.stderr == (f"after loading {tar}, image x/y:1 on unix:///x.sock is not {image_id}, the id the "
                           "manifest names: the tar is damaged or holds another image; unpack the bundle again and "
                           "run `python3 -m bundle verify`\n")
