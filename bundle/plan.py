"""`python -m bundle plan`: validate a stack and print what will run where, before going to site.

Needs no Pulumi CLI and no network: it reads the stack file, applies the same validation as
the program, and prints the model placement, the VRAM budget per GPU and the bundle contents
(checked against an unpacked bundle with --bundle).

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
from typing import Optional, Sequence, TextIO

from bundle.contents import bundle_items, carried_stack
from bundle.manifest import BundleError, StackManifest, load_manifest
from spec.config import StackConfig
from spec.source import stack_name_of
from spec.errors import ConfigError
from spec.launch import container_env, endpoint_url, launch_specs
from spec.placement import docker_gpu_request
from spec.rules import server_budgets

EXIT_USAGE = 2


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


def named_stack_file(stack: str, stacks_dir: Path, bundle: Optional[Path]) -> Path:
    """The project's stack file; the bundle's copy when the project has none (on site, before install)."""
    own = stacks_dir / f"Pulumi.{stack}.yaml"
    carried = bundle / "stack" / own.name if bundle else None
    return carried if carried is not None and not own.exists() and carried.is_file() else own


def run(args: argparse.Namespace, out: TextIO) -> int:
    if not (args.stack or args.config):
        if args.bundle:
            from bundle.site_plan import plan_bundle_site

            return plan_bundle_site(args.bundle, args.stacks_dir, out)
        print("error: name a stack (--stack NAME or --config FILE), or give --bundle DIR alone to plan every "
              "stack that bundle carries", file=sys.stderr)
        return EXIT_USAGE
    stack, path = stack_file(args)
    try:
        cfg = carried_stack(path)
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
    write_plan(cfg, stack, path, manifest, out)
    from bundle.site import sibling_clashes  # as the program's preview warns

    for clash in sibling_clashes(stack, cfg, path.parent):
        print(f"warning: {clash}", file=sys.stderr)
    missing = bundle_gaps(cfg, stack, manifest) if manifest else []
    return 1 if missing else 0


def write_plan(cfg: StackConfig, stack: str, path: Path, manifest: Optional[StackManifest], out: TextIO) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731 - local shorthand
    p(f"Stack {stack} ({path}): {cfg.mode} mode, endpoint {endpoint_url(cfg)}")
    if cfg.mode != "existing" and cfg.image:
        p(f"Image     {cfg.image.name}  from {cfg.image.tar or '(already loaded on the host)'}")
        c = cfg.container
        if cfg.mode == "docker":
            p(f"Container {c.name} on {cfg.docker.host}: port {c.port}->9997, "
              f"GPUs {docker_gpu_request(cfg.gpu_ids) or 'none'}, restart {c.restart}, shm {c.shm_size_mb} MB, "
              f"models {cfg.models_dir} -> /root/.xinference/models")
        else:
            for server in cfg.servers:
                role = "supervisor + worker" if server.supervisor else "worker"
                p(f"Server    {server.name} ({server.address}, {role}) on {server.docker.host}: "
                  f"GPUs {docker_gpu_request(server.gpu_ids) or 'none'}, models {server.models_dir or cfg.models_dir}")
        env = container_env(cfg)
        p("Env       " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    specs = launch_specs(cfg, manifest.model_digests() if manifest else {})
    disabled = [m.uid for m in cfg.models if not m.enabled]
    p("")
    p(f"Models: {len(specs)} enabled" + (f", disabled (terminated if running): {', '.join(disabled)}" if disabled else ""))
    cluster = cfg.mode == "cluster"
    server_col = ("SERVER (WORKER_IP)",) if cluster else ()
    rows = [("UID", "TYPE", *server_col, "HOST GPU", "GPU_IDX", "VRAM GB", "MODEL PATH (as Xinference sees it)")]
    for s in specs:
        server = (f"{s.server} ({s.worker_ip})",) if cluster else ()
        rows.append((s.model_uid, s.model_type, *server, ids_text(s.host_gpus), ids_text(s.gpu_idx),
                     f"{s.vram_gb:g}" if s.vram_gb is not None else "-", s.model_path))
    print_table(rows, out)
    budgets = server_budgets(cfg)
    if budgets:
        p("")
        p("GPU budget (declared vram_gb per GPU)")
        rows = [(*(("SERVER",) if cluster else ()), "GPU", "CAPACITY GB", "DECLARED GB", "FREE GB", "MODELS")]
        for where, b in budgets:
            free = f"{b.capacity_gb - b.used_gb:g}" if b.capacity_gb is not None else "?"
            models = ", ".join(b.models) + (f" (undeclared: {', '.join(b.undeclared)})" if b.undeclared else "")
            rows.append((*((where,) if cluster else ()), str(b.gpu),
                         f"{b.capacity_gb:g}" if b.capacity_gb is not None else "?", f"{b.used_gb:g}", free,
                         models or "-"))
        print_table(rows, out)
    p("")
    p("Offline bundle must carry" + (" (checked against the bundle)" if manifest else ""))
    gaps = set(bundle_gaps(cfg, stack, manifest)) if manifest else set()
    for item in bundle_items(cfg, stack):
        status = "" if manifest is None else ("  MISSING" if item.path in gaps else "  ok")
        p(f"  {item.path:<44} {item.what}{status}")


def bundle_gaps(cfg: StackConfig, stack: str, manifest: Optional[StackManifest]) -> list[str]:
    """Bundle items the manifest does not hold (a directory counts when it holds a file)."""
    if manifest is None:
        return []
    paths = [f.path for f in manifest.files]
    gaps = []
    for item in bundle_items(cfg, stack):
        if item.path.endswith("/"):
            present = any(p.startswith(item.path) for p in paths)
        else:
            present = item.path in paths
        if not present:
            gaps.append(item.path)
    return gaps


def ids_text(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids)) if ids else "cpu"


def print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
