"""Stack files on disk (for `plan`, `build` and the site checks), and the endpoint's CA file.

The running program's config (read from the Pulumi runtime by __main__.py) and a stack file
both end in ``stackspec.load.load_stack_config``, so `bundle plan` and `pulumi preview` accept and
reject exactly the same configs. A stack file is read by stackspec/stack_yaml.py, the one YAML
reader of stack files (UTF-8 only, Pulumi's YAML types, no duplicate keys, bounded aliases).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Mapping, Optional

from stackspec.config import StackConfig
from stackspec.errors import ConfigError, Problem
from stackspec.launch import endpoint_url
from stackspec.load import load_stack_config
from stackspec.rules import ModelDirs
from stackspec.stack_yaml import load_stack_yaml


def endpoint_ca_problems(cfg: StackConfig) -> list[Problem]:
    """`endpoint_ca_bundle` on the machine that runs Pulumi: an https endpoint, and a PEM file that loads.

    Checked by the program (preview, up), where the provider will use the file, not by
    `bundle plan`/`build`, which may run on another machine than the one holding the CA.
    """
    path = cfg.endpoint_ca_bundle
    if path is None:
        return []
    problems = []
    url = endpoint_url(cfg)
    if not url.startswith("https://"):
        problems.append(Problem("endpoint_ca_bundle", path, f"is set, but the endpoint {url} is not https",
                                "set endpoint to the https:// URL of the server, or remove endpoint_ca_bundle"))
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # before OSError, its base class
        problems.append(Problem("endpoint_ca_bundle", path, f"is not a PEM CA certificate ({exc.reason})",
                                "give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)"))
    except OSError as exc:
        problems.append(Problem("endpoint_ca_bundle", path, f"cannot read the CA file ({exc.strerror})",
                                "copy the CA's PEM file to this path on this machine, or correct the path"))
    return problems


def stack_name_of(path: Path) -> str:
    """The stack a stack file is for: Pulumi.NAME.yaml -> NAME (any other file name as it is)."""
    name = Path(path).name
    return name[len("Pulumi."):-len(".yaml")] if name.startswith("Pulumi.") and name.endswith(".yaml") else name


def read_stack_file(path: Path) -> Mapping[str, Any]:
    """The `config:` mapping of a stack file; ConfigError when the file is not usable."""
    document = load_stack_yaml(Path(path))
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


def from_stack_file(path: Path, model_dirs: Optional[ModelDirs] = None) -> StackConfig:
    """``model_dirs``: where the models' files are on this machine, for the VRAM estimate (stackspec.rules.server_budgets)."""
    return load_stack_config(read_stack_file(path), source=str(path), model_dirs=model_dirs)
