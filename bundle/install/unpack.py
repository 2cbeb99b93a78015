"""`unpack FILE --into DIR`: the archive `pack` wrote (bundle/build/pack.py), checked, then unpacked safely.

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
import os
import secrets
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Optional, TextIO, Union

from bundle.format import delta, resume, tarscan
from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.filecopy import file_mode
from bundle.format.manifest import (MANIFEST_NAME, BundleError, FileEntry, Manifest, UsageError, bundle_id_arg,
                                    fsync_directory)
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.overlap import inside
from bundle.format.parts import ArchiveFiles, resolve_archive
from bundle.format.progress import Progress, bars_wanted, human
from bundle.format.signature import SignerPolicy, add_signer_arguments, site_policy

GZIP_SUFFIXES = (".tar.gz", ".tgz")


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


def run_unpack(args: argparse.Namespace, out: TextIO) -> int:
    policy = site_policy(args)
    manifest = unpack(resolve_archive(args.archive), args.into, args.bundle_id, args.quiet, args.base, policy)
    signed = f", signature allowed by {policy.allowed_signers}" if policy else ""
    print(f"unpack: {args.into}: {len(manifest.files)} files, {human(manifest.total_size())}, every member "
          f"checked and every sha256 matched (stack {manifest.stack_names}, bundle id {manifest.bundle_id}{signed})",
          file=out)
    return 0
