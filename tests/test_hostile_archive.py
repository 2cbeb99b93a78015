"""Hostile archives, overlapping paths and --bundle-id for pack/unpack/verify (issue 12, classes 3, 5, 7, 10).

- class 7: a listed member's pax mtime of 1e30, -1e30, NaN or inf never crashes unpack: it is
  clamped into what a file system stores, or ignored;
- class 3: `unpack site/update.tar --into site` (in any spelling: `..`, symlinks, a parent) and
  `pack DIR -o DIR/x.tar` are refused before anything is touched, naming both paths;
- class 5: `--bundle-id ""` (an unset $BUNDLE_ID) or a malformed id is exit 2 naming the flag, for
  verify, unpack and install, never "no id";
- class 10: what pack, unpack and build write gets mode 0644 (not mkstemp's 0600), atomically,
  with the directory fsynced after the rename.
Plus our own hostile members: a symlink or hard link in place of a listed file, a backslash or
newline in a name, a size the archive does not hold.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Optional

import pytest

from bundle.format.manifest import MANIFEST_NAME, Manifest, ManifestError, UsageError, check_bundle_id, parse_manifest
from bundle.format.tarscan import MAX_MTIME, safe_mtime
from tests.bundle_kit import cli, tree
from tests.test_hostile_manifest import LAYOUT, at, make_bundle, signed, valid_doc

VICTIM = "models/emb/config.json"


@pytest.fixture
def site(tmp_path):
    """tmp_path with a bundle directory, its packed archive b.tar, and an empty offline/ parent."""
    make_bundle(tmp_path / "bundle")
    assert cli("pack", str(tmp_path / "bundle"), "-o", str(tmp_path / "b.tar"), "--quiet")[0] == 0
    (tmp_path / "offline").mkdir()
    return tmp_path


def members_of(archive: Path) -> list[tuple[tarfile.TarInfo, Optional[bytes]]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, Optional[bytes]]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def altered(site: Path, name: str, **pax: str) -> Path:
    """b.tar with the listed member ``name`` carrying these pax header fields."""
    members = members_of(site / "b.tar")
    for info, _data in members:
        if info.name == name:
            info.pax_headers = dict(pax)
    return write_archive(site / "evil.tar", members)


def refused(site: Path, archive: Path, code: int, *messages: str) -> str:
    """unpack (and, for a hostile archive, verify FILE) refuse with these messages; nothing is written."""
    target = site / "offline" / "bundle"
    before = tree(site)
    got, out, err = cli("unpack", str(archive), "--into", str(target), "--quiet")
    assert got == code, (out, err)
    for message in messages:
        assert message in err, err
    assert not target.exists() and not list(target.parent.glob(".bundle.*"))
    assert tree(site) == before, "nothing may be written anywhere"
    if code == 1:
        assert cli("verify", str(archive), "--quiet")[0] == 1
    return err


# -- class 7: archive metadata unpack does not need -------------------------------------------


@pytest.mark.parametrize("mtime, expect", [("1e30", MAX_MTIME), ("-1e30", 0), ("1e400", None), ("nan", None),
                                           ("NaN", None), ("inf", None), ("-inf", None), ("-1", 0),
                                           ("99999999999", MAX_MTIME), ("1700000000.5", 1700000000.5)])
def test_a_listed_member_with_an_out_of_range_pax_mtime_unpacks(site, mtime, expect):
    archive = altered(site, VICTIM, mtime=mtime)
    target = site / "offline" / "bundle"
    started = time.time()
    code, out, err = cli("unpack", str(archive), "--into", str(target), "--quiet")
    assert code == 0 and "every member checked and every sha256 matched" in out, err
    assert tree(target) == tree(site / "bundle")
    got = (target / VICTIM).stat().st_mtime
    if expect is None:  # no time at all: the file keeps the time it was written
        assert started - 1 <= got <= time.time() + 1
    else:
        assert got == pytest.approx(expect, abs=1e-3)
    assert cli("verify", str(archive), "--quiet")[0] == 0


def test_safe_mtime_clamps_or_ignores():
    assert [safe_mtime(v) for v in (1e30, -1e30, float("nan"), float("inf"), 5, "12", None, True)] == \
        [float(MAX_MTIME), 0.0, None, None, 5.0, None, None, None]


def test_a_pax_size_beyond_the_archive_is_refused_as_cut_short(site):
    archive = altered(site, VICTIM, size=str(10 ** 12))
    refused(site, archive, 1, "evil.tar: archive is damaged or cut short after 2 files",
            f"{VICTIM}: size mismatch: manifest says 22 bytes, the archive holds 1000000000000 bytes")


def test_a_manifest_size_larger_than_the_member_is_refused(site):
    doc = valid_doc()
    doc["files"][at(doc, VICTIM)]["size"] += 10  # re-signed: only the member sizes can tell
    members = members_of(site / "b.tar")
    data = signed(doc)
    members[0][0].size = len(data)
    members[0] = (members[0][0], data)
    archive = write_archive(site / "evil.tar", members)
    size = len(VICTIM.encode())
    refused(site, archive, 1, f"{VICTIM}: size mismatch: manifest says {size + 10} bytes, the archive holds "
                              f"{size} bytes")


# -- our own hostile members ------------------------------------------------------------------


def _replace_member(site: Path, name: str, info: tarfile.TarInfo, data: Optional[bytes] = None) -> Path:
    members = [(info, data) if m.name == name else (m, d) for m, d in members_of(site / "b.tar")]
    return write_archive(site / "evil.tar", members)


def test_a_symlink_in_place_of_a_listed_file_is_refused(site):
    link = tarfile.TarInfo(VICTIM)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    refused(site, _replace_member(site, VICTIM, link), 1,
            f"{VICTIM}: symlink to '/etc/passwd' points outside the target: refused",
            f"{VICTIM}: missing from the archive")


def test_a_hard_link_in_place_of_a_listed_file_is_refused(site):
    link = tarfile.TarInfo(VICTIM)
    link.type, link.linkname = tarfile.LNKTYPE, "models/vad/vad.onnx"
    refused(site, _replace_member(site, VICTIM, link), 1,
            f"{VICTIM}: hard link to 'models/vad/vad.onnx': a bundle holds regular files only: refused")


def test_a_member_name_with_a_backslash_is_refused(site):
    members = members_of(site / "b.tar")
    extra = tarfile.TarInfo("models\\..\\..\\evil.txt")
    extra.size = 5
    archive = write_archive(site / "evil.tar", members + [(extra, b"owned")])
    refused(site, archive, 1, "models\\..\\..\\evil.txt: backslash in the member name (a Windows path?)")


def test_a_member_name_with_a_newline_cannot_forge_a_report_line(site):
    members = members_of(site / "b.tar")
    extra = tarfile.TarInfo("models/emb/x\nmodels/emb/config.json: OK")
    extra.size = 1
    archive = write_archive(site / "evil.tar", members + [(extra, b"x")])
    err = refused(site, archive, 1, '"models/emb/x\\nmodels/emb/config.json: OK": not in the manifest: refused')
    assert not any(line.startswith("models/emb/config.json: OK") for line in err.splitlines())


# -- class 3: overlapping paths ---------------------------------------------------------------


def test_unpack_into_the_directory_holding_the_archive_is_refused_and_keeps_the_archive(tmp_path):
    site = tmp_path / "site"
    make_bundle(site)  # an earlier bundle, which unpack would replace
    archive = site / "update.tar"
    assert cli("pack", str(site), "-o", str(tmp_path / "update.tar"), "--quiet")[0] == 0
    os.replace(tmp_path / "update.tar", archive)
    (tmp_path / "alias").symlink_to(site)
    before = tree(tmp_path)
    spellings = [site, tmp_path / "site" / ".." / "site", tmp_path / "site" / "program" / "..",
                 tmp_path / "alias", tmp_path]  # the last one contains it
    for into in spellings:
        code, out, err = cli("unpack", str(archive), "--into", str(into), "--quiet")
        assert code == 2, (into, out, err)
        assert f"--into {into.absolute()}: holds the archive {archive} being unpacked" in err, err
        assert "move the archive out of it first, or unpack into another directory" in err
        assert tree(tmp_path) == before and archive.is_file()
    # the archive named through a symlink to its directory: still the same file
    code, _, err = cli("unpack", str(tmp_path / "alias" / "update.tar"), "--into", str(site), "--quiet")
    assert code == 2 and f"holds the archive {archive}" in err
    assert tree(tmp_path) == before


def test_unpack_refuses_an_archive_inside_an_unpack_leftover_it_would_remove(site):
    leftover = site / "offline" / ".bundle.unpack-0000"
    leftover.mkdir()
    archive = leftover / "b.tar"
    os.replace(site / "b.tar", archive)
    before = tree(site)
    code, _, err = cli("unpack", str(archive), "--into", str(site / "offline" / "bundle"), "--quiet")
    assert code == 2 and f"{archive}: lies in {leftover}, a leftover of an interrupted unpack" in err, err
    assert tree(site) == before


@pytest.mark.parametrize("spelling", ["inside", "dotdot", "symlink", "new subdirectory"])
def test_pack_into_the_directory_it_packs_is_refused(site, spelling):
    bundle = site / "bundle"
    (site / "link").symlink_to(bundle)
    output = {"inside": bundle / "x.tar", "dotdot": bundle / "program" / ".." / "x.tar",
              "symlink": site / "link" / "x.tar", "new subdirectory": bundle / "out" / "x.tar"}[spelling]
    before = tree(site)
    code, _, err = cli("pack", str(bundle), "-o", str(output), "--quiet")
    assert code == 2
    assert f"-o {output}: lies inside the bundle directory {bundle} being packed" in err, err
    assert f"write the archive outside it, e.g. -o {site / 'x.tar'}" in err
    assert tree(site) == before and not (bundle / "out").exists()


def test_pack_to_an_existing_directory_is_refused(site):
    (site / "out.tar").mkdir()
    code, _, err = cli("pack", str(site / "bundle"), "-o", str(site / "out.tar"), "--quiet")
    assert code == 2 and f"-o {site / 'out.tar'}: is a directory; name the archive file to write" in err


# -- class 5: an empty or malformed --bundle-id is an error, not "no id" -------------------------


@pytest.fixture
def packed(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    archive = tmp_path / "b.tar"
    assert cli("pack", str(bundle), "-o", str(archive), "--quiet")[0] == 0
    return bundle, archive


BAD_IDS = {"": "empty (what an unset $BUNDLE_ID gives)", "   ": "empty (what an unset $BUNDLE_ID gives)",
           "a" * 63: "not a bundle id (63 hex digits, not 64)", "a" * 65: "not a bundle id (65 hex digits, not 64)",
           "g" * 64: 'not a bundle id ("g" is not a hex digit)', "sha256:" + "a" * 57: '("s" is not a hex digit)'}


@pytest.mark.parametrize("bad", BAD_IDS, ids=["empty", "blank", "63 hex", "65 hex", "not hex", "prefixed"])
def test_an_empty_or_malformed_bundle_id_is_a_usage_error_naming_the_flag(packed, tmp_path, bad):
    bundle, archive = packed
    target = tmp_path / "offline"
    runs = {"verify DIR": ["verify", str(bundle)], "verify FILE": ["verify", str(archive)],
            "unpack": ["unpack", str(archive), "--into", str(target)],
            "install": ["install", str(bundle), "--project", str(tmp_path / "p"), "--skip", "venv"]}
    for name, argv in runs.items():
        code, out, err = cli(*argv, "--bundle-id", bad, "--quiet")
        assert code == 2, (name, out, err)
        assert "--bundle-id" in err and BAD_IDS[bad] in err, (name, err)
        assert "OK" not in out
    assert not target.exists() and not (tmp_path / "p").exists()


def test_the_real_id_in_capitals_or_with_a_newline_is_accepted_and_leaving_it_out_still_works(packed, tmp_path):
    bundle, archive = packed
    real = parse_manifest((bundle / MANIFEST_NAME).read_bytes()).bundle_id
    for given_id in (real.upper(), real + "\n"):
        code, out, err = cli("verify", str(archive), "--bundle-id", given_id, "--quiet")
        assert code == 0 and f"bundle id {real}" in out, err
    code, out, err = cli("unpack", str(archive), "--into", str(tmp_path / "offline"), "--quiet")
    assert code == 0 and "every member checked" in out, err


def test_check_bundle_id_refuses_an_empty_id_itself(packed):
    """install calls check_bundle_id with its own argparse value: "" must not pass there either."""
    manifest = parse_manifest((packed[0] / MANIFEST_NAME).read_bytes())
    with pytest.raises(UsageError, match=r'--bundle-id "": empty') as caught:
        check_bundle_id(manifest, "", "here")
    assert caught.value.exit_code == 2
    check_bundle_id(manifest, None, "here")  # no id given: nothing to check
    with pytest.raises(ManifestError, match="this is not the bundle that was built"):
        check_bundle_id(manifest, "0" * 64, "here")


# -- class 10: modes, atomic writes, fsynced directories -------------------------------------


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_what_pack_unpack_and_build_write_is_0644_under_a_strict_umask(site, umask_077):
    manifest = parse_manifest((site / "bundle" / MANIFEST_NAME).read_bytes())
    manifest.save(site / "saved")  # what build does last
    assert _mode(site / "saved" / MANIFEST_NAME) == 0o644
    archive = site / "strict.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    assert _mode(archive) == 0o644 and _mode(site / "strict.tar.sha256") == 0o644
    target = site / "offline" / "bundle"
    assert cli("unpack", str(archive), "--into", str(target), "--quiet")[0] == 0
    assert _mode(target / MANIFEST_NAME) == 0o644 and _mode(target) == 0o755
    assert all(_mode(p) in (0o644, 0o755) for p in target.rglob("*"))
    assert not list(site.glob(".strict.tar*")) and not list((site / "saved").glob(".*"))


def test_renames_are_atomic_and_their_directory_is_fsynced(site, monkeypatch):
    events: list[tuple[str, str]] = []
    real_replace, real_rename, real_fsync = os.replace, os.rename, os.fsync

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("rename", str(dst)))

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        events.append(("rename", str(dst)))

    def fsync(fd):
        real_fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync dir", os.path.realpath(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "fsync", fsync)
    archive = site / "again.tar"
    assert cli("pack", str(site / "bundle"), "-o", str(archive), "--quiet")[0] == 0
    assert cli("unpack", str(archive), "--into", str(site / "offline" / "bundle"), "--quiet")[0] == 0
    Manifest.save(parse_manifest((site / "bundle" / MANIFEST_NAME).read_bytes()), site / "bundle")
    renamed = [dst for kind, dst in events if kind == "rename"]
    assert str(archive) in renamed and f"{archive}.sha256" in renamed  # both written by rename, never in place
    for index, (kind, dst) in enumerate(events):
        if kind == "rename" and not Path(dst).name.startswith(".bundle.old-"):
            later = [d for k, d in events[index + 1:] if k == "fsync dir"]
            assert later and later[0] == os.path.realpath(Path(dst).parent), (dst, events)


def test_an_interrupted_sha256_write_leaves_the_old_file_whole(site, monkeypatch):
    sha_file = site / "b.tar.sha256"
    sha_file.write_text("the sum of the archive packed before\n")
    real_replace = os.replace

    def full_disk_for_the_sum(src, dst, *args, **kwargs):
        if str(dst).endswith(".sha256"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk_for_the_sum)
    code, _, err = cli("pack", str(site / "bundle"), "-o", str(site / "b.tar"), "--quiet")
    assert code == 1 and "No space left on device" in err
    assert sha_file.read_text() == "the sum of the archive packed before\n"  # never half-written
    assert not list(site.glob(".b.tar*")), "no temp file may be left"
    assert len(members_of(site / "b.tar")) == len(LAYOUT) + 1
