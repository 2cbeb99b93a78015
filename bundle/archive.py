"""`pack DIR -o FILE` and `unpack FILE --into DIR`: the one archive carried across the air gap.

pack writes MANIFEST.json as the first member, then its signature MANIFEST.json.sig when the
bundle is signed (`bundle sign`, or `pack --sign-key KEY`), then exactly the files the manifest lists,
hashing each one as it goes into the archive: a bundle directory that no longer matches its
manifest is refused (every problem listed) instead of being carried to site. Members are
normalised (owner root, mode 0644 or 0755, no links). `.tar.gz` uses gzip level 1 by
default (weights hardly compress; level 9 would be many times slower); `.tar` is fastest.
A `FILE.sha256` beside the archive lets `sha256sum -c` check the transfer anywhere. Both are
written by rename (mode 0644, directory fsynced). An archive inside the directory it packs
(`pack DIR -o DIR/x.tar`, in any spelling) is refused before anything is written.

unpack first reads every member header (and the manifest, which must be the first member)
and refuses the archive, before writing anything, for: a signature --allowed-signers refuses
(checked before the manifest is even parsed; a signature that does not match its manifest is
refused without --allowed-signers too), absolute paths, `..`, symlinks and
hard links (a bundle holds regular files only; links that point outside are named as
such), device files and fifos, members not in the manifest or listed twice or with another
size than the manifest's, manifest files the archive lacks, and a plain tar cut short. Then
it extracts into a hidden temp directory beside the target, hashing every file, writes
MANIFEST.json there last, and only then renames the directory into place. An interrupted
unpack leaves only the hidden temp directory (no MANIFEST.json, so nothing that looks like a
valid bundle), named by the bundle id: the next unpack of the same bundle keeps the files it
completed (bundle/format/resume.py), one of another bundle removes it.

`pack --max-part-size 4G` writes the archive as parts and unpack reads the parts as one
(bundle/format/parts.py); a delta (`build --base`) leaves out what its base holds, and
`unpack --base DIR` takes it from there (bundle/format/delta.py).

A target that holds the archive (`unpack site/update.tar --into site`, or `--into` a parent of
it, spelled with `..` or through a symlink) is refused before anything is touched: replacing
the target would delete the archive. Member metadata unpack does not need cannot stop it: an
mtime out of range (a pax 1e30, -1e30) is clamped, one that is no time at all (NaN) ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import secrets
import shutil
import stat
import sys
import tarfile
from pathlib import Path
from typing import IO, Optional, TextIO, Union

from bundle.format import delta, resume, tarscan
from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.filecopy import file_mode
from bundle.format.manifest import (MANIFEST_NAME, BundleError, FileEntry, Manifest, UsageError, bundle_id_arg,
                                    fsync_directory, load_manifest, parse_manifest, write_atomic)
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.parts import ArchiveFiles, PartWriter, existing_parts, parse_part_size, resolve_archive, sums_text
from bundle.format.progress import Progress, bars_wanted, human
from bundle.format.signature import (SignatureError, SignerPolicy, add_signer_arguments, check_matches, read_signature,
                                     site_policy)
from bundle.sign import print_signed, sign_bundle

GZIP_SUFFIXES = (".tar.gz", ".tgz")


# ---------------------------------------------------------------------------------------------
# overlaps: an output must never be (in) what a command reads, nor the other way round


def inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies below it, however either is spelled: symlinks and
    `..` are resolved, and each existing ancestor of ``path`` is compared by device and inode with
    ``directory`` (a bind mount, a second mount of one file system)."""
    real_path, real_dir = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    if real_path == real_dir or real_dir in real_path.parents:
        return True
    try:
        wanted = os.stat(real_dir)
    except OSError:
        return False  # a directory that does not exist holds nothing
    for ancestor in (real_path, *real_path.parents):
        try:
            if os.path.samestat(os.stat(ancestor), wanted):
                return True
        except OSError:
            continue
    return False


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
# unpack


def _check_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"--into {target}: exists and is not a directory; choose a new directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise UsageError(f"--into {target}: is not empty and holds no bundle; refusing to replace it "
                         "(choose a new or empty directory)")


def _leftovers(target: Path, keep: Optional[Path] = None) -> list[Path]:
    """Hidden temp and old trees of interrupted unpacks into this target (removed before unpacking)."""
    parent = target.parent
    if not parent.is_dir():
        return []
    return [leftover for prefix in (f".{target.name}.unpack-", f".{target.name}.old-")
            for leftover in parent.glob(prefix + "*")
            if leftover.is_dir() and not leftover.is_symlink() and leftover != keep]


def _check_overlap(archive: Path, target: Path) -> None:
    """Refuse, before anything is touched, a target whose replacement would delete the archive being read."""
    if inside(archive, target):
        raise UsageError(f"--into {target}: holds the archive {archive} being unpacked (unpacking replaces that "
                         "directory, which would delete the archive); move the archive out of it first, or "
                         "unpack into another directory")
    for leftover in _leftovers(target):
        if inside(archive, leftover):
            raise UsageError(f"{archive}: lies in {leftover}, a leftover of an interrupted unpack into {target} "
                             "that unpack removes first; move the archive out of it")


def _remove_leftovers(target: Path, keep: Optional[Path] = None) -> None:
    """Hidden temp and old trees of interrupted unpacks into this target (but ``keep``: this bundle's own)."""
    for leftover in _leftovers(target, keep):
        shutil.rmtree(leftover)


def unpack(archive: Union[Path, ArchiveFiles], target: Path, bundle_id: Optional[str] = None,
           quiet: bool = False, base_dir: Optional[Path] = None, policy: Optional[SignerPolicy] = None) -> Manifest:
    """Check the signature (``policy``), validate every member, extract into a temp dir beside ``target``,
    verify, then rename into place.

    A file an interrupted unpack of the same bundle completed is kept (its size and sha256 checked,
    never written again); a damaged archive removes the temp dir, an interrupted run leaves it. A delta
    (bundle/format/delta.py) takes the files its archive leaves out from ``base_dir``, checked first."""
    files = tarscan.archive_files(archive)
    target = target.absolute()
    for path in files.paths:
        _check_overlap(path.resolve(), target)
    _check_target(target)
    name = files.first.parent / files.name
    done = resume.already_unpacked(files, target, bundle_id, quiet, policy)
    if done is not None:
        return done
    checked = tarscan.scan_archive(files, None, bundle_id, policy=policy)
    if checked.problems:
        raise VerifyFailed(f"{name} refused; nothing was written", checked.problems)
    base = delta.check_base_dir(checked.manifest, base_dir, target)
    temp = resume.resume_dir(target, checked.manifest.bundle_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    needed = delta.space_needed(checked.manifest, base_dir, target.parent) - resume.bytes_in(temp)
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise BundleError(f"{target.parent}: {human(free)} free, the bundle needs {human(needed)}; "
                          "nothing was written")
    _remove_leftovers(target, keep=temp)
    temp.mkdir(mode=0o700, exist_ok=True)
    claimed = resume.claim(temp, target)  # refused (and temp left to its owner) while another unpack works there
    resume.clear_unlisted(temp, checked.manifest)
    kept = 0
    damaged = True
    try:
        with Progress(checked.manifest.total_size(), "unpack", bars_wanted(quiet)) as progress:
            if base is not None and base_dir is not None:  # the base first: a bad one is refused before the archive
                problems = delta.take_from_base(checked.manifest, base, base_dir, temp, progress.update)
                if problems:
                    raise VerifyFailed(f"the base {base_dir} cannot supply {len(problems)} files of this update; "
                                       f"nothing was unpacked into {target}", problems)
            def write(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry) -> Optional[FileProblem]:
                nonlocal kept
                dest = temp / entry.path
                if resume.complete(dest, entry, progress.update):
                    kept += 1
                    return None
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    problem = tarscan.copy_member(tar, member, entry, handle, progress)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(dest, file_mode(member.mode))
                mtime = tarscan.safe_mtime(member.mtime)  # a pax mtime may be 1e30 or NaN: clamped or ignored
                if mtime is not None:
                    os.utime(dest, (mtime, mtime))
                return problem

            scan = tarscan.scan_archive(files, write, bundle_id, expect=checked)
        if scan.problems:
            raise VerifyFailed(f"{name} is damaged; nothing was unpacked into {target}", scan.problems)
        damaged = False
        for dirpath, dirnames, _files in os.walk(temp):
            for dirname in dirnames:
                os.chmod(os.path.join(dirpath, dirname), 0o755)
        os.chmod(temp, 0o755)
        if scan.signature is not None:  # kept beside the manifest: verify and install check it again
            with open(temp / SIGNATURE_NAME, "wb") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(scan.signature)
                handle.flush()
                os.fsync(handle.fileno())
        manifest_path = temp / MANIFEST_NAME
        with open(manifest_path, "wb") as handle:  # last: only a complete tree has a manifest
            os.fchmod(handle.fileno(), 0o644)
            handle.write(scan.manifest_bytes)
            handle.flush()
            os.fsync(handle.fileno())
        _swap_into_place(temp, target)
    except (BundleError, tarfile.TarError):
        damaged = True
        raise
    finally:
        if damaged and temp.exists():  # an interruption (kill, Ctrl-C, disk full) keeps it for the next run
            shutil.rmtree(temp)
        os.close(claimed)
    if kept and not quiet:
        print(f"unpack: kept {kept} files an interrupted unpack had completed (size and sha256 checked)",
              file=sys.stderr)
    return scan.manifest


def _swap_into_place(temp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.rename(target, old)
    os.rename(temp, target)
    fsync_directory(target.parent)  # the new tree is in place for good before the old one goes
    if old is not None:
        shutil.rmtree(old)


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

    unpack_parser = subparsers.add_parser("unpack", help="check an archive, then unpack it safely",
                                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    unpack_parser.add_argument("archive", type=Path, nargs="+", metavar="FILE",
                               help="archive made by `pack`: the file, its first part (NAME.tar.part000), "
                                    "or every part")
    unpack_parser.add_argument("--into", type=Path, required=True, metavar="DIR",
                               help="directory to create (or an earlier bundle to replace)")
    unpack_parser.add_argument("--bundle-id", metavar="SHA256", type=bundle_id_arg,
                               help="the id `build` printed (given out of band): refuse any other bundle; "
                                    "an empty or malformed id is an error, not \"no id\"")
    add_signer_arguments(unpack_parser)
    add_base_argument(unpack_parser)
    unpack_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    unpack_parser.set_defaults(func=run_unpack)


def add_base_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, metavar="DIR",
                        help="for a delta archive (`build --base`): the site's current bundle directory; the "
                             "files the archive leaves out are hard-linked (else copied) from it and checked, "
                             "and it is left as it is")


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


def run_unpack(args: argparse.Namespace, out: TextIO) -> int:
    policy = site_policy(args)
    manifest = unpack(resolve_archive(args.archive), args.into, args.bundle_id, args.quiet, args.base, policy)
    signed = f", signature allowed by {policy.allowed_signers}" if policy else ""
    print(f"unpack: {args.into}: {len(manifest.files)} files, {human(manifest.total_size())}, every member "
          f"checked and every sha256 matched (stack {manifest.stack_names}, bundle id {manifest.bundle_id}{signed})",
          file=out)
    return 0
