"""Signed bundles: `bundle sign` / `pack --sign-key`, and unpack, verify and install --allowed-signers,
checked with the real ssh-keygen, the offline half run as on a site (`python3 -S -m bundle`).

Every key is made here by ssh-keygen in the test's temp dir; no private key is committed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bundle.format.manifest import MANIFEST_NAME, content_digest, load_manifest, sha256_file
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.signature import NAMESPACE, UNANCHORED_NOTE, parse_signature
from tests.bundle_kit import build_args, make_site, run_cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")


def bare(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python3 -S -m bundle ...`: the bare Python of a fresh server, no site-packages."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-S", "-m", "bundle", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def keygen(directory: Path, name: str, kind: str = "ed25519") -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def allowed_line(principal: str, key: Path, options: str = "") -> str:
    return f"{principal} {options + ' ' if options else ''}{(key.parent / (key.name + '.pub')).read_text().strip()}\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One built bundle, the builder's key, another key, and the site's allowed_signers."""
    root = tmp_path_factory.mktemp("signed")
    site = make_site(root / "online")
    code, _ = run_cli(*build_args(site))
    assert code == 0
    keys = root / "keys"
    keys.mkdir()
    builder, stranger = keygen(keys, "builder"), keygen(keys, "stranger")
    allowed = keys / "allowed_signers"
    allowed.write_text(allowed_line("builder@example.org", builder))
    return {"built": site.out, "builder": builder, "stranger": stranger, "allowed": allowed, "keys": keys}


@pytest.fixture
def bundle(world, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(world["built"], copy)
    return copy


def sign(bundle: Path, key: Path) -> None:
    proc = bare("sign", str(bundle), "--key", str(key))
    assert proc.returncode == 0, proc.stderr
    assert "signed with ED25519 key SHA256:" in proc.stdout


def rehash(bundle: Path, rel: str, data: bytes) -> None:
    """What an attacker who can rewrite the archive does: new file, its sha256 and size in the manifest,
    the manifest's digest made anew: a bundle consistent in itself."""
    (bundle / rel).write_bytes(data)
    doc = json.loads((bundle / MANIFEST_NAME).read_text())
    del doc["digest"]
    entry = next(f for f in doc["files"] if f["path"] == rel)
    entry["sha256"], entry["size"] = sha256_file(bundle / rel), len(data)
    doc["digest"] = content_digest(doc)
    (bundle / MANIFEST_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def pack(bundle: Path, archive: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = bare("pack", str(bundle), "-o", str(archive), "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def checked(world, target: Path, *extra: str, command: str = "verify") -> subprocess.CompletedProcess:
    argv = [command, str(target), "--allowed-signers", str(world["allowed"]), *extra]
    if command == "unpack":
        argv += ["--into", str(target.parent / "unpacked")]
    return bare(*argv, "--quiet")


# ---------------------------------------------------------------------------------------------
# the good path


def test_a_signed_bundle_verifies_with_allowed_signers_and_with_ssh_keygen_alone(world, bundle):
    sign(bundle, world["builder"])
    parsed = parse_signature((bundle / SIGNATURE_NAME).read_bytes())
    assert parsed is not None and (parsed.key_type, parsed.namespace) == ("ssh-ed25519", NAMESPACE)
    proc = checked(world, bundle)
    assert proc.returncode == 0, proc.stderr
    assert f"signature allowed by {world['allowed']}" in proc.stdout and "nothing ties" not in proc.stderr
    # the documented check with OpenSSH alone, no Python (docs/bundle.md, "Signatures")
    with open(bundle / MANIFEST_NAME, "rb") as manifest:
        alone = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(world["allowed"]), "-I",
                                "builder@example.org", "-n", NAMESPACE, "-s", str(bundle / SIGNATURE_NAME)],
                               stdin=manifest, capture_output=True, text=True)
    assert alone.returncode == 0 and "Good \"xinference-offline-bundle\" signature" in alone.stdout


def test_pack_sign_key_carries_the_signature_right_after_the_manifest_and_unpack_keeps_it(world, bundle, tmp_path):
    archive = tmp_path / "carry" / "b.tar"
    proc = pack(bundle, archive, "--sign-key", str(world["builder"]))
    assert "sign: " in proc.stdout and "signed         MANIFEST.json.sig" in proc.stdout
    with tarfile.open(archive) as tar:
        assert tar.getnames()[:2] == [MANIFEST_NAME, SIGNATURE_NAME]
    proc = checked(world, archive)
    assert proc.returncode == 0, proc.stderr
    # docs/bundle.md, "With ssh-keygen alone": the first two members out with tar, checked by OpenSSH
    alone = tmp_path / "alone"
    alone.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(alone), MANIFEST_NAME, SIGNATURE_NAME], check=True)
    with open(alone / MANIFEST_NAME, "rb") as manifest:
        good = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(world["allowed"]), "-I", "builder@example.org",
                               "-n", NAMESPACE, "-s", str(alone / SIGNATURE_NAME)], stdin=manifest, capture_output=True)
    assert good.returncode == 0, good.stderr
    proc = checked(world, archive, "--signer", "builder@example.org", command="unpack")
    assert proc.returncode == 0, proc.stderr
    unpacked = tmp_path / "carry" / "unpacked"
    assert (unpacked / SIGNATURE_NAME).read_bytes() == (bundle / SIGNATURE_NAME).read_bytes()
    proc = checked(world, unpacked)
    assert proc.returncode == 0, proc.stderr


def test_rotation_two_lines_in_allowed_signers_take_the_old_and_the_new_key(world, bundle, tmp_path):
    new_key = keygen(tmp_path, "builder-2027")
    rotated = tmp_path / "allowed_signers"
    rotated.write_text(allowed_line("builder@example.org", world["builder"],  # the docs' two lines
                                    'namespaces="xinference-offline-bundle",valid-before="29991231"') +
                       allowed_line("builder@example.org", new_key, 'namespaces="xinference-offline-bundle"'))
    for key in (world["builder"], new_key):
        sign(bundle, key)
        proc = bare("verify", str(bundle), "--allowed-signers", str(rotated), "--signer", "builder@example.org",
                    "--quiet")
        assert proc.returncode == 0, proc.stderr


def test_an_unsigned_bundle_stays_valid_and_the_unanchored_note_is_said_once(world, bundle):
    proc = bare("verify", str(bundle), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(UNANCHORED_NOTE) == 1
    bundle_id = load_manifest(bundle).bundle_id
    proc = bare("verify", str(bundle), "--bundle-id", bundle_id, "--quiet")
    assert proc.returncode == 0 and "nothing ties" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# each refusal names its reason


def test_no_signature_is_refused_when_allowed_signers_is_given(world, bundle, tmp_path):
    proc = checked(world, bundle)
    assert proc.returncode == 1 and "refused: no signature (MANIFEST.json.sig is missing)" in proc.stderr
    archive = tmp_path / "b.tar"
    pack(bundle, archive)
    proc = checked(world, archive, command="unpack")
    assert proc.returncode == 1 and "refused: no signature" in proc.stderr
    assert not (tmp_path / "unpacked").exists()


def test_a_key_the_file_does_not_allow_is_refused(world, bundle):
    sign(bundle, world["stranger"])
    proc = checked(world, bundle)
    assert proc.returncode == 1
    assert f"refused: signed by a key {world['allowed']} does not allow (ED25519 key SHA256:" in proc.stderr


def test_a_tampered_manifest_is_refused_before_it_is_parsed(world, bundle):
    """The edit makes an unknown key; the refusal is the signature's, said before the strict reader runs."""
    sign(bundle, world["builder"])
    (bundle / MANIFEST_NAME).write_bytes((bundle / MANIFEST_NAME).read_bytes().replace(b'"format"', b'"formats"'))
    proc = checked(world, bundle)
    assert proc.returncode == 1 and "refused: tampered manifest: MANIFEST.json is not what was signed" in proc.stderr


def test_a_bad_signature_fails_whatever_else_was_given(world, bundle, tmp_path):
    """No --allowed-signers, the tampered manifest's own id as --bundle-id: the signature that is there
    does not sign this manifest, so it is refused all the same (directory and archive)."""
    sign(bundle, world["builder"])
    good = tmp_path / "good.tar"
    pack(bundle, good)
    rehash(bundle, "models/emb/config.json", b'{"dim": 1}')
    forged_id = load_manifest(bundle).bundle_id
    proc = bare("verify", str(bundle), "--bundle-id", forged_id, "--quiet")
    assert proc.returncode == 1 and "refused: tampered manifest" in proc.stderr
    forged = tmp_path / "forged.tar"
    rewrite_archive(good, forged, {MANIFEST_NAME: (bundle / MANIFEST_NAME).read_bytes(),
                                   "models/emb/config.json": b'{"dim": 1}'})
    proc = bare("unpack", str(forged), "--into", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 1 and "refused: tampered manifest" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_signature_for_another_namespace_is_refused(world, bundle, tmp_path):
    copy = tmp_path / "m"
    shutil.copy(bundle / MANIFEST_NAME, copy)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(world["builder"]), "-n", "file", str(copy)],
                   check=True, capture_output=True)
    shutil.copy(tmp_path / "m.sig", bundle / SIGNATURE_NAME)
    proc = checked(world, bundle)
    assert proc.returncode == 1
    assert "refused: signature made for another namespace, 'file', not 'xinference-offline-bundle'" in proc.stderr


def test_a_principal_that_is_not_allowed_is_refused(world, bundle):
    sign(bundle, world["builder"])
    proc = checked(world, bundle, "--signer", "ops@example.org")
    assert proc.returncode == 1
    assert "refused: principal not allowed: the signing key (ED25519 key SHA256:" in proc.stderr
    assert "as builder@example.org, not as --signer ops@example.org" in proc.stderr


def test_a_key_past_its_valid_before_is_refused(world, bundle, tmp_path):
    sign(bundle, world["builder"])
    expired = tmp_path / "allowed_signers"
    expired.write_text(allowed_line("builder@example.org", world["builder"], 'valid-before="20200101"'))
    proc = bare("verify", str(bundle), "--allowed-signers", str(expired), "--quiet")
    assert proc.returncode == 1 and "is past its valid-before in" in proc.stderr


def test_a_revoked_key_is_refused(world, bundle, tmp_path):
    sign(bundle, world["builder"])
    revoked = tmp_path / "revoked_keys"
    shutil.copy(world["builder"].with_name("builder.pub"), revoked)
    proc = checked(world, bundle, "--revoked", str(revoked))
    assert proc.returncode == 1 and "refused: the signing key (ED25519 key SHA256:" in proc.stderr
    assert f"is revoked in {revoked}" in proc.stderr
    krl = tmp_path / "revoked.krl"  # a KRL, as docs/bundle.md makes one
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(krl), str(world["builder"].with_name("builder.pub"))],
                   check=True, capture_output=True)
    proc = checked(world, bundle, "--revoked", str(krl))
    assert proc.returncode == 1 and f"is revoked in {krl}" in proc.stderr
    revoked.write_text(world["stranger"].with_name("stranger.pub").read_text())  # another key revoked: fine
    assert checked(world, bundle, "--revoked", str(revoked)).returncode == 0


def test_held_out_a_rehashed_bundle_resigned_by_another_key_is_refused(world, bundle, tmp_path):
    """The attack --bundle-id stops today: swap a weight file, re-hash the manifest consistently, sign it
    with the attacker's own key. Self-consistent, so a bare verify passes; --allowed-signers refuses it
    (directory, archive, unpack and install alike)."""
    sign(bundle, world["builder"])
    rehash(bundle, "models/emb/model.safetensors", b"backdoored weights")
    sign(bundle, world["stranger"])
    assert bare("verify", str(bundle), "--quiet").returncode == 0  # whole and self-consistent
    proc = checked(world, bundle)
    assert proc.returncode == 1 and "refused: signed by a key" in proc.stderr
    archive = tmp_path / "forged.tar"
    pack(bundle, archive)
    for command in ("verify", "unpack"):
        proc = checked(world, archive, command=command)
        assert proc.returncode == 1 and "refused: signed by a key" in proc.stderr, command
    assert not (tmp_path / "unpacked").exists()
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: xinference-offline\nruntime: python\n")
    proc = bare("install", str(bundle), "--allowed-signers", str(world["allowed"]), "--project", str(project),
                "--models-dir", str(tmp_path / "models"), "--pulumi-home", str(tmp_path / "pulumi"), "--quiet",
                cwd=project)
    assert proc.returncode == 1 and "refused: signed by a key" in proc.stderr
    assert sorted(p.name for p in project.iterdir()) == ["Pulumi.yaml"] and not (tmp_path / "models").exists()


def test_install_with_allowed_signers_installs_a_bundle_signed_by_the_builder(world, bundle, tmp_path):
    sign(bundle, world["builder"])
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: xinference-offline\nruntime: python\n")
    proc = bare("install", str(bundle), "--allowed-signers", str(world["allowed"]), "--signer",
                "builder@example.org", "--project", str(project), "--models-dir", str(tmp_path / "models"),
                "--pulumi-home", str(tmp_path / "pulumi"), "--skip", "venv", "--quiet", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models" / "emb" / "config.json").is_file() and "nothing ties" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# usage errors and the signing side


def test_signer_or_revoked_without_allowed_signers_and_a_missing_file_are_usage_errors(world, bundle):
    for extra, said in ((["--signer", "a@b"], "--signer needs --allowed-signers FILE"),
                        (["--revoked", str(world["allowed"])], "--revoked needs --allowed-signers FILE"),
                        (["--allowed-signers", str(bundle / "nope")], "--allowed-signers " + str(bundle / "nope")),
                        (["--allowed-signers", str(world["allowed"]), "--signer", "a b"], "--signer 'a b'")):
        proc = bare("verify", str(bundle), "--quiet", *extra)
        assert proc.returncode == 2 and said in proc.stderr, (extra, proc.stderr)


def test_sign_refuses_a_key_that_is_not_ed25519_and_a_missing_key(world, bundle, tmp_path):
    rsa = keygen(tmp_path, "old-rsa", "rsa")
    proc = bare("sign", str(bundle), "--key", str(rsa))
    assert proc.returncode == 2 and "a ssh-rsa key; bundles are signed with Ed25519 keys" in proc.stderr
    assert not (bundle / SIGNATURE_NAME).exists()
    proc = bare("sign", str(bundle), "--key", str(tmp_path / "none"))
    assert proc.returncode == 2 and "no such key file" in proc.stderr


def test_pack_refuses_a_stale_signature(world, bundle, tmp_path):
    sign(bundle, world["builder"])
    rehash(bundle, "models/emb/config.json", b"{}")
    proc = bare("pack", str(bundle), "-o", str(tmp_path / "b.tar"), "--quiet")
    assert proc.returncode == 1 and "tampered manifest" in proc.stderr and "sign the bundle again" in proc.stderr
    assert not (tmp_path / "b.tar").exists()


def rewrite_archive(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    """The archive again, with some members' bytes replaced (the order and every other member kept)."""
    with tarfile.open(source) as src, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            data = replace.get(member.name)
            if data is None:
                dst.addfile(member, src.extractfile(member))
            else:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))


def test_a_signature_anywhere_but_right_after_the_manifest_is_refused(world, bundle, tmp_path):
    """The site checks the first two members before anything else: a signature moved later in the archive
    is a member the manifest does not list."""
    archive = tmp_path / "b.tar"
    pack(bundle, archive, "--sign-key", str(world["builder"]))
    moved = tmp_path / "moved.tar"
    with tarfile.open(archive) as src, tarfile.open(moved, "w", format=tarfile.PAX_FORMAT) as dst:
        members = src.getmembers()
        for member in [members[0], *members[2:], members[1]]:
            dst.addfile(member, src.extractfile(member))
    proc = checked(world, moved)
    assert proc.returncode == 1 and "refused: no signature" in proc.stderr
    proc = bare("verify", str(moved), "--quiet")
    assert proc.returncode == 1 and "MANIFEST.json.sig: not in the manifest: refused" in proc.stderr


def test_diff_counts_the_signature_a_signed_bundle_s_archive_carries(world, bundle, tmp_path):
    sign(bundle, world["builder"])
    signed = tmp_path / "signed.tar"
    pack(bundle, signed)
    report = json.loads(bare("diff", str(bundle), str(bundle), "--json").stdout)
    assert report["full_archive_bytes"] == signed.stat().st_size
    assert report["delta_archive_bytes"] < report["full_archive_bytes"]  # nothing new: a manifest and its signature
