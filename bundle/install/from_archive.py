"""What `install` installs from: an unpacked bundle directory, or the archive itself (one command on the site).

`python3 -m bundle install gpu-node-1.tar --bundle-id ID --stack gpu-node-1 ...` unpacks the
archive (or its parts) into ``--into`` (default: ``bundle/`` beside the archive) exactly as
`unpack` does: every member checked and hashed while it is extracted, so the archive is read
once and the unpacked tree needs no second verify pass. Then install goes on from that
directory. Run again after a kill, it keeps what the first run completed (bundle/install/unpack.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence, TextIO

from bundle.install.unpack import add_base_argument, unpack
from bundle.format.manifest import UsageError
from bundle.format import tarscan
from bundle.format.parts import resolve_archive
from bundle.format.progress import human
from bundle.format.signature import SignerPolicy

DEFAULT_INTO = "bundle"


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, nargs="+", metavar="DIR|ARCHIVE",
                        help="unpacked (and verified) bundle directory, or the archive `pack` wrote (the file, "
                             "its first part NAME.tar.part000, or every part): it is unpacked first")
    parser.add_argument("--into", type=Path, metavar="DIR",
                        help=f"with an archive: the bundle directory to unpack into (default: {DEFAULT_INTO}/ "
                             f"beside the archive, {DEFAULT_INTO}-ID12/ with --base; an earlier bundle there is "
                             "replaced once this one is complete)")
    add_base_argument(parser)


def bundle_directory(args: argparse.Namespace, out: TextIO, policy: Optional[SignerPolicy] = None) -> Path:
    """The bundle directory to install from, unpacking the archive first when one was given."""
    given: Sequence[Path] = args.bundle
    if len(given) == 1 and given[0].is_dir():
        for option, value in (("--into", args.into), ("--base", args.base)):
            if value is not None:
                raise UsageError(f"{option} {value}: only with an archive; {given[0]} is already a bundle directory")
        return given[0].absolute()
    files = resolve_archive(given)
    into = (args.into or files.first.parent / DEFAULT_INTO).absolute()
    if args.base is not None and args.into is None:  # an update goes beside the base, which stays for a rollback
        into = (files.first.parent / f"{DEFAULT_INTO}-{tarscan.archive_manifest(files, policy=policy).bundle_id[:12]}"
                ).absolute()
    manifest = unpack(files, into, args.bundle_id, args.quiet, args.base, policy)
    parts = f" ({len(files.paths)} parts)" if files.split else ""
    print(f"unpack: {files.first.parent / files.name}{parts} -> {into}: {len(manifest.files)} files, "
          f"{human(manifest.total_size())}, every sha256 matched (bundle id {manifest.bundle_id})", file=out)
    out.flush()
    return into
