"""`pack DIR -o FILE`: the one archive carried across the air gap (unpacked by bundle/install/unpack.py).

pack writes MANIFEST.json as the first member, then its signature MANIFEST.json.sig when the
bundle is signed (`bundle sign`, or `pack --sign-key KEY`), then exactly the files the manifest lists,
hashing each one as it goes into the archive: a bundle directory that no longer matches its
manifest is refused (every problem listed) instead of being carried to site. Members are
normalised (owner root, mode 0644 or 0755, no links). `.tar.gz` uses gzip level 1 by
default (weights hardly compress; level 9 would be many times slower); `.tar` is fastest.
A `FILE.sha256` beside the archive lets `sha256sum -c` check the transfer anywhere. Both are
written by rename (mode 0644, directory fsynced). An archive inside the directory it packs
(`pack DIR -o DIR/x.tar`, in any spelling) is refused before anything is written.

`pack --max-part-size 4G` writes the archive as parts (bundle/format/parts.py); a delta
(`build --base`) leaves out what its base holds. Unpacking is bundle/install/unpack.py.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import secrets
import stat
import sys
import tarfile
from pathlib import Path
from typing import IO, Optional, TextIO

from bundle.format import delta
from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.filecopy import file_mode
from bundle.format.manifest import (MANIFEST_NAME, BundleError, FileEntry, Manifest, UsageError, fsync_directory,
                                    load_manifest, parse_manifest, write_atomic)
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.overlap import inside
from bundle.format.parts import PartWriter, existing_parts, parse_part_size, sums_text
from bundle.format.progress import Progress, bars_wanted, human
from bundle.format.signature import SignatureError, check_matches, read_signature
from bundle.build.sign import print_signed, sign_bundle

GZIP_SUFFIXES = (".tar.gz", ".tgz")


# ---------------------------------------------------------------------------------------------
# pack


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.count += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.raw.flush()


class _HashingReader:
    """Reads a bundle file into the archive, hashing it; ``tarfile`` reads exactly ``size`` bytes."""

    def __init__(self, raw: IO[bytes], progress: Progress):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.progress.update(len(data))
        return data


def archive_kind(path: Path) -> str:
    name = path.name
    if name.endswith(GZIP_SUFFIXES):
        return "gz"
    if name.endswith(".tar"):
        return "tar"
    raise UsageError(f"{path}: the archive name must end in .tar.gz, .tgz or .tar")


def _tarinfo(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(root: Path, output: Path, level: int = 1, quiet: bool = False,
         max_part_size: Optional[int] = None) -> tuple[Manifest, str]:
    """Write the archive (``max_part_size``: as parts of at most that many bytes, bundle/format/parts.py);
    returns (manifest, sha256 of the whole archive). Nothing is left behind on failure."""
    kind = archive_kind(output)
    if output.is_dir():
        raise UsageError(f"-o {output}: is a directory; name the archive file to write, e.g. {output / 'bundle.tar'}")
    if inside(output.parent, root):
        outside = Path(os.path.realpath(root)).parent / output.name
        raise UsageError(f"-o {output}: lies inside the bundle directory {root} being packed (it would pack "
                         f"into itself); write the archive outside it, e.g. -o {outside}")
    manifest = load_manifest(root)
    carried_by_base = frozenset(manifest.base.sha256 if manifest.base else ())  # a delta leaves these out
    manifest_bytes = (root / MANIFEST_NAME).read_bytes()  # the bytes that go into the archive, checked again:
    if parse_manifest(manifest_bytes, str(root / MANIFEST_NAME)) != manifest:  # it may not change in between
        raise BundleError(f"{root / MANIFEST_NAME}: changed while pack read it; nothing was packed (run pack again)")
    signature = read_signature(root)
    if signature is not None:  # a stale signature (the bundle rebuilt since) is never carried
        try:
            check_matches(manifest_bytes, signature, str(root / SIGNATURE_NAME))
        except SignatureError as exc:
            raise SignatureError(f"{exc}; nothing was packed (sign the bundle again: `python -m bundle sign "
                                 f"{root} --key KEY`, or `pack --sign-key KEY`)") from None
    problems: list[FileProblem] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.part-{secrets.token_hex(4)}"
    splitter = PartWriter(output, max_part_size) if max_part_size else None
    try:
        with (splitter or open(partial, "wb")) as raw, \
                Progress(manifest.total_size(), "pack", bars_wanted(quiet)) as progress:
            writer = _HashingWriter(raw)
            options = {"compresslevel": level} if kind == "gz" else {}
            with tarfile.open(fileobj=writer, mode="w:gz" if kind == "gz" else "w", format=tarfile.PAX_FORMAT,
                              **options) as tar:
                tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes), 0o644,
                                     (root / MANIFEST_NAME).stat().st_mtime), io.BytesIO(manifest_bytes))
                if signature is not None:  # right after the manifest: a site checks both before anything else
                    tar.addfile(_tarinfo(SIGNATURE_NAME, len(signature), 0o644,
                                         (root / SIGNATURE_NAME).stat().st_mtime), io.BytesIO(signature))
                for entry in sorted(manifest.files, key=lambda e: e.path):
                    if entry.sha256 in carried_by_base:
                        continue  # a delta: the site takes this file from the base bundle (unpack --base)
                    problem = _add_file(tar, root, entry, progress)
                    if problem:
                        problems.append(problem)
                        if problem.message.startswith("cut short"):
                            break  # the archive stream is no longer usable
            if splitter is None:
                raw.flush()
                os.fsync(raw.fileno())
        if problems:
            raise VerifyFailed(f"{root} does not match its manifest; nothing was packed "
                               f"(run `python -m bundle verify {root}`, or rebuild)", problems)
        if splitter is not None:
            parts = splitter.commit()
        else:
            os.chmod(partial, 0o644)
            os.replace(partial, output)
            for stale in existing_parts(output):  # an earlier split pack of the same name
                stale.unlink()
            fsync_directory(output.parent)
            parts = []
    finally:
        if partial.exists():
            partial.unlink()
        if splitter is not None:
            splitter.discard()
    digest = writer.sha256.hexdigest()
    write_atomic(output.parent / f"{output.name}.sha256", sums_text(parts, output.name, digest).encode())
    return manifest, digest


def _add_file(tar: tarfile.TarFile, root: Path, entry: FileEntry, progress: Progress) -> Optional[FileProblem]:
    path = root / entry.path
    try:
        handle = open(path, "rb", buffering=0)
    except FileNotFoundError:
        return FileProblem(entry.path, f"missing (expected {entry.size} bytes, sha256 {entry.sha256})")
    except OSError as exc:
        return FileProblem(entry.path, f"cannot be read ({exc.strerror})")
    with handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or os.path.islink(path):
            return FileProblem(entry.path, "not a regular file")
        if st.st_size != entry.size:
            return FileProblem(entry.path, f"size mismatch: expected {entry.size} bytes, actual {st.st_size} bytes")
        reader = _HashingReader(handle, progress)
        try:
            tar.addfile(_tarinfo(entry.path, entry.size, file_mode(st.st_mode), st.st_mtime), reader)
        except OSError as exc:  # the file shrank while being read
            return FileProblem(entry.path, f"cut short while packing ({exc})")
        actual = reader.sha256.hexdigest()
        if actual != entry.sha256:
            return FileProblem(entry.path, f"sha256 mismatch: expected {entry.sha256}, actual {actual}")
    return None


# ---------------------------------------------------------------------------------------------
# command line


def register(subparsers: argparse._SubParsersAction) -> None:
    pack_parser = subparsers.add_parser("pack", help="pack a built bundle directory into one archive",
                                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pack_parser.add_argument("directory", type=Path, metavar="DIR", help="bundle directory made by `build`")
    pack_parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                             help="archive to write: FILE.tar.gz (gzip) or FILE.tar (no compression, fastest)")
    pack_parser.add_argument("--level", type=int, default=1, choices=range(0, 10), metavar="0-9",
                             help="gzip level for .tar.gz (default 1)")
    pack_parser.add_argument("--sign-key", type=Path, metavar="KEY",
                             help="sign MANIFEST.json with this Ed25519 SSH key first (as `bundle sign DIR --key KEY`)")
    pack_parser.add_argument("--max-part-size", type=parse_part_size, metavar="SIZE",
                             help="write NAME.part000, NAME.part001, ... of at most SIZE bytes each, for media "
                                  "with a file size limit (4G = 4,000,000,000 bytes fits FAT32); the .sha256 "
                                  "lists every part and the whole")
    pack_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    pack_parser.set_defaults(func=run_pack)


def run_pack(args: argparse.Namespace, out: TextIO) -> int:
    if not args.directory.is_dir():
        print(f"error: {args.directory}: not a bundle directory (make one with `python -m bundle build`)",
              file=sys.stderr)
        return 2
    if args.sign_key is not None:
        print_signed(args.directory, *sign_bundle(args.directory, args.sign_key), out)
    manifest, digest = pack(args.directory, args.output, args.level, args.quiet, args.max_part_size)
    parts = existing_parts(args.output) if args.max_part_size else [args.output]
    size = sum(part.stat().st_size for part in parts)
    split = f" in {len(parts)} parts {parts[0].name}..{parts[-1].name}" if args.max_part_size else ""
    signed = read_signature(args.directory) is not None
    print(f"pack: {args.output} ({human(size)}{split}, {len(manifest.files) + 1 + signed} members; "
          f"{human(manifest.total_size())} of files)", file=out)
    print(f"  archive sha256 {digest} (also in {args.output.name}.sha256)", file=out)
    print(f"  bundle id      {manifest.bundle_id} (check with: unpack/verify --bundle-id ...)", file=out)
    if signed:
        print(f"  signed         {SIGNATURE_NAME} right after the manifest (check with: unpack/verify/install "
              "--allowed-signers FILE, or ssh-keygen -Y verify)", file=out)
    if manifest.base is not None:
        left_out = delta.from_base(manifest)
        size = human(sum(f.size for f in left_out))
        print(f"  delta on bundle {manifest.base.bundle_id}: {len(left_out)} files ({size}) left out, the site "
              "takes them from that bundle (unpack/install --base DIR)", file=out)
    return 0
