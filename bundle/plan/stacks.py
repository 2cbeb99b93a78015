"""`python -m bundle plan --bundle DIR` with no stack: the plan of every stack a site's bundle carries.

On site, before anything is installed: each stack's plan checked against the bundle, one
line per stack, and what two stacks would both take on one remote docker host. Exit 2 when
a stack file is invalid or two stacks clash (config errors, all reported), 1 when the
bundle lacks something a stack needs, else 0.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from bundle.format.manifest import BundleError, load_manifest
from bundle.format.progress import plural
from bundle.contents.stacks import LoadedStack, stack_clashes
from bundle.plan.report import EXIT_USAGE, bundle_gaps, ids_text, named_stack_file, print_table, write_report
from stackspec.config import StackConfig
from stackspec.errors import ConfigError
from stackspec.launch import endpoint_url
from stackspec.stack_file import from_stack_file

EXIT_FAILED = 1


def gpu_summary(cfg: StackConfig) -> str:
    """The host GPUs a stack reserves: '0,1' on one server, 'a:0,1 b:2' across a cluster."""
    if cfg.mode == "cluster":
        return " ".join(f"{s.name}:{ids_text(s.gpu_ids)}" for s in cfg.servers) or "-"
    if cfg.mode == "existing":
        return "-"
    return ids_text(cfg.gpu_ids)


def report_bundle_stacks(bundle: Path, stacks_dir: Path, out: TextIO) -> int:
    try:
        whole = load_manifest(bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code = 0
    sources: list[LoadedStack] = []
    rows = [("STACK", "MODE", "ENDPOINT", "HOST GPUS", "MODELS", "STACK FILE", "BUNDLE")]
    for name in sorted(whole.stacks):
        path = named_stack_file(name, stacks_dir, bundle)
        try:
            cfg = from_stack_file(path)
        except ConfigError as exc:
            print(exc.report(), file=sys.stderr)
            code = EXIT_USAGE
            rows.append((name, "-", "-", "-", "-", str(path), "config error (printed above)"))
            continue
        manifest = whole.for_stack(name)
        write_report(cfg, name, path, manifest, out)
        print("", file=out)
        gaps = bundle_gaps(cfg, name, manifest)
        if gaps:
            code = code or EXIT_FAILED
        sources.append(LoadedStack(name, cfg, path))
        rows.append((name, cfg.mode, endpoint_url(cfg), gpu_summary(cfg), str(len(cfg.enabled_models)), str(path),
                     f"{len(gaps)} MISSING" if gaps else "ok"))
    print(f"Site: {bundle} carries {plural(len(whole.stacks), 'stack')} (bundle id {whole.bundle_id})", file=out)
    print_table(rows, out)
    clashes = stack_clashes(sources)
    if clashes:
        print(f"error: {len(clashes)} clash{'es' if len(clashes) != 1 else ''} between the stacks on a shared "
              "docker host (the later `pulumi up` would fail on the name or port, or share the GPU):", file=sys.stderr)
        for clash in clashes:
            print(f"  {clash}", file=sys.stderr)
        code = EXIT_USAGE
    return code
