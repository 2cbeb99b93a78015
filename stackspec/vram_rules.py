"""VRAM per GPU, the rules: each GPU's budget from its models' figures (stackspec/vram.py), what refuses a
stack (reserved shares over the whole GPU, declared figures over its memory, estimates far over it)
and what is only said (estimates a little over it)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from stackspec.config import ModelConfig, StackConfig
from stackspec.errors import Problem
from stackspec.launch import models_dir_of
from stackspec.placement import COMPUTED_MARGIN, EPSILON, GpuBudget, vram_budgets
from stackspec.vram import VramEstimate, estimate_vram, local_model_dir, read_model_files

ModelDirs = Callable[[ModelConfig], Optional[Path]]  # a model -> its directory on this machine (None: not here)

VRAM_FIX = ("move a model to another GPU, disable one, shorten an LLM's context (extra.context_length or "
            "max_model_len), or declare the model's real vram_gb (a declared figure wins)")
SHARE_FIX = ("give each reserving engine its share (extra.gpu_memory_utilization for vllm, "
             "extra.mem_fraction_static for sglang) so the shares and the other models fit, or move one to another GPU")


def vram_problems(cfg: StackConfig, model_dirs: Optional[ModelDirs] = None) -> Iterable[Problem]:
    """Each GPU its models refuse (see GpuBudget for what refuses and what is only said)."""
    for where, budget in server_budgets(cfg, model_dirs):
        field = f"{'servers[' + where + '].' if where else ''}gpus[id={budget.gpu}]"
        on = f" of {where}" if where else ""
        if budget.reserved_share > 1 + EPSILON:
            shares = "; ".join(f"{uid}: {e.how}" for uid, e in budget.entries if e.share is not None)
            yield Problem(field, budget.reserved_share,
                          f"GPU {budget.gpu}{on} is reserved {budget.reserved_share:g} times over: {shares}; an engine "
                          "that reserves a share of the whole GPU when it starts refuses to start where the others' "
                          "shares leave it too little", SHARE_FIX)
        elif budget.over and budget.capacity_gb is not None:
            estimated = budget.certain_gb <= budget.capacity_gb + EPSILON
            margin = f" (estimates, refused above {COMPUTED_MARGIN:.0%} over)" if estimated else ""
            yield Problem(f"{field}.vram_gb", budget.capacity_gb,
                          f"GPU {budget.gpu}{on} needs {budget.used_gb:g} GB, over its {budget.capacity_gb:g} GB"
                          f"{margin}: {_figures(budget)}", VRAM_FIX)
        for uid, need, need_gb, share_gb in budget.short_of_share():
            if need.kind == "declared" or need_gb > share_gb * (1 + COMPUTED_MARGIN) + EPSILON:
                yield Problem(f"{field}.vram_gb", budget.capacity_gb,
                              f"{uid} needs {need_gb:g} GB ({need.how}) but its engine reserves only {share_gb:g} GB "
                              f"of GPU {budget.gpu}{on}", SHARE_FIX)


def vram_warnings(cfg: StackConfig, model_dirs: Optional[ModelDirs] = None) -> list[str]:
    """What is over a GPU's memory only by estimates within COMPUTED_MARGIN: said, not refused."""
    notes = []
    for where, budget in server_budgets(cfg, model_dirs):
        on = f" of {where}" if where else ""
        if budget.tight and budget.capacity_gb is not None:
            notes.append(f"GPU {budget.gpu}{on} may need {budget.used_gb:g} GB, over its {budget.capacity_gb:g} GB by "
                         f"estimates within the {COMPUTED_MARGIN:.0%} margin of their error: {_figures(budget)}; "
                         f"check it on the server (nvidia-smi) or declare each model's vram_gb")
        for uid, need, need_gb, share_gb in budget.short_of_share():
            if need.kind != "declared" and need_gb <= share_gb * (1 + COMPUTED_MARGIN) + EPSILON:
                notes.append(f"{uid} may need {need_gb:g} GB ({need.how}), more than the {share_gb:g} GB its engine "
                             f"reserves of GPU {budget.gpu}{on}; raise its share or shorten its context")
    return notes


def _figures(budget: GpuBudget) -> str:
    figures = "; ".join(f"{uid} {budget.figure_gb(e):g} GB ({e.how})" for uid, e in budget.entries
                        if budget.figure_gb(e) is not None)
    unknown = f"; not counted, no files here: {', '.join(budget.unknown)}" if budget.unknown else ""
    return figures + unknown


def server_budgets(cfg: StackConfig, model_dirs: Optional[ModelDirs] = None) -> list[tuple[str, GpuBudget]]:
    """(server name or "" for a one-server stack, budget) for every GPU.

    A model's figure is its vram_gb, else estimated from its files (stackspec/vram.py) where
    ``model_dirs`` says they are on this machine (default: under its models_dir when the docker
    engine is this machine's; a bundle's plan points at the bundle's models/).
    """
    def host_of(model: ModelConfig) -> Optional[str]:
        if cfg.mode == "cluster":
            server = cfg.server(model.server)
            return server.docker.host if server else None
        return cfg.docker.host if cfg.mode == "docker" else None

    def estimate(model: ModelConfig) -> VramEstimate:
        if model.vram_gb is not None or not model.gpus:
            return estimate_vram(model, None)
        directory = (model_dirs(model) if model_dirs is not None
                     else local_model_dir(model, models_dir_of(cfg, model), host_of(model)))
        return estimate_vram(model, read_model_files(directory) if directory is not None else None)

    if cfg.mode != "cluster":
        return [("", b) for b in vram_budgets([(g.id, g.vram_gb) for g in cfg.gpus],
                                              [(m.uid, m.gpus, estimate(m)) for m in cfg.enabled_models])]
    out = []
    for server in cfg.servers:
        placed = [(m.uid, m.gpus, estimate(m)) for m in cfg.enabled_models if m.server == server.name]
        out += [(server.name, b) for b in vram_budgets([(g.id, g.vram_gb) for g in server.gpus], placed)]
    return out
