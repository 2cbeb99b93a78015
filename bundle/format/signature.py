"""MANIFEST.json.sig: who built the bundle, checked with the site's own `ssh-keygen -Y` (standard library only).

The manifest holds every file's sha256, so one SSH signature of MANIFEST.json covers the whole
bundle (as Zarf signs only zarf.yaml). It is made with `ssh-keygen -Y sign` under the fixed
namespace NAMESPACE and checked with `ssh-keygen -Y verify` against the site's allowed_signers
file: OpenSSH 8+ is on nearly every server, so a site needs no other tool, and no Python either
(docs/bundle.md, "Signatures").

The verdict is `ssh-keygen -Y verify -f ALLOWED_SIGNERS -I PRINCIPAL -n NAMESPACE [-r REVOKED]`
(PRINCIPAL: --signer, else the one `-Y find-principals` names for the key). When it says no (its
own message is mostly "Could not verify signature."), ssh-keygen is asked why:

  no MANIFEST.json.sig                                   -> no signature
  the SSHSIG blob names another namespace                -> other namespace (read here, before ssh-keygen)
  `-Y check-novalidate` fails                            -> tampered manifest
  `-Y find-principals` finds no line: "expired"          -> key past its valid-before
                                      otherwise          -> key not allowed
  --signer is not a principal of the key                 -> principal not allowed
  verify passes without -r                               -> revoked key

A signature present without --allowed-signers is still checked against the manifest (check-novalidate):
a bad signature always fails, whatever else was given. With --signer, a good signature costs one
ssh-keygen call, which OpenSSH 8.1+ answers; naming the principal itself needs 8.2+ (find-principals).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from bundle.format.errors import BundleError, SetupError, UsageError
from bundle.format.manifest import MANIFEST_NAME, Manifest, check_bundle_id, parse_manifest, read_manifest_bytes
from bundle.format.manifest_rules import SIGNATURE_NAME

NAMESPACE = "xinference-offline-bundle"
MAX_SIGNATURE_BYTES = 64 * 1024
ED25519_TYPES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com")
SSH_KEYGEN_TIMEOUT_S = 60
ARMOR_BEGIN, ARMOR_END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"
UNANCHORED_NOTE = ("note: neither --bundle-id nor --allowed-signers was given: this checks that the bundle is "
                   "whole and self-consistent, but nothing ties it to its builder (whoever can rewrite the archive "
                   "can rewrite its manifest too); see docs/bundle.md, \"Signatures\"")


class SignatureError(BundleError):
    """The bundle's signature is missing or refused (exit 1); the message names the reason."""


@dataclass(frozen=True)
class SignerPolicy:
    """What the site trusts: its allowed_signers file, optionally one principal and a revocation list."""

    allowed_signers: Path
    signer: Optional[str] = None
    revoked: Optional[Path] = None


@dataclass(frozen=True)
class SshSignature:
    """The fields of an SSHSIG blob this module reports (PROTOCOL.sshsig)."""

    key_type: str
    namespace: str


def parse_signature(data: bytes) -> Optional[SshSignature]:
    """The key type and namespace of an armored SSH signature; None when it is not one."""
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if not (text.startswith(ARMOR_BEGIN) and text.endswith(ARMOR_END)):
        return None
    try:
        blob = base64.b64decode("".join(text[len(ARMOR_BEGIN):-len(ARMOR_END)].split()), validate=True)
        if blob[:6] != b"SSHSIG":
            return None
        offset = 10  # magic and uint32 version
        public_key, offset = _ssh_string(blob, offset)
        namespace, offset = _ssh_string(blob, offset)
        key_type, _ = _ssh_string(public_key, 0)
        return SshSignature(key_type.decode("ascii"), namespace.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, struct.error):
        return None


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">I", blob, offset)
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4:end], end


def ssh_keygen() -> str:
    """The path of this machine's ssh-keygen, or SetupError (exit 2) saying how to get it."""
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SetupError("ssh-keygen not found on PATH: signatures are checked with OpenSSH's own ssh-keygen "
                         "(8.0 or later); install openssh-client (apt-get install openssh-client, "
                         "dnf install openssh-clients)")
    return found


def _run(args: list[str], data: Optional[bytes] = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([ssh_keygen(), *args], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=SSH_KEYGEN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SignatureError(f"ssh-keygen {' '.join(args[:2])} did not answer in {SSH_KEYGEN_TIMEOUT_S} s") from None


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    """ssh-keygen's own words, one line."""
    words = (result.stderr + result.stdout).decode("utf-8", "replace").split("\n")
    return "; ".join(line.strip() for line in words if line.strip()) or f"exit {result.returncode}"


def _key_of(result: subprocess.CompletedProcess[bytes]) -> str:
    """"ED25519 key SHA256:..." from a Good signature line (for messages)."""
    line = result.stdout.decode("utf-8", "replace").strip()
    return line[line.find(" with ") + 6:] if " with " in line else "the signing key"


def _signature_blob(signature: bytes, source: str) -> SshSignature:
    """The parsed signature, or the refusal for one that is not an SSH signature of our namespace."""
    parsed = parse_signature(signature)
    if parsed is None:
        raise SignatureError(f"{source}: refused: not an SSH signature (no armored SSHSIG block); sign the "
                             "bundle again with `python -m bundle sign`")
    if parsed.namespace != NAMESPACE:
        raise SignatureError(f"{source}: refused: signature made for another namespace, {parsed.namespace!r}, "
                             f"not {NAMESPACE!r} (a signature for another purpose cannot vouch for a bundle)")
    return parsed


class _SshKeygen:
    """ssh-keygen -Y questions about one signature (written to a temp file for the run)."""

    def __init__(self, signature: bytes, manifest_bytes: bytes, directory: str):
        self.sig_file = Path(directory) / SIGNATURE_NAME
        self.sig_file.write_bytes(signature)
        self.data = manifest_bytes

    def check_novalidate(self) -> subprocess.CompletedProcess[bytes]:
        return _run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(self.sig_file)], self.data)

    def find_principals(self, allowed: str) -> subprocess.CompletedProcess[bytes]:
        return _run(["-Y", "find-principals", "-f", allowed, "-s", str(self.sig_file)])

    def verify(self, allowed: str, principal: str, revoked: list[str]) -> subprocess.CompletedProcess[bytes]:
        return _run(["-Y", "verify", "-f", allowed, "-I", principal, "-n", NAMESPACE, "-s", str(self.sig_file),
                     *revoked], self.data)


def check_matches(manifest_bytes: bytes, signature: bytes, source: str) -> str:
    """The signature is an SSH signature of exactly these bytes under NAMESPACE (no key trusted yet).
    Returns the signing key ("ED25519 key SHA256:..."); SignatureError names what is wrong."""
    _signature_blob(signature, source)
    with tempfile.TemporaryDirectory(prefix="bundle-sig-") as tmp:
        result = _SshKeygen(signature, manifest_bytes, tmp).check_novalidate()
    if result.returncode != 0:
        raise SignatureError(f"{source}: refused: tampered manifest: MANIFEST.json is not what was signed "
                             f"(ssh-keygen: {_said(result)})")
    return _key_of(result)


def verify_signature(manifest_bytes: bytes, signature: Optional[bytes], policy: SignerPolicy, source: str) -> str:
    """Check the signature of these manifest bytes against the site's policy; returns the principal.

    The verdict is `ssh-keygen -Y verify` alone (with --signer, the only ssh-keygen call on success);
    the other questions run when it says no, to name the reason. Runs before anything else of the
    bundle is read.
    """
    if signature is None:
        raise SignatureError(f"{source}: refused: no signature ({SIGNATURE_NAME} is missing) and --allowed-signers "
                             f"requires one; ask the builder for a signed bundle (`python -m bundle sign`)")
    _signature_blob(signature, source)
    allowed = str(policy.allowed_signers)
    revoked = ["-r", str(policy.revoked)] if policy.revoked else []
    with tempfile.TemporaryDirectory(prefix="bundle-sig-") as tmp:
        keygen = _SshKeygen(signature, manifest_bytes, tmp)
        found = keygen.find_principals(allowed) if policy.signer is None else None
        principals = _lines(found) if found is not None and found.returncode == 0 else []
        principal = policy.signer or (principals[0] if principals else None)
        # no principal: find-principals ran (there was no --signer) and named nobody; its answer is the refusal
        result = keygen.verify(allowed, principal, revoked) if principal else found
        if principal and result is not None and result.returncode == 0:
            return principal
        raise SignatureError(f"{source}: refused: {_refusal(keygen, policy, found, result)}")


def _lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [line.strip() for line in result.stdout.decode("utf-8", "replace").split("\n") if line.strip()]


def _refusal(keygen: _SshKeygen, policy: SignerPolicy, found: Optional[subprocess.CompletedProcess[bytes]],
             result: Optional[subprocess.CompletedProcess[bytes]]) -> str:
    """Why ssh-keygen said no, asked of ssh-keygen itself."""
    allowed = str(policy.allowed_signers)
    matches = keygen.check_novalidate()
    if matches.returncode != 0:
        return f"tampered manifest: MANIFEST.json is not what was signed (ssh-keygen: {_said(matches)})"
    key = _key_of(matches)
    found = found or keygen.find_principals(allowed)
    if found.returncode != 0:
        said = _said(found)
        if "expired" in said:
            return (f"the signing key ({key}) is past its valid-before in {allowed} (ssh-keygen: {said}); "
                    "a bundle signed with the new key is needed")
        return f"signed by a key {allowed} does not allow ({key}); this bundle was not signed by a builder this site trusts"
    principals = _lines(found)
    revoked = ["-r", str(policy.revoked)] if policy.revoked else []
    if policy.signer and policy.signer not in principals and \
            keygen.verify(allowed, principals[0], revoked).returncode == 0:
        return (f"principal not allowed: the signing key ({key}) is allowed in {allowed} as {', '.join(principals)}, "
                f"not as --signer {policy.signer}")
    principal = policy.signer or principals[0]
    if revoked and keygen.verify(allowed, principal, []).returncode == 0:
        return f"the signing key ({key}) is revoked in {policy.revoked}"
    said = _said(result if result is not None else found)
    if "namespace" in said:
        return f"{allowed} does not allow the signing key ({key}) for namespace {NAMESPACE!r} (ssh-keygen: {said})"
    return f"ssh-keygen -Y verify says no: {said}"


def check_bundle_signature(manifest_bytes: bytes, signature: Optional[bytes], policy: Optional[SignerPolicy],
                           source: str, err: Optional[TextIO] = None) -> Optional[str]:
    """What unpack, verify and install ask before reading anything else of a bundle.

    With a policy: verify_signature (the principal is returned). Without one, a signature that is there
    is still checked against the manifest: a bad one fails. (When no ssh-keygen is there to check it,
    that is said on ``err`` and the bundle goes on, as an unsigned one would.)
    """
    if policy is not None:
        return verify_signature(manifest_bytes, signature, policy, source)
    if signature is not None:
        if shutil.which("ssh-keygen") is None:
            print(f"note: {source} is signed, but no ssh-keygen is on PATH to check it; the signature was not "
                  "checked", file=err or sys.stderr)
            return None
        check_matches(manifest_bytes, signature, source)
    return None


def read_signature(directory: Path) -> Optional[bytes]:
    """The bytes of DIR/MANIFEST.json.sig; None when there is none."""
    path = Path(directory) / SIGNATURE_NAME
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{path}: refused: over {MAX_SIGNATURE_BYTES} bytes, not an SSH signature")
    return data


# ---------------------------------------------------------------------------------------------
# command line: the options unpack, verify and install share


def add_signer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allowed-signers", type=Path, metavar="FILE",
                        help="OpenSSH allowed_signers file: refuse a bundle whose MANIFEST.json is not signed by a "
                             "key it allows (checked with this machine's ssh-keygen -Y verify, before anything else)")
    parser.add_argument("--signer", metavar="ID",
                        help="the principal the signing key must be allowed as (default: any line of the file)")
    parser.add_argument("--revoked", type=Path, metavar="FILE",
                        help="revoked keys (a KRL or public keys), handed to ssh-keygen -Y verify -r")


def signer_policy(args: argparse.Namespace) -> Optional[SignerPolicy]:
    """The policy the options ask for (None: no --allowed-signers); UsageError (exit 2) for a bad option."""
    allowed, signer, revoked = args.allowed_signers, args.signer, args.revoked
    if allowed is None:
        given = "--signer" if signer is not None else "--revoked" if revoked is not None else None
        if given:
            raise UsageError(f"{given} needs --allowed-signers FILE (the keys this site trusts)")
        return None
    for option, path in (("--allowed-signers", allowed), ("--revoked", revoked)):
        if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise UsageError(f"{option} {path}: no such readable file")
    if signer is not None and (not signer.strip() or any(c.isspace() or c in ",*?!" for c in signer)):
        raise UsageError(f"--signer {signer!r}: one principal, as in allowed_signers (e.g. builder@example.org), "
                         "no spaces, commas or patterns")
    ssh_keygen()
    return SignerPolicy(Path(allowed), signer, Path(revoked) if revoked is not None else None)


def site_policy(args: argparse.Namespace, err: Optional[TextIO] = None) -> Optional[SignerPolicy]:
    """signer_policy of unpack's, verify's and install's options; when neither --bundle-id nor
    --allowed-signers is given, says once (on ``err``) that nothing ties the bundle to its builder."""
    policy = signer_policy(args)
    if policy is None and args.bundle_id is None:
        print(UNANCHORED_NOTE, file=err or sys.stderr)
    return policy


def load_trusted_manifest(directory: Path, bundle_id: Optional[str], policy: Optional[SignerPolicy],
                          err: Optional[TextIO] = None) -> Manifest:
    """DIR's manifest, its signature checked first (check_bundle_signature), then read strictly, then its
    id compared with --bundle-id: what verify and install read a bundle directory through."""
    path = str(Path(directory) / MANIFEST_NAME)
    data = read_manifest_bytes(directory)
    check_bundle_signature(data, read_signature(directory), policy, path, err)
    manifest = parse_manifest(data, path)
    check_bundle_id(manifest, bundle_id, path)
    return manifest
