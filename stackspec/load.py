"""Raw stack config -> StackConfig: the one way in, for `bundle plan` and `pulumi preview` alike.

Each top-level key and each model is validated on its own through the schema
(stackspec/config.py), then the cross-field rules (stackspec/rules.py) run on whatever parsed, so
every problem of a config is reported in one run.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from pydantic import ValidationError

from stackspec.config import ModelConfig, StackConfig
from stackspec.errors import ConfigError, Problem
from stackspec.launch import models_dir_of
from stackspec.problems import problems_from, unknown_key
from stackspec.rules import CheckContext, ModelDirs, cross_check
from stackspec.xinference import CONFIG_NAMESPACE


def strip_namespace(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """`xinference-offline:models` -> `models`; keys of other namespaces are not ours and are skipped."""
    ours: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in raw.items():
        namespace, sep, name = key.partition(":")
        if not sep:
            problems.append(Problem(key, value, "config key without a namespace",
                                    f"write it as `{CONFIG_NAMESPACE}:{key}`"))
        elif namespace == CONFIG_NAMESPACE:
            ours[name] = value
    return ours, problems


def load_stack_config(raw: Mapping[str, Any], *, namespaced: bool = True,
                      secret_keys: Iterable[str] = (), source: str = "stack config",
                      model_dirs: Optional[ModelDirs] = None) -> StackConfig:
    """Validate a stack's config (``{"xinference-offline:models": [...], ...}``).

    ``secret_keys``: keys Pulumi holds as secrets (values read from a stack file as
    ``{secure: ...}`` count too). Raises ConfigError listing every problem; returns the
    parsed config otherwise. ``model_dirs``: where the models' files are on this machine, for
    the VRAM estimate (default: under models_dir when the docker engine is this machine's).
    """
    problems: list[Problem] = []
    values = dict(raw)
    if namespaced:
        values, problems = strip_namespace(raw)
    secrets = {k.partition(":")[2] if ":" in k else k for k in secret_keys}
    secrets |= {k for k, v in values.items() if _is_ciphertext(v)}
    values = {k: ("<secret>" if _is_ciphertext(v) else v) for k, v in values.items()}

    fields = StackConfig.model_fields
    parsed: dict[str, Any] = {}
    positions: list[int] = []
    for key, value in values.items():
        if key not in fields:
            problems.append(unknown_key(key, value, list(fields)))
            continue
        if key == "models":
            parsed[key], positions = _parse_models(value, problems)
            continue
        try:
            # Validate through StackConfig so the field's own validators run, one key at a time.
            parsed[key] = getattr(StackConfig.model_validate({key: value}), key)
        except ValidationError as exc:
            problems.extend(problems_from(exc, "", StackConfig))

    partial = StackConfig.model_construct(**_defaults_for_missing(parsed))
    if parsed.get("models"):
        parsed["models"] = relative_model_dirs(partial, positions, problems)
        partial = StackConfig.model_construct(**_defaults_for_missing(parsed))
    problems.extend(cross_check(partial, CheckContext(set(parsed), set(values), positions, secrets, model_dirs)))
    if problems:
        raise ConfigError(problems, source)
    return StackConfig.model_validate(parsed)


def _defaults_for_missing(parsed: dict[str, Any]) -> dict[str, Any]:
    out = dict(parsed)
    for name, field in StackConfig.model_fields.items():
        if name not in out:
            out[name] = field.get_default(call_default_factory=True)
    return out


def _is_ciphertext(value: Any) -> bool:
    # Pulumi hands a secret as plain text to the program; a stack file read from disk holds
    # `{secure: v1:...}` ciphertext that `plan` cannot decrypt without the passphrase.
    return isinstance(value, Mapping) and set(value) == {"secure"}


def _parse_models(value: Any, problems: list[Problem]) -> tuple[list[ModelConfig], list[int]]:
    """Validate each model on its own; returns the valid ones and their positions in the list."""
    if not isinstance(value, list):
        problems.append(Problem("models", value, "must be a list of models", "write `models:` as a YAML list (`- uid: ...`)"))
        return [], []
    models: list[ModelConfig] = []
    positions: list[int] = []
    for index, entry in enumerate(value):
        try:
            models.append(ModelConfig.model_validate(entry))
            positions.append(index)
        except ValidationError as exc:
            problems.extend(problems_from(exc, f"models[{index}]", ModelConfig))
    return models, positions


def relative_model_dirs(cfg: StackConfig, positions: list[int], problems: list[Problem]) -> list[ModelConfig]:
    """Absolute model directories under the model's models_dir, made relative to it: one spelling per directory.

    (`/data/docker_models/a/emb` and `a/emb` would otherwise be two bundle directories.) One
    outside models_dir stays absolute, for the rules to judge by mode.
    """
    def relative(path: Optional[str], base: str, at: str) -> Optional[str]:
        if path is None or not path.startswith("/") or not base.startswith("/") or ".." in base.split("/"):
            return path
        base = base.rstrip("/") or "/"
        if path == base:
            problems.append(Problem(at, path, "names models_dir itself, not a model's directory",
                                    "write the model's directory under models_dir, e.g. bce-embedding-base_v1"))
            return path
        inside = base == "/" or path.startswith(base + "/")
        return path[len(base):].lstrip("/") if inside else path

    models = []
    for model, index in zip(cfg.models, positions, strict=True):
        base = models_dir_of(cfg, model)
        companions = [c.model_copy(update={"path": relative(c.path, base, f"models[{index}].companions[{j}].path")})
                      for j, c in enumerate(model.companions)]
        models.append(model.model_copy(update={"path": relative(model.path, base, f"models[{index}].path"),
                                               "companions": companions}))
    return models
