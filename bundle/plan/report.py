"""One stack's plan, as `bundle plan` prints it: models, placement, VRAM budgets, the bundle's
contents and what an unpacked bundle lacks. Shared by the single-stack plan (bundle/plan/command.py)
and the site-wide one (bundle/plan/stacks.py).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Optional, Sequence, TextIO

from bundle.contents.items import bundle_items, packages_bundle_dir
from bundle.format.image_dir import image_dir_of
from bundle.format.manifest import BundleError, StackManifest
from bundle.format.progress import human
from stackspec.catalog import image_version_note, pinned_catalog
from stackspec.config import StackConfig
from stackspec.engine_packages import family_packages, model_packages, stack_packages
from stackspec.launch import container_env, endpoint_url, launch_specs
from stackspec.placement import GpuBudget, docker_gpu_request
from stackspec.rules import ModelDirs, server_budgets, vram_warnings

EXIT_USAGE = 2


def named_stack_file(stack: str, stacks_dir: Path, bundle: Optional[Path]) -> Path:
    """The project's stack file; the bundle's copy when the project has none (on site, before install)."""
    own = stacks_dir / f"Pulumi.{stack}.yaml"
    carried = bundle / "stack" / own.name if bundle else None
    return carried if carried is not None and not own.exists() and carried.is_file() else own


def write_report(cfg: StackConfig, stack: str, path: Path, manifest: Optional[StackManifest], out: TextIO,
               model_dirs: Optional[ModelDirs] = None, bundle: Optional[Path] = None) -> None:
    """``model_dirs``: where the models' files are here, for the VRAM estimates (see stackspec.rules.server_budgets);
    ``bundle``: the unpacked bundle, whose packages.json gives each model's engine wheels and their size."""
    p = lambda *a: print(*a, file=out)  # noqa: E731 - local shorthand
    p(f"Stack {stack} ({path}): {cfg.mode} mode, endpoint {endpoint_url(cfg)}")
    if cfg.mode != "existing" and cfg.image:
        p(f"Image     {cfg.image.name}  from {cfg.image.tar or '(already loaded on the host)'}")
        note = image_version_note(pinned_catalog(), cfg.image.name)
        if note:
            p(f"  WARNING {note}")
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
    budgets = server_budgets(cfg, model_dirs)
    if budgets:
        p("")
        p("GPU VRAM per GPU (GB: the share a vLLM/SGLang engine reserves, else a model's declared vram_gb, else "
          "estimated from its files; unknown counts 0)")
        print_table(vram_rows(budgets, cluster), out)
        for note in vram_warnings(cfg, model_dirs):
            p(f"  WARNING {note}")
    write_packages(cfg, stack, bundle, out)
    p("")
    p("Offline bundle must carry" + (" (checked against the bundle)" if manifest else ""))
    gaps = set(bundle_gaps(cfg, stack, manifest)) if manifest else set()
    for item in bundle_items(cfg, stack):
        status = "" if manifest is None else ("  MISSING" if item.path in gaps else "  ok")
        p(f"  {item.path:<44} {item.what}{status}")


def write_packages(cfg: StackConfig, stack: str, bundle: Optional[Path], out: TextIO) -> None:
    """Per model: the packages its virtualenv installs, what the image keeps, and (from a built bundle)
    the wheels carried for it and their size."""
    if cfg.mode == "existing" or not cfg.enabled_models:
        return
    catalog = pinned_catalog()
    every = [(m, model_packages(m, catalog)) for m in cfg.enabled_models]
    p = lambda *a: print(*a, file=out)  # noqa: E731 - local shorthand
    p("")
    image = f" on image {cfg.image.name}" if cfg.image else ""
    p(f"Engine packages{image} (each model's virtualenv installs them at launch, offline, from the carried wheels)")
    if not stack_packages(cfg, catalog):
        p("  none: no model's virtualenv installs anything (virtualenvs stay off: XINFERENCE_ENABLE_VIRTUAL_ENV=0)")
        return
    try:
        built = {r["model"]: r for r in bundle_packages(bundle) if r["stack"] == stack} if bundle else {}
    except BundleError as exc:
        p(f"  WARNING {exc}")
        built = {}
    width = max(len(m.uid) for m, _ in every) + 2
    indent = " " * (width + 2)
    for model, packages in every:
        record = built.get(model.uid)
        if not packages.wanted:
            why = (" (no engine named; its family's packages are per engine)"
                   if family_packages(model, catalog) and not model.engine else "")
            lines = [f"installs nothing{why}"]
        else:
            defaulted = [f"engine: {packages.engine} (none named: Xinference's default for {model.type}, named at "
                         "launch so the worker installs it)"] if packages.engine and not model.engine else []
            lines = [f"carry ({len(packages.requirements)}): " + " ".join(packages.requirements), *defaulted,
                     "left to the image: " + (" ".join(packages.from_image) or "-"),
                     f"wheels: {len(record['wheels'])}{stand_ins_note(record)}, {human(record['size'])} for Python "
                     f"{record['image_python']} {record['image_platform']}" if record else
                     "wheels: resolved by `bundle build` for the image's Python"]
        for n, line in enumerate(lines):
            wrapped = textwrap.wrap(line, 110 - len(indent), subsequent_indent="  ") or [""]
            p((f"  {model.uid:<{width}}" if n == 0 else indent) + wrapped[0])
            for more in wrapped[1:]:
                p(indent + more)
    if built:
        sizes = {name: size for r in built.values() for name, size in zip(r["wheels"], r["sizes"], strict=True)}
        p(f"  = {len(sizes)} distinct wheels in {packages_bundle_dir()}wheels/, {human(sum(sizes.values()))}")


def stand_ins_note(record: dict) -> str:
    """How many of a model's carried wheels stand in for the image's own distributions (metadata only)."""
    count = len(record.get("image_stand_ins", ()))
    return f" ({count} of them the image's own, metadata only)" if count else ""


def bundle_packages(bundle: Path) -> list[dict]:
    """The records of a built bundle's packages.json (none when it has no such file)."""
    try:
        return json.loads((bundle / packages_bundle_dir() / "packages.json").read_text())["models"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle / packages_bundle_dir() / 'packages.json'}: not the packages.json bundle build "
                          f"writes ({exc}); rebuild the bundle") from exc


def bundle_gaps(cfg: StackConfig, stack: str, manifest: Optional[StackManifest]) -> list[str]:
    """Bundle items the manifest does not hold (a directory counts when it holds a file)."""
    if manifest is None:
        return []
    paths = [f.path for f in manifest.files]
    gaps = []
    for item in bundle_items(cfg, stack):
        if item.path.endswith("/"):
            present = any(p.startswith(item.path) for p in paths)
        elif item.role == "image":  # the tar, or its members as files (bundle/format/image_dir.py)
            present = item.path in paths or f"{image_dir_of(item.path)}/manifest.json" in paths
        else:
            present = item.path in paths
        if not present:
            gaps.append(item.path)
    return gaps


def vram_rows(budgets: list[tuple[str, GpuBudget]], cluster: bool) -> list[tuple[str, ...]]:
    """Per GPU: a row per model (its GB and how it was had), then the GPU's total against its capacity."""
    rows = [(*(("SERVER",) if cluster else ()), "GPU", "MODEL", "GB", "HOW")]
    for where, b in budgets:
        server = (where,) if cluster else ()
        for uid, est in b.entries:
            figure = b.figure_gb(est)
            shown = f"{figure:g}" if figure is not None else f"{est.share:g} of GPU" if est.share is not None else "?"
            need = f"; needs {est.need.gb:g} ({est.need.how})" if est.need is not None and est.need.gb is not None else ""
            rows.append((*server, str(b.gpu), uid, shown, est.how + need))
        capacity = f"{b.capacity_gb:g}" if b.capacity_gb is not None else "? (no vram_gb for this GPU)"
        verdict = "  OVER" if b.over else "  TIGHT (estimates over it, within their margin)" if b.tight else (
            "" if b.capacity_gb is None else f", {b.capacity_gb - b.used_gb:.1f} free")
        unknown = f", {len(b.unknown)} unknown not counted" if b.unknown else ""
        rows.append((*server, str(b.gpu), "= total", f"{b.used_gb:g}", f"of {capacity}{verdict}{unknown}"))
    return rows


def ids_text(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids)) if ids else "cpu"


def print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
