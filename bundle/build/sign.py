"""`python -m bundle sign DIR --key KEY`: sign a built bundle's MANIFEST.json with an Ed25519 SSH key.

Writes DIR/MANIFEST.json.sig with `ssh-keygen -Y sign -n xinference-offline-bundle` (the
manifest holds every file's sha256, so the one signature covers the whole bundle). A key with a
passphrase asks for it on the terminal, as ssh-keygen does; a key in ssh-agent is used by giving
its public half (KEY.pub) as --key. `pack --sign-key KEY` signs and packs in one step. The site
checks it with `unpack`/`verify`/`install --allowed-signers FILE`, or with ssh-keygen alone
(docs/bundle.md, "Signatures"). Standard library only.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import TextIO

from bundle.format.errors import UsageError
from bundle.format.manifest import MANIFEST_NAME, Manifest, load_manifest, read_manifest_bytes, write_atomic
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.signature import (ED25519_TYPES, NAMESPACE, SignatureError, check_matches, parse_signature,
                                     ssh_keygen)


def sign_bundle(directory: Path, key: Path) -> tuple[Manifest, str]:
    """Sign DIR/MANIFEST.json with ``key``; returns (manifest, signing key as ssh-keygen names it)."""
    if not key.is_file():
        raise UsageError(f"--key {key}: no such key file (make one: ssh-keygen -t ed25519 -f {key})")
    manifest = load_manifest(directory)  # a manifest verify would refuse is never signed
    data = read_manifest_bytes(directory)
    with tempfile.TemporaryDirectory(prefix="bundle-sign-") as tmp:
        copy = Path(tmp) / MANIFEST_NAME  # ssh-keygen writes COPY.sig; stdin stays the terminal (passphrase)
        copy.write_bytes(data)
        result = subprocess.run([ssh_keygen(), "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(copy)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        sig_file = Path(tmp) / SIGNATURE_NAME
        if result.returncode != 0 or not sig_file.is_file():
            said = (result.stderr + result.stdout).decode("utf-8", "replace").strip()
            raise UsageError(f"--key {key}: ssh-keygen -Y sign failed: {said or f'exit {result.returncode}'}")
        signature = sig_file.read_bytes()
    parsed = parse_signature(signature)
    if parsed is None or parsed.key_type not in ED25519_TYPES:
        kind = parsed.key_type if parsed else "unknown"
        raise UsageError(f"--key {key}: a {kind} key; bundles are signed with Ed25519 keys "
                         f"(ssh-keygen -t ed25519 -f KEY)")
    signed_key = check_matches(data, signature, str(directory / SIGNATURE_NAME))
    if read_manifest_bytes(directory) != data:
        raise SignatureError(f"{directory / MANIFEST_NAME}: changed while it was being signed; nothing was written "
                             "(run sign again)")
    write_atomic(directory / SIGNATURE_NAME, signature)
    return manifest, signed_key


def print_signed(directory: Path, manifest: Manifest, signed_key: str, out: TextIO) -> None:
    print(f"sign: {directory / SIGNATURE_NAME}: MANIFEST.json (bundle id {manifest.bundle_id}) signed with "
          f"{signed_key}, namespace {NAMESPACE}", file=out)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sign", help="sign a built bundle's manifest with an Ed25519 SSH key",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, metavar="DIR", help="bundle directory made by `build`")
    parser.add_argument("--key", type=Path, required=True, metavar="KEY",
                        help="Ed25519 private key (or its .pub when the key is in ssh-agent)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    if not args.directory.is_dir():
        raise UsageError(f"{args.directory}: not a bundle directory (make one with `python -m bundle build`)")
    manifest, signed_key = sign_bundle(args.directory, args.key)
    print_signed(args.directory, manifest, signed_key, out)
    return 0
