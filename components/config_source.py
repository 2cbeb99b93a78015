"""Where stack config comes from: the running Pulumi program, or a stack file on disk (for `plan`).

Both end in ``load_stack_config``, so `bundle plan` and `pulumi preview` accept and reject
exactly the same configs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from components.config import StackConfig, load_stack_config
from components.errors import ConfigError, Problem


def _decode(value: Any) -> Any:
    # Pulumi hands structured config to the program as JSON text; plain strings stay strings
    # (an API key of digits must not turn into a number).
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def from_pulumi() -> StackConfig:
    """Read this program's config (all keys, secrets included) from the Pulumi runtime."""
    from pulumi.runtime import config as runtime_config

    raw: dict[str, Any] = dict(runtime_config.get_config_env())
    raw.update(runtime_config.CONFIG.get())
    secret_keys = set(runtime_config.get_config_secret_keys_env() or ())
    secret_keys |= {k for k in raw if runtime_config.is_config_secret(k)}
    return load_stack_config({k: _decode(v) for k, v in raw.items()}, secret_keys=secret_keys)


def stack_name_of(path: Path) -> str:
    """The stack a stack file is for: Pulumi.NAME.yaml -> NAME (any other file name as it is)."""
    name = Path(path).name
    return name[len("Pulumi."):-len(".yaml")] if name.startswith("Pulumi.") and name.endswith(".yaml") else name


def read_stack_file(path: Path) -> Mapping[str, Any]:
    """The `config:` mapping of a stack file; ConfigError when the file is not usable."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, f"cannot read the stack file ({exc.strerror})",
                                   "check the path, or pass --config FILE")], str(path)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(str(path), None, f"not valid YAML ({exc})", "fix the YAML syntax")],
                          str(path)) from exc
    if document is None:
        return {}
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise ConfigError([Problem("config", None, "a stack file is a mapping with a `config:` mapping",
                                   "see stacks/Pulumi.gpu-node-1.yaml")], str(path))
    extra = sorted(set(document) - {"config", "encryptionsalt", "secretsprovider", "encryptedkey", "environment"})
    if extra:
        raise ConfigError([Problem(key, document[key], "not a stack file key", "put settings under `config:`")
                           for key in extra], str(path))
    return document.get("config") or {}


def from_stack_file(path: Path) -> StackConfig:
    return load_stack_config(read_stack_file(path), source=str(path))
