"""`python -m bundle plan`: validate a stack and print what will run where, before going to site.

Needs no Pulumi CLI and no network: it reads the stack file, applies the same validation as
the program, and prints the model placement, the VRAM budget per GPU and the bundle contents
(checked against an unpacked bundle with --bundle; then a summary of the bundle's SBOM, sbom.cdx.json:
counts per kind of component, and each model with its hub, id and revision, an unpinned one said so).

With --bundle and no stack, it plans every stack the bundle carries (one per server of a
site), then prints one line per stack and what two stacks would both take on one remote
docker host. A stack's file is stacks/Pulumi.NAME.yaml when the project has it, else the
bundle's own copy (stack/Pulumi.NAME.yaml), so it runs on site before `install`.

A single stack's plan (like its `pulumi preview`) warns when another stack file beside it
takes the same container name, port or GPU on the same remote docker host; the site-wide
plan and `build` refuse that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, TextIO

from bundle.contents.items import carried_stack, model_bundle_dir
from bundle.format.manifest import BundleError, StackManifest, load_manifest
from bundle.plan.sbom_summary import bundle_sbom_summary
from bundle.contents.stacks import sibling_clashes
from bundle.plan.stacks import report_bundle_stacks
from bundle.plan.report import EXIT_USAGE, bundle_gaps, named_stack_file, write_report
from stackspec.errors import ConfigError
from stackspec.stack_file import stack_name_of


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="validate a stack and print what will run where",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--stack", help="stack name: reads stacks/Pulumi.NAME.yaml")
    source.add_argument("--config", type=Path, help="any stack file")
    parser.add_argument("--stacks-dir", type=Path, default=Path("stacks"), help="default: ./stacks")
    parser.add_argument("--bundle", type=Path,
                        help="unpacked bundle to check against the plan; alone: plan every stack it carries")
    parser.set_defaults(func=run)


def stack_file(args: argparse.Namespace) -> tuple[str, Path]:
    if args.config:
        return stack_name_of(args.config), args.config
    return args.stack, named_stack_file(args.stack, args.stacks_dir, args.bundle)


def run(args: argparse.Namespace, out: TextIO) -> int:
    if not (args.stack or args.config):
        if args.bundle:
            code = report_bundle_stacks(args.bundle, args.stacks_dir, out)
            print("\n".join(bundle_sbom_summary(args.bundle)), file=out)
            return code
        print("error: name a stack (--stack NAME or --config FILE), or give --bundle DIR alone to plan every "
              "stack that bundle carries", file=sys.stderr)
        return EXIT_USAGE
    stack, path = stack_file(args)
    # With a bundle, the VRAM estimates read the models it carries; else the stack's models_dir.
    model_dirs = (lambda m: args.bundle / model_bundle_dir(m.path or m.uid)) if args.bundle else None
    try:
        cfg = carried_stack(path, model_dirs)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_USAGE
    manifest: Optional[StackManifest] = None
    if args.bundle:
        try:
            manifest = load_manifest(args.bundle).for_stack(stack)
        except BundleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    write_report(cfg, stack, path, manifest, out, model_dirs, args.bundle)
    if args.bundle:
        print("\n".join(bundle_sbom_summary(args.bundle)), file=out)
    # as the program's preview warns
    for clash in sibling_clashes(stack, cfg, path.parent):
        print(f"warning: {clash}", file=sys.stderr)
    missing = bundle_gaps(cfg, stack, manifest) if manifest else []
    return 1 if missing else 0
