"""Integrity of the bundle's wheels (issue 12, class 10): the project's requirements.lock pins
every package with hashes; `build` downloads with --require-hashes and carries a requirements
file that pins each carried wheel by its sha256; `install` runs pip with --require-hashes
--no-index, so a swapped wheel is refused by pip itself even under a re-signed manifest.

Real pip throughout, on real wheels made on disk; the lock's own resolution is checked
against the package index (this machine reaches package registries)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.format.manifest import MANIFEST_NAME, content_digest
from bundle.build.wheel_lock import LOCK_NAME, is_hashed, wheel_project_version
from tests.bundle_kit import WHEEL_NAME, WHEEL_VERSION, build_args, cli, make_site, make_wheel

ROOT = Path(__file__).resolve().parent.parent
PIN_RE = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", re.M)


def pins(text: str) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in PIN_RE.findall(text)}


def lock_entries(text: str) -> dict[str, list[str]]:
    """{package: [sha256, ...]} of a pip-compile lock (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    entries = {}
    for line in joined.splitlines():
        match = PIN_RE.match(line)
        if match:
            entries[match.group(1).lower()] = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
    return entries


def test_the_lock_pins_what_requirements_txt_pins_and_hashes_every_package():
    wanted = pins((ROOT / "requirements.txt").read_text())
    entries = lock_entries((ROOT / LOCK_NAME).read_text())
    locked = pins((ROOT / LOCK_NAME).read_text())
    for name, version in wanted.items():
        assert locked.get(name) == version, f"{LOCK_NAME} has {name}=={locked.get(name)}, requirements.txt " \
                                            f"{version}: run bash tools/lock-requirements.sh"
    assert len(entries) > len(wanted)  # the indirect dependencies are locked too
    assert all(hashes for hashes in entries.values()), [name for name, h in entries.items() if not h]
    # build-time tools stay off the site: tqdm is for the online commands only
    assert "tqdm" not in entries
    assert "--find-links" not in (ROOT / LOCK_NAME).read_text()  # no machine-local source leaked in


@pytest.mark.network  # resolves against PyPI
def test_the_lock_resolves_against_the_index_with_require_hashes(tmp_path):
    """What `bundle build` runs on the online machine, against the real index (PIP_FIND_LINKS off,
    so only the index's files, whose hashes the lock holds, can satisfy it)."""
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                           "--only-binary=:all:", "--require-hashes", "-r", str(ROOT / LOCK_NAME),
                           "-d", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 and ("NewConnectionError" in proc.stderr or "No matching distribution" in proc.stderr
                                 and "Could not fetch URL" in proc.stderr):
        pytest.skip(f"the package index is not reachable from here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    got = {wheel_project_version(name)[0].lower().replace("_", "-") for name in os.listdir(tmp_path)}
    assert got == set(lock_entries((ROOT / LOCK_NAME).read_text()))


def carried(site) -> str:
    return (site.out / "wheels" / "requirements.txt").read_text()


def test_the_bundle_pins_each_carried_wheel_by_its_sha256(tmp_path):
    site = make_site(tmp_path)
    assert not is_hashed((site.root / "requirements.txt").read_text())  # an unhashed input ...
    assert cli(*build_args(site))[0] == 0
    text = carried(site)
    wheel = f"{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
    digest = hashlib.sha256((site.out / "wheels" / wheel).read_bytes()).hexdigest()
    # ... still gives a carried file that pins the file carried, and nothing else
    assert f"{WHEEL_NAME}=={WHEEL_VERSION} --hash=sha256:{digest}" in text.splitlines()
    assert sorted(os.listdir(site.out / "wheels")) == sorted(["requirements.txt", wheel])


def test_wheels_from_carries_only_what_the_requirements_resolve_to(tmp_path):
    site = make_site(tmp_path)
    make_wheel(site.root / "wheels", name="xoffline_unrelated", version="9.9")
    assert cli(*build_args(site))[0] == 0
    assert not any("unrelated" in name for name in os.listdir(site.out / "wheels"))
    assert "unrelated" not in carried(site)


def test_a_wheel_that_does_not_match_the_locked_hash_is_refused_at_build(tmp_path):
    site = make_site(tmp_path)
    (site.root / "requirements.txt").write_text(f"{WHEEL_NAME}=={WHEEL_VERSION} --hash=sha256:{'0' * 64}\n")
    code, _, err = cli(*build_args(site))
    assert code == 2, err
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in err and WHEEL_NAME in err
    assert not (site.out / MANIFEST_NAME).exists()  # no bundle is ever mistaken for a finished one


def resign_replacing(bundle: Path, path: str, content: bytes) -> None:
    """Replace a file and re-sign the manifest (what anyone who can edit the bundle can do)."""
    (bundle / path).write_bytes(content)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del data["digest"]
    for entry in data["files"]:
        if entry["path"] == path:
            entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    data["digest"] = content_digest(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def install(site, tmp_path) -> tuple[int, str, str]:
    return cli("install", str(site.out), "--venv", str(tmp_path / "venv"), "--pulumi-home", str(tmp_path / "home"),
               "--project", str(site.project), "--models-dir", str(tmp_path / "models"), "--quiet")


def test_a_swapped_wheel_under_a_resigned_manifest_is_refused_by_pip(tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    wheel = f"wheels/{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
    other = make_wheel(tmp_path / "evil", version=WHEEL_VERSION)  # same name, other bytes
    with open(other, "ab") as handle:
        handle.write(b"\0")  # a zip still, but not the file the lock pinned
    resign_replacing(site.out, wheel, other.read_bytes())
    code, _, err = install(site, tmp_path)
    assert code == 1, err
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in err
    assert not (tmp_path / "venv" / ".xinference-offline-wheels").exists()


def test_a_bundle_whose_requirements_carry_no_hashes_is_refused_with_the_fix(tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    resign_replacing(site.out, "wheels/requirements.txt", f"{WHEEL_NAME}=={WHEEL_VERSION}\n".encode())
    code, _, err = install(site, tmp_path)
    assert code == 1, err
    assert "Hashes are required in --require-hashes mode" in err
    assert "rebuild it with this version's `bundle build`" in err
