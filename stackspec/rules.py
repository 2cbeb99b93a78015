"""Cross-field rules of the stack config: what no single field can check by itself.

Each rule reads the (possibly partial) StackConfig and returns Problems; ``cross_check``
runs them all so an operator sees every mistake at once. Rules skip sections that failed
their own validation (they are not in ``parsed_keys``), so one typo does not cascade.
"""

from __future__ import annotations

import difflib
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from stackspec.catalog import builtin_clash, catalog_problems, pinned_catalog
from stackspec.config import ModelConfig, StackConfig
from stackspec.custom_model import custom_problems
from stackspec.errors import Problem
from stackspec.launch import models_dir_of
from stackspec.ssh import parse_ssh_opts
from stackspec.vram_rules import ModelDirs, server_budgets, vram_problems, vram_warnings
from stackspec.xinference import (CONFIG_NAMESPACE, CONTAINER_MODELS_DIR, ENV_NAME_RE, MODEL_UID_FIX, endpoint_problem,
                             model_uid_problem)

# Launch kwargs that have a first-class field; passing them through `extra` would fight it.
_FIRST_CLASS_KWARGS = {
    "model_uid": "uid", "model_name": "name", "model_type": "type", "model_engine": "engine",
    "model_format": "format", "model_size_in_billions": "size_in_billions", "quantization": "quantization",
    "model_path": "path", "gpu_idx": "gpus", "n_gpu": "n_gpu", "replica": "replica", "worker_ip": "worker",
}
# FunASR models whose built-in config loads `vad_model: fsmn-vad` from the hub at launch:
# offline they need a local VAD directory passed as extra.vad_model.
_NEEDS_LOCAL_VAD = {"SenseVoiceSmall", "paraformer-zh", "paraformer-zh-long", "paraformer-zh-spk",
                    "paraformer-zh-hotword", "seaco-paraformer-zh", "Fun-ASR-Nano-2512", "Fun-ASR-MLT-Nano-2512"}

# Xinference 4.1 takes a CosyVoice model launched from an explicit model_path (every model a bundle carries)
# as custom: it loads only on a worker started with this set, since its config imports Python code
# (xinference/model/audio/core.py, cosyvoice.py _check_model_trust). Xinference reads 1, true or yes.
TRUST_REMOTE_CODE = "XINFERENCE_TRUST_REMOTE_CODE"
_TRUTHY = ("1", "true", "yes")


@dataclass(frozen=True)
class CheckContext:
    """What the rules need besides the config: which keys parsed, where each model stood."""

    parsed_keys: set[str]  # keys that passed their own validation
    given_keys: set[str] = field(default_factory=set)  # keys written in the stack file
    model_positions: list[int] = field(default_factory=list)  # index in the stack file of cfg.models[i]
    secret_keys: set[str] = field(default_factory=set)
    model_dirs: Optional[ModelDirs] = None  # where models' files are readable here, for the VRAM estimate

    def usable(self, key: str) -> bool:
        """True when the key holds a valid value or its default (not a value that failed)."""
        return key in self.parsed_keys or key not in self.given_keys

    def model_path(self, i: int) -> str:
        return f"models[{self.model_positions[i] if i < len(self.model_positions) else i}]"


def cross_check(cfg: StackConfig, ctx: CheckContext) -> list[Problem]:
    problems: list[Problem] = []
    for rule in _RULES:
        problems.extend(rule(cfg, ctx))
    return problems


def _mode_sections(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    keys = ctx.given_keys
    if cfg.mode in ("docker", "cluster"):
        if cfg.image is None and "image" not in keys:
            yield Problem("image", None, "docker mode needs the Xinference image",
                          "set image.name (and image.tar, the `docker save` tar from the bundle)")
    else:
        if not cfg.endpoint and "endpoint" not in keys:
            yield Problem("endpoint", None, "existing mode needs the URL of the running Xinference",
                          "set endpoint, e.g. http://10.0.0.5:9997")
        for key in ("image", "container", "docker"):
            if key in keys:
                yield Problem(key, "...", "has no effect in existing mode (no container is managed)",
                              "remove it, or set mode: docker")
    if cfg.mode != "cluster" and "servers" in keys:
        yield Problem("servers", "...", f"only used in cluster mode (mode is {cfg.mode})",
                      "set mode: cluster, or remove servers")


def _cluster(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    if cfg.mode != "cluster":
        for i, model in enumerate(cfg.models):
            if model.server is not None:
                yield Problem(f"{ctx.model_path(i)}.server", model.server, f"only used in cluster mode (mode is {cfg.mode})",
                              "remove server, or set mode: cluster")
        return
    for key in ("gpus", "docker"):
        if key in ctx.given_keys:
            yield Problem(key, "...", "in cluster mode each server has its own", f"move it under servers[].{key}")
    if not ctx.usable("servers"):
        return
    if not cfg.servers:
        yield Problem("servers", [], "cluster mode needs its servers", "list them: - {name, address, gpus, docker}")
        return
    supervisors = [s.name for s in cfg.servers if s.supervisor]
    if len(supervisors) != 1:
        yield Problem("servers", supervisors, f"{len(supervisors)} servers have supervisor: true; exactly one must",
                      "set supervisor: true on one server")
    for attr in ("name", "address"):
        for value, count in Counter(getattr(s, attr) for s in cfg.servers).items():
            if count > 1:
                yield Problem(f"servers[].{attr}", value, f"used by {count} servers", f"give each server its own {attr}")
    for j, server in enumerate(cfg.servers):
        for gpu, count in Counter(server.gpu_ids).items():
            if count > 1:
                yield Problem(f"servers[{j}].gpus", server.gpu_ids, f"GPU {gpu} is listed {count} times",
                              "list each host GPU once")
    names = [s.name for s in cfg.servers]
    for i, model in enumerate(cfg.models):
        if not model.enabled:
            continue
        if model.server is None:
            yield Problem(f"{ctx.model_path(i)}.server", None, "cluster mode places every model on a server",
                          f"set server: one of {names}")
        elif cfg.server(model.server) is None:
            close = difflib.get_close_matches(model.server, names, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            yield Problem(f"{ctx.model_path(i)}.server", model.server, "not a server of this cluster",
                          f"{hint}use one of {names}")


def _endpoint(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    problem = endpoint_problem(cfg.endpoint) if cfg.endpoint else None
    if problem:
        yield Problem("endpoint", cfg.endpoint, problem, "write it like http://10.0.0.5:9997")


def _gpus(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    for gpu, count in Counter(cfg.gpu_ids).items():
        if count > 1:
            yield Problem("gpus", cfg.gpu_ids, f"GPU {gpu} is listed {count} times", "list each host GPU once")


def _paths(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    if "models_dir" in ctx.parsed_keys and (not cfg.models_dir.startswith("/") or ".." in cfg.models_dir.split("/")):
        yield Problem("models_dir", cfg.models_dir, "must be an absolute path without `..`",
                      "write the host directory, e.g. /data/docker_models")
    if cfg.container.data_dir and not cfg.container.data_dir.startswith("/"):
        yield Problem("container.data_dir", cfg.container.data_dir, "must be an absolute host path",
                      "write e.g. /data/xinference-home")
    for name in cfg.container.env:
        if not ENV_NAME_RE.match(name):
            yield Problem(f"container.env.{name}", name, "not a valid environment variable name",
                          "use letters, digits and _ (not starting with a digit)")


def _uids(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    counts = Counter(m.uid for m in cfg.models)
    for i, model in enumerate(cfg.models):
        problem = model_uid_problem(model.uid)
        if problem:
            yield Problem(f"{ctx.model_path(i)}.uid", model.uid, problem, MODEL_UID_FIX)
        if counts[model.uid] > 1:
            yield Problem(f"{ctx.model_path(i)}.uid", model.uid, f"uid used by {counts[model.uid]} models",
                          "give each model its own uid (a uid can be launched once per server)")


def _model_fields(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    for i, model in enumerate(cfg.models):
        at = ctx.model_path(i)
        if not model.enabled:
            continue
        where, server_gpus, usable = "`gpus`", cfg.gpu_ids, ctx.usable("gpus")
        if cfg.mode == "cluster":
            server = cfg.server(model.server)
            usable = server is not None
            where, server_gpus = f"servers[{model.server}].gpus", server.gpu_ids if server else []
        if usable:
            for gpu in model.gpus:
                if gpu not in server_gpus:
                    fix = (f"use one of {server_gpus} or add GPU {gpu} to {where}" if server_gpus
                           else f"add GPU {gpu} to {where} or remove it from the model (CPU)")
                    yield Problem(f"{at}.gpus", model.gpus, f"GPU {gpu} is not a GPU of {model.server or 'this server'}",
                                  fix)
        if len(set(model.gpus)) != len(model.gpus):
            yield Problem(f"{at}.gpus", model.gpus, "a GPU is listed twice", "list each GPU once")
        if isinstance(model.n_gpu, int) and model.gpus and model.n_gpu != len(model.gpus):
            yield Problem(f"{at}.n_gpu", model.n_gpu, f"disagrees with gpus {model.gpus}",
                          "drop n_gpu (gpus decides) or make them agree")
        if model.path is None and model.source is None:
            yield Problem(f"{at}.path", None, "an enabled model needs its files",
                          "set path (directory under models_dir) or source (where `bundle build` gets them)")
        yield from _model_path(cfg, at, model.path, models_dir_of(cfg, model))
        if model.type == "LLM" and not model.engine:
            yield Problem(f"{at}.engine", None, "LLM models need an engine", "set engine: vllm, transformers or llama.cpp")
        for kwarg in sorted(set(model.extra) & set(_FIRST_CLASS_KWARGS)):
            yield Problem(f"{at}.extra.{kwarg}", model.extra[kwarg], "has its own field",
                          f"use `{_FIRST_CLASS_KWARGS[kwarg]}` instead of extra.{kwarg}")
        yield from _model_source(at, model)
        if model.model_name in _NEEDS_LOCAL_VAD and "vad_model" not in model.extra:
            yield Problem(f"{at}.extra.vad_model", None,
                          f"{model.model_name} loads its VAD model (fsmn-vad) from the hub at launch: fatal offline",
                          "add a companion {path: fsmn-vad, source: {hub: modelscope, id: "
                          "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch}} and extra.vad_model: "
                          "/root/.xinference/models/fsmn-vad")
        for j, companion in enumerate(model.companions):
            yield from _model_path(cfg, f"{at}.companions[{j}]", companion.path, models_dir_of(cfg, model))


def _model_path(cfg: StackConfig, at: str, path: Optional[str], models_dir: str) -> Iterable[Problem]:
    # `..`, control characters and other spellings were refused where the path entered
    # (config_values.canonical_model_dir); here only where it points.
    if path is None:
        return
    if path.startswith("/") and cfg.mode != "existing":
        inside = posixpath.normpath(path)
        if not (inside + "/").startswith(models_dir.rstrip("/") + "/"):
            yield Problem(f"{at}.path", path, f"is outside models_dir {models_dir} (only that is mounted)",
                          f"move the model under {models_dir} and write the path relative to it")


def _model_source(at: str, model: ModelConfig) -> Iterable[Problem]:
    source = model.source
    if source is None:
        return
    if source.hub == "local" and not source.path:
        yield Problem(f"{at}.source.path", None, "a local source needs a directory", "set source.path")
    if source.hub != "local" and not source.id:
        yield Problem(f"{at}.source.id", None, f"a {source.hub} source needs a repository id",
                      "set source.id, e.g. maidalun/bce-embedding-base_v1")


def _catalog(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    """Each model is one the pinned Xinference has (name, type, engine, format), or is declared custom."""
    catalog = pinned_catalog()
    for i, model in enumerate(cfg.models):
        at = ctx.model_path(i)
        if not model.enabled:
            continue
        if model.custom is not None:
            clash = builtin_clash(catalog, model.type, model.model_name)
            if clash:
                yield Problem(f"{at}.name", model.model_name, clash,
                              "give your model its own name (e.g. add your site or version to it)")
            for key, value, message, fix in custom_problems(model.type, model.custom):
                yield Problem(f"{at}.custom.{key}", value, message, fix)
            continue
        for problem in catalog_problems(catalog, model.type, model.model_name, model.engine, model.format):
            message = problem.message
            if problem.field == "name" and not model.name:
                message += "; name is not set, so the uid is the model_name"
            yield Problem(f"{at}.{problem.field}", problem.value, message, problem.fix)


def _vram(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    return vram_problems(cfg, ctx.model_dirs)


def _ssh(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    """Every ssh:// docker host's options parse, and name one key and one known_hosts file."""
    hosts = [("docker", cfg.docker)] if cfg.mode == "docker" else []
    if cfg.mode == "cluster":
        hosts = [(f"servers[{i}].docker", s.docker) for i, s in enumerate(cfg.servers)]
    for at, docker in hosts:
        if not docker.host.startswith("ssh://"):
            continue
        identity, options, problems = parse_ssh_opts(docker.ssh_opts)
        for problem in problems:
            yield Problem(f"{at}.ssh_opts", docker.ssh_opts, problem,
                          "pass the key as ssh_key, known_hosts as known_hosts, user/host/port in host; "
                          "other settings as -o Key=Value")
        if identity and docker.ssh_key and identity != docker.ssh_key:
            yield Problem(f"{at}.ssh_key", docker.ssh_key, f"differs from `-i {identity}` in ssh_opts",
                          "name the key once (ssh_key), so every ssh client uses the same one")
        for key, path in (("ssh_key", docker.ssh_key or identity), ("known_hosts", docker.known_hosts)):
            if path is not None and not path.startswith(("/", "~/")):
                yield Problem(f"{at}.{key}", path, "must be an absolute path (or ~/...)",
                              "write the full path on the machine that runs pulumi, e.g. /home/ops/.ssh/id_ed25519")


def _auth(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    if cfg.auth and not cfg.api_key:
        yield Problem("api_key", None, "auth is on but no API key is set",
                      f"pulumi config set --secret {CONFIG_NAMESPACE}:api_key <key> (or set auth: false)")
    if cfg.api_key and "api_key" not in ctx.secret_keys:
        yield Problem("api_key", "<plain text>", "the API key is stored in plain text",
                      f"pulumi config set --secret {CONFIG_NAMESPACE}:api_key <key>")


def _airgap(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    # Cluster containers use host networking (workers and supervisor reach each other's random
    # ports), which an air-gapped container by definition has not (stackspec/airgap.py).
    if cfg.mode == "cluster" and ctx.usable("container") and cfg.container.network == "airgap":
        yield Problem("container.network", "airgap", "is docker mode only: cluster containers share the host's "
                      "network", "remove container.network (or set bridge), or deploy each server as its own "
                      "docker-mode stack")


def _cluster_ports(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    # The supervisor's server binds all three on one address (its worker included).
    if cfg.mode != "cluster" or not ctx.usable("container"):
        return
    taken: dict[int, str] = {}
    for key in ("port", "supervisor_port", "worker_port"):
        port = getattr(cfg.container, key)
        if port in taken:
            yield Problem(f"container.{key}", port, f"is also container.{taken[port]}: the supervisor's server binds "
                          "both on its address", f"give container.{key} a port of its own")
        taken.setdefault(port, key)


def _trusted_code(cfg: StackConfig, ctx: CheckContext) -> Iterable[Problem]:
    # The containers are ours to start with that setting; an existing server's environment is its operator's.
    if cfg.mode == "existing" or not ctx.usable("container"):
        return
    if cfg.container.env.get(TRUST_REMOTE_CODE, "").lower() in _TRUTHY:
        return
    for i, model in enumerate(cfg.models):
        if model.enabled and model.model_name.startswith("CosyVoice"):
            yield Problem(f"{ctx.model_path(i)}.name", model.model_name,
                          "Xinference 4.1 loads a CosyVoice model from a model path only on a worker started with "
                          f"{TRUST_REMOTE_CODE}=1 (its config imports Python code): without it every launch fails",
                          f"set container.env: {{{TRUST_REMOTE_CODE}: '1'}} if you trust this model's source (the bundle "
                          "checks its files by sha256 at install and refresh), or remove the model")


_RULES: list[Callable[[StackConfig, CheckContext], Iterable[Problem]]] = [
    _mode_sections, _cluster, _endpoint, _gpus, _paths, _uids, _model_fields, _catalog, _vram, _ssh, _auth,
    _airgap, _cluster_ports, _trusted_code,
]

__all__ = ["cross_check", "server_budgets", "vram_warnings", "ModelDirs", "CONTAINER_MODELS_DIR"]
