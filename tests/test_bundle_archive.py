"""`pack` / `unpack` / `verify FILE` on real archives, including damaged and hostile ones.

Every hostile archive is refused with its own message, and nothing is written: not the
target, not a temp directory, not a file outside (the escapes aim at real paths in tmp).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional

import pytest

from bundle.format.manifest import MANIFEST_NAME, load_manifest
from tests.bundle_kit import build_args, cli, make_site, run_cli, tree

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    site = make_site(tmp_path_factory.mktemp("archive-site"))
    code, _ = run_cli(*build_args(site))
    assert code == 0
    return site.out


def member(name: str, data: Optional[bytes] = None, **fields) -> tuple[tarfile.TarInfo, Optional[bytes]]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def craft(path: Path, bundle: Path, *, extra=(), extra_first=False, skip=(), manifest: Optional[bytes] = None,
          manifest_first=True, duplicate: Optional[str] = None) -> Path:
    """An archive of ``bundle`` as pack would write it, altered as asked."""
    manifest_bytes = manifest if manifest is not None else (bundle / MANIFEST_NAME).read_bytes()
    members = []
    for entry in sorted(load_manifest(bundle).files, key=lambda e: e.path):
        if entry.path not in skip:
            members.append(member(entry.path, (bundle / entry.path).read_bytes(), mode=0o644))
    if duplicate:
        members.append(member(duplicate, (bundle / duplicate).read_bytes(), mode=0o644))
    members = list(extra) + members if extra_first else members + list(extra)
    head = [member(MANIFEST_NAME, manifest_bytes, mode=0o644)]
    ordered = head + members if manifest_first else members + head
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in ordered:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def assert_refused_cleanly(tmp_path: Path, target: Path, before: dict[str, bytes]) -> None:
    assert not target.exists(), "the target must not be created"
    assert not list(target.parent.glob(f".{target.name}.*")), "no temp directory may be left"
    assert tree(tmp_path) == before, "nothing may be written anywhere"


@pytest.fixture
def site(tmp_path, built):
    """tmp_path holding a copy of the bundle, an `offline/` parent for the target and a bait file."""
    bundle = tmp_path / "bundle"
    shutil.copytree(built, bundle)
    (tmp_path / "offline").mkdir()
    (tmp_path / "bait.txt").write_text("must stay as it is")
    return tmp_path


def unpack_refused(site: Path, archive: Path, *messages: str) -> str:
    target = site / "offline" / "bundle"
    before = tree(site)
    code, out, err = cli("unpack", str(archive), "--into", str(target), "--quiet")
    assert code == 1, (out, err)
    for message in messages:
        assert message in err, err
    assert_refused_cleanly(site, target, before)
    code, _, err2 = cli("verify", str(archive), "--quiet")
    assert code == 1 and messages[0] in err2, err2
    return err


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bundle.tar.gz", "bundle.tar", "bundle.tgz"])
def test_pack_then_unpack_gives_back_the_same_tree(site, name):
    archive = site / name
    code, out, err = cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")
    assert code == 0, err
    assert (site / f"{name}.sha256").read_text().split()[1] == name
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == MANIFEST_NAME and len(names) == 21  # the manifest, 19 files (the image is 3) and the SBOM
        assert all(m.uid == 0 and m.uname == "" and m.isreg() for m in tar.getmembers())
        assert tar.getmember("pulumi/bin/pulumi").mode == 0o755
    target = site / "offline" / "bundle"
    code, out, err = cli("unpack", str(archive), "--into", str(target), "--quiet")
    assert code == 0, err
    assert "every member checked and every sha256 matched" in out
    assert tree(target) == tree(site / "bundle")
    assert os.access(target / "pulumi/bin/pulumi", os.X_OK)
    assert cli("verify", str(target), "--quiet")[0] == 0
    assert cli("verify", str(archive), "--quiet")[0] == 0


def test_the_archive_sha256_file_checks_with_coreutils(site):
    archive = site / "b.tar.gz"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    proc = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=site, capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout


def test_pack_refuses_a_damaged_bundle_and_writes_nothing(site):
    bundle = site / "bundle"
    (bundle / "models/rr/weights.bin").write_bytes(b"changed")
    (bundle / "models/emb/config.json").unlink()
    code, _, err = cli("pack", str(bundle), "-o", str(site / "b.tar.gz"), "--quiet")
    assert code == 1
    assert "models/rr/weights.bin: size mismatch" in err and "models/emb/config.json: missing" in err
    assert not (site / "b.tar.gz").exists() and not list(site.glob(".b.tar.gz*"))


def test_pack_needs_a_known_archive_suffix(site):
    code, _, err = cli("pack", str(site / "bundle"), "-o", str(site / "b.zip"))
    assert code == 2 and "must end in .tar.gz, .tgz or .tar" in err


def test_unpack_replaces_an_earlier_bundle(site):
    archive = site / "b.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    target = site / "offline" / "bundle"
    target.mkdir()
    (target / MANIFEST_NAME).write_text("{}")  # an earlier bundle (even a broken one)
    (target / "old-only.bin").write_text("gone after the swap")
    assert cli("unpack", str(archive), "--into", str(target), "--quiet")[0] == 0
    assert tree(target) == tree(site / "bundle")
    assert not list(target.parent.glob(".bundle.*"))


def test_unpack_never_replaces_a_directory_that_is_not_a_bundle(site):
    archive = site / "b.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    target = site / "offline" / "data"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    code, _, err = cli("unpack", str(archive), "--into", str(target))
    assert code == 2 and "is not empty and holds no bundle; refusing to replace it" in err
    assert tree(target) == {"precious.txt": b"keep me"}


# -- hostile archives -------------------------------------------------------------------------


def test_a_dotdot_member_is_refused(site):
    archive = craft(site / "evil.tar", site / "bundle", extra=[member("../escape.txt", b"owned"),
                                                                member("models/../../escape2.txt", b"owned")])
    unpack_refused(site, archive, "../escape.txt: `..` in the path would write outside the target: refused",
                   "models/../../escape2.txt: `..` in the path")
    assert not (site / "offline" / "escape.txt").exists() and not (site / "escape2.txt").exists()


def test_an_absolute_member_is_refused(site):
    target_outside = site / "abs-escape.txt"
    archive = craft(site / "evil.tar.gz", site / "bundle", extra=[member(str(target_outside), b"owned")])
    unpack_refused(site, archive, f"{target_outside}: absolute path in the archive: refused")
    assert not target_outside.exists()


def test_a_symlink_escape_is_refused(site):
    archive = craft(site / "evil.tar", site / "bundle", extra_first=True, extra=[
        member("models/emb/evil", linkname="../../../../bait.txt", type=tarfile.SYMTYPE),
        member("models/emb/abs", linkname="/etc/passwd", type=tarfile.SYMTYPE),
        member("models/emb/evil/through", b"written through the link"),
    ])
    unpack_refused(site, archive, "models/emb/evil: symlink to '../../../../bait.txt' points outside the target",
                   "models/emb/abs: symlink to '/etc/passwd' points outside the target",
                   "models/emb/evil/through: not in the manifest: refused")
    assert (site / "bait.txt").read_text() == "must stay as it is"


def test_an_inside_symlink_is_refused_too(site):
    archive = craft(site / "evil.tar", site / "bundle", extra=[
        member("models/emb/alias", linkname="config.json", type=tarfile.SYMTYPE)])
    unpack_refused(site, archive, "models/emb/alias: symlink to 'config.json': a bundle holds regular files only")


def test_a_hard_link_escape_is_refused(site):
    archive = craft(site / "evil.tar", site / "bundle", extra=[
        member("models/emb/hl", linkname="../bait.txt", type=tarfile.LNKTYPE),
        member("models/emb/hl2", linkname=str(site / "bait.txt"), type=tarfile.LNKTYPE),
    ])
    unpack_refused(site, archive, "models/emb/hl: hard link to '../bait.txt' points outside the target",
                   f"models/emb/hl2: hard link to '{site / 'bait.txt'}' points outside the target")


def test_device_files_and_fifos_are_refused(site):
    archive = craft(site / "evil.tar", site / "bundle", extra=[
        member("models/emb/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        member("models/emb/disk", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
        member("models/emb/pipe", type=tarfile.FIFOTYPE),
    ])
    unpack_refused(site, archive, "models/emb/null: device file in the archive: refused",
                   "models/emb/disk: device file in the archive: refused",
                   "models/emb/pipe: fifo in the archive: refused")


def test_a_member_missing_from_the_manifest_is_refused(site):
    archive = craft(site / "evil.tar", site / "bundle", extra=[member("models/emb/backdoor.py", b"import os")])
    unpack_refused(site, archive, "models/emb/backdoor.py: not in the manifest: refused")


def test_a_member_listed_twice_is_refused(site):
    archive = craft(site / "evil.tar", site / "bundle", duplicate="models/emb/config.json")
    unpack_refused(site, archive, "models/emb/config.json: appears twice in the archive: refused")


def test_a_manifest_file_absent_from_the_archive_is_refused(site):
    archive = craft(site / "short.tar", site / "bundle", skip={"models/rr/weights.bin"})
    unpack_refused(site, archive, "models/rr/weights.bin: missing from the archive")


def test_the_manifest_must_come_first(site):
    archive = craft(site / "late.tar", site / "bundle", manifest_first=False)
    target = site / "offline" / "bundle"
    before = tree(site)
    code, _, err = cli("unpack", str(archive), "--into", str(target))
    assert code == 1 and "the first member must be MANIFEST.json" in err
    assert_refused_cleanly(site, target, before)


def test_a_tampered_manifest_in_the_archive_is_refused(site):
    data = json.loads((site / "bundle" / MANIFEST_NAME).read_text())
    data["files"][0]["size"] += 1
    archive = craft(site / "tampered.tar", site / "bundle", manifest=json.dumps(data).encode())
    target = site / "offline" / "bundle"
    before = tree(site)
    code, _, err = cli("unpack", str(archive), "--into", str(target))
    assert code == 1 and "content does not match its digest" in err
    assert_refused_cleanly(site, target, before)


def test_a_wrong_bundle_id_is_refused(site):
    archive = site / "b.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    target = site / "offline" / "bundle"
    before = tree(site)
    code, _, err = cli("unpack", str(archive), "--into", str(target), "--bundle-id", "f" * 64)
    assert code == 1 and "this is not the bundle that was built" in err
    assert_refused_cleanly(site, target, before)


# -- damaged archives -------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.97])
def test_a_gzip_archive_cut_short_is_refused(site, fraction):
    archive = site / "cut.tar.gz"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * fraction)])
    unpack_refused(site, archive, "cut short")


@pytest.mark.parametrize("where", ["in a header", "in the data of a file", "in the last file", "before the end marker"])
def test_a_plain_archive_cut_short_is_refused(site, where):
    archive = site / "cut.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        end = tar.offset
    big = max(members, key=lambda m: m.size)
    cut = {"in a header": members[3].offset + 100,
           "in the data of a file": big.offset_data + big.size // 2,
           "in the last file": members[-1].offset_data + members[-1].size - 1,
           "before the end marker": end + 100}[where]
    archive.write_bytes(archive.read_bytes()[:cut])
    unpack_refused(site, archive, "cut short")


def test_a_flipped_byte_inside_a_member_is_found_during_extraction_and_nothing_is_kept(site):
    archive = site / "flip.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    with tarfile.open(archive) as tar:
        victim = tar.getmember("models/emb/model.safetensors")
    data = bytearray(archive.read_bytes())
    data[victim.offset_data + 100] ^= 0x80
    archive.write_bytes(bytes(data))
    (site / "flip.tar.sha256").unlink()
    unpack_refused(site, archive, "models/emb/model.safetensors: sha256 mismatch: expected")


def test_garbage_is_not_an_archive(site):
    archive = site / "junk.tar.gz"
    archive.write_bytes(gzip.compress(b"not a tar at all" * 100))
    target = site / "offline" / "bundle"
    before = tree(site)
    code, _, err = cli("unpack", str(archive), "--into", str(target))
    assert code == 1 and ("not a readable archive" in err or "first member must be" in err)
    assert_refused_cleanly(site, target, before)


CRASH_AFTER_TWO_FILES = """
import os, sys
sys.path.insert(0, {root!r})
import bundle.format.tarscan as tarscan
real, calls = tarscan.copy_member, []
def crash(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os._exit(9)  # as abrupt as a power cut or kill -9: no cleanup runs
    return real(*args, **kwargs)
tarscan.copy_member = crash
from bundle.cli import main
sys.exit(main(["unpack", {archive!r}, "--into", {target!r}, "--quiet"]))
"""


def test_an_interrupted_unpack_leaves_nothing_that_looks_like_a_bundle(site):
    archive = site / "b.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    target = site / "offline" / "bundle"
    script = CRASH_AFTER_TWO_FILES.format(root=str(ROOT), archive=str(archive), target=str(target))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert not target.exists()
    leftovers = list(target.parent.glob(".bundle.unpack-*"))
    assert len(leftovers) == 1 and not (leftovers[0] / MANIFEST_NAME).exists()
    assert cli("verify", str(leftovers[0]), "--quiet")[0] == 1
    # the next unpack cleans up and succeeds
    assert cli("unpack", str(archive), "--into", str(target), "--quiet")[0] == 0
    assert not list(target.parent.glob(".bundle.*"))
    assert tree(target) == tree(site / "bundle")


def test_the_bare_offline_python_can_unpack_and_verify(site):
    """python -S: no site-packages (no tqdm, pydantic, PyYAML), as on a fresh offline server."""
    archive = site / "b.tar.gz"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    target = site / "offline" / "bundle"
    for argv in (["unpack", str(archive), "--into", str(target)], ["verify", str(target)]):
        proc = subprocess.run([sys.executable, "-S", "-m", "bundle", *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert "verify: OK" in proc.stdout


@pytest.mark.parametrize("command", ["pack", "unpack"])
def test_help_exits_0(command, capsys):
    code, _ = run_cli(command, "--help")
    assert code == 0 and "MANIFEST.json" in capsys.readouterr().out
