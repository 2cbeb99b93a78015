"""`python -m bundle build --stack NAME [--stack NAME2 ...] --out DIR`: gather on the online machine
everything the offline servers need for those stacks, in exactly the layout `bundle plan` lists.

One bundle may serve several stacks (one per server of a site: one archive to carry): what
they share (wheels, Pulumi, the program, a model or an image several of them use) is carried
once. Two stacks that give one model directory different sources are refused.

  images/<image>/       the members of the image's `docker save` tar, each a bundle file (each
                        layer its own sha256, so a delta carries only new layers; --image-form tar
                        keeps the one tar, images/<image>.tar): --image-tar FILE, else the stack's
                        image.tar when that file exists here, else `docker save` of image.name;
                        the tar must hold image.name
  models/<path>/        each enabled model (and companion): from ModelScope or Hugging Face at
                        the pinned revision (their Python libraries; `pip install modelscope` /
                        `huggingface_hub` on this machine), or a local directory (source.hub:
                        local, or no source: the model's directory under models_dir here)
  models/_engine_packages/  the wheels of the models' virtualenvs (stackspec/engine_packages.py), resolved
                        for the image's Python as read from its tar (bundle/build/engine_wheels.py), with
                        packages.json (per model: what it asks, what the image keeps, its wheels)
                        and the pip.conf that makes them the container's only package index
  wheels/               `pip download --require-hashes` of requirements.lock (binary wheels only,
                        so the offline install needs no compiler), or the files of --wheels-from
                        DIR that resolve it; requirements.txt there pins each carried file's hash
  pulumi/bin, plugins/  --pulumi-dir (what tools/pulumi_toolchain.py built), else the release
                        archives of the pinned versions from get.pulumi.com (or --pulumi-url)
  program/              this project's files (--project, default: this checkout): git's tracked and
                        untracked-not-ignored files, never .state/, stacks/, venv/ or the output
  stack/Pulumi.NAME.yaml  per stack
  sbom.cdx.json         a CycloneDX 1.6 SBOM of all the above (bundle/build/sbom.py): the image with its Debian
                        and Python packages, the wheels, Pulumi, each model with its source, revision
                        and files, this program; hashed in the manifest like every file
  MANIFEST.json         written last and atomically; removed first when rebuilding, so an
                        interrupted build never looks like a valid bundle. A rebuild that
                        changes nothing keeps the bundle id.

Incremental: a file whose size and mtime match its source is reused without being read
again (its sha256 comes from a hash cache beside DIR, keyed by size, mtime and inode);
only what changed or is missing is copied or downloaded, and files no longer wanted are
removed. --full copies and hashes everything again. Hub downloads and pip's wheels are
kept in the cache directory (default: .DIR.build-cache beside DIR) and hard-linked into
the bundle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from bundle.build.builder import PROJECT_ROOT, Builder, BuildOptions, ItemReport
from bundle.build.pulumi_release import PULUMI_RELEASES
from bundle.contents.items import carried_stack
from bundle.contents.stacks import LoadedStack
from bundle.format.delta import carried as carried_files
from bundle.format.delta import read_base
from bundle.format.manifest import Manifest
from bundle.format.progress import human, plural
from stackspec.errors import ConfigError



def summary(manifest: Manifest, reports: list[ItemReport], out: Path) -> str:
    rows = [("ITEM", "FILES", "SIZE", "FETCHED NOW")]
    for r in reports:
        fetched = "reused" if r.fetched_files == 0 else f"{plural(r.fetched_files, 'file')}, {human(r.fetched_size)}"
        rows.append((r.path, str(r.files), human(r.size), fetched))
    total_fetched = sum(r.fetched_files for r in reports)
    rows.append(("total", str(len(manifest.files)), human(manifest.total_size()),
                 f"{plural(total_fetched, 'file')}, {human(sum(r.fetched_size for r in reports))}"
                 f" ({len(manifest.files) - total_fetched} reused)"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    noun = "stack" if len(manifest.stacks) == 1 else "stacks"
    lines = [f"Bundle {out} for {noun} {manifest.stack_names}"]
    lines += ["  " + "  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in
                                enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    lines.append(f"bundle id {manifest.bundle_id}  (give it to the offline site: verify/unpack --bundle-id)")
    if manifest.base is not None:
        carried = carried_files(manifest)
        lines.append(f"delta on bundle {manifest.base.bundle_id}: `pack` carries {plural(len(carried), 'file')}, "
                     f"{human(sum(f.size for f in carried))} (the site unpacks it with --base DIR)")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("build", help="gather the offline bundle of one or more stacks (online machine)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, action="append", metavar="NAME",
                        help="reads STACKS_DIR/Pulumi.NAME.yaml; repeat it for one bundle serving several stacks "
                             "(e.g. one per server of a site)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="bundle directory (created or refreshed)")
    parser.add_argument("--stacks-dir", type=Path, default=Path("stacks"), help="default: ./stacks")
    parser.add_argument("--project", type=Path, default=PROJECT_ROOT, metavar="DIR",
                        help="project checkout carried as program/ (default: this one, the directory holding "
                             "Pulumi.yaml)")
    parser.add_argument("--image-tar", type=Path, metavar="FILE", help="an existing `docker save` tar of image.name")
    parser.add_argument("--pulumi-dir", type=Path, metavar="DIR",
                        help="built Pulumi CLI + plugins (the bin dir tools/pulumi_toolchain.py prints)")
    parser.add_argument("--pulumi-url", default=PULUMI_RELEASES, metavar="URL",
                        help=f"release mirror used without --pulumi-dir (default {PULUMI_RELEASES})")
    parser.add_argument("--pulumi-checksums", type=Path, metavar="FILE",
                        help="sha256sum lines for the release archives (default: the release's published "
                             "checksums files)")
    parser.add_argument("--wheels-from", type=Path, metavar="DIR", help="pre-downloaded wheels instead of pip download")
    parser.add_argument("--requirements", type=Path, metavar="FILE",
                        help="default: the project's requirements.lock (requirements.txt where there is no lock)")
    parser.add_argument("--python-version", metavar="X.Y", help="the offline server's Python, when not this one's")
    parser.add_argument("--platform", action="append", default=[], metavar="TAG",
                        help="wheel platform of the offline server (pip's --platform, repeatable), "
                             "e.g. manylinux2014_x86_64")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="downloads and hash cache "
                        "(default: .DIR.build-cache beside --out)")
    parser.add_argument("--hub-offline", action="store_true",
                        help="no downloads: use only what the cache already holds")
    parser.add_argument("--full", action="store_true", help="copy and hash every file again (trust nothing in DIR)")
    parser.add_argument("--base", type=Path, metavar="OLD",
                        help="a delta on the site's current bundle (its MANIFEST.json, directory or archive): the "
                             "manifest still lists every file, `pack` carries only those OLD lacks")
    parser.add_argument("--image-form", choices=("layers", "tar"), default="layers",
                        help="layers (default): each member of the image's `docker save` tar is a bundle file, so "
                             "a delta carries only the layers its base lacks; tar: the one tar, as bundles before")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or step messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    if args.python_version and not all(p.isdigit() for p in args.python_version.split(".")):
        print(f"error: --python-version {args.python_version!r}: write it as 3.11", file=sys.stderr)
        return 2
    stacks, failed = [], False
    for name in dict.fromkeys(args.stack):  # each once, in the order given
        stack_path = args.stacks_dir / f"Pulumi.{name}.yaml"
        try:
            stacks.append(LoadedStack(name, carried_stack(stack_path), stack_path))
        except ConfigError as exc:
            print(exc.report(), file=sys.stderr)
            failed = True
    if failed:
        return 2
    options = BuildOptions(out=args.out, project=args.project.absolute(), image_tar=args.image_tar,
                           pulumi_dir=args.pulumi_dir, pulumi_url=args.pulumi_url,
                           pulumi_checksums=args.pulumi_checksums, wheels_from=args.wheels_from,
                           requirements=args.requirements, python_version=args.python_version,
                           platforms=args.platform, cache_dir=args.cache_dir, hub_offline=args.hub_offline,
                           full=args.full, quiet=args.quiet, base=read_base(args.base) if args.base else None,
                           image_form=args.image_form)
    builder = Builder(stacks, options, out)
    manifest = builder.build()
    print(summary(manifest, builder.reports, args.out), file=out)
    return 0
