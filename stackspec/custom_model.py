"""A site's own model (``models[].custom``) as the registration Xinference 4.1 takes.

``POST /v1/model_registrations/{type}`` takes ``{"model": <json text of a model family>,
"persist": bool}``. The family is what the stack's ``custom`` mapping says, plus what the stack
already knows and must not be written twice: ``model_name`` (the model's `name`), the version of
the family format, and one model spec whose ``model_uri`` is the model's directory as Xinference
sees it (``path``). So a custom model is registered and launched from the same files.

The fields each type's family requires besides those (Xinference's pydantic families in
xinference/model/<type>/core.py, custom.py) are checked here so a missing one is named at plan,
not by the registration on the site. Anything else in ``custom`` is passed through as written.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional

# The family version 4.1 registers (EmbeddingModelFamilyV2, RerankModelFamilyV2, LLMFamilyV2, ...).
FAMILY_VERSION = 2
# What the registration fills itself; written in `custom` it would fight the stack's own fields.
FILLED_KEYS = {"model_name": "name", "model_specs": "path (and format/quantization)", "version": "(set by the tool)",
               "model_uri": "path", "model_type": "type"}
# Fields Xinference's family of that type requires and has no default for.
REQUIRED_KEYS = {
    "embedding": ("dimensions", "max_tokens", "language"),
    "rerank": ("language",),
    "LLM": ("model_lang", "model_ability"),
    "audio": ("model_family", "multilingual"),
    "image": ("model_family",),
}
# The model_format of the one model spec when the stack names none (a directory of weights).
DEFAULT_FORMAT = "pytorch"


# What the fix of a missing required field suggests.
EXAMPLES = {"dimensions": "384", "max_tokens": "512", "language": "[en]", "model_lang": "[en]",
            "model_ability": "[chat]", "model_family": "<a built-in family>", "multilingual": "true"}


def custom_problems(model_type: str, custom: Mapping[str, Any]) -> list[tuple[str, Any, str, str]]:
    """(key under custom, value, message, fix) for each field the registration would refuse."""
    problems = []
    for key, own_field in FILLED_KEYS.items():
        if key in custom:
            problems.append((key, custom[key], "is filled from the model's own fields",
                             f"remove custom.{key}; set {own_field} on the model instead"))
    for key in REQUIRED_KEYS.get(model_type, ()):
        if key not in custom:
            problems.append((key, None, f"a custom {model_type} model needs {key}",
                             f"add custom.{key}, e.g. {key}: {EXAMPLES[key]}"))
    virtualenv = custom.get("virtualenv")
    if virtualenv is not None:
        packages = virtualenv.get("packages") if isinstance(virtualenv, Mapping) else None
        if not isinstance(packages, list) or not all(isinstance(p, str) and p.strip() for p in packages):
            problems.append(("virtualenv", virtualenv, "is Xinference's VirtualEnvSettings: a mapping whose "
                             "`packages` is a list of requirement lines",
                             'write it as virtualenv: {packages: ["inflect==7.6.0"]}'))
    return problems


def model_spec(model_type: str, model_uri: str, model_format: Optional[str], quantization: Optional[str]) -> dict[str, Any]:
    """The one entry of ``model_specs``: the model's own directory."""
    spec: dict[str, Any] = {"model_format": model_format or DEFAULT_FORMAT, "model_hub": "huggingface",
                            "model_id": None, "model_uri": model_uri, "model_revision": None,
                            "quantization": quantization or "none"}
    return spec


def family_size(size: Any) -> Any:
    """An LLM spec's model_size_in_billions as a family writes it: 7, or "0_5" for 0.5 (0 when unknown)."""
    if size is None:
        return 0
    number = float(str(size).replace("_", "."))
    return int(number) if number.is_integer() else str(size).replace(".", "_")


def registration_family(model_type: str, model_name: str, model_uri: str, custom: Mapping[str, Any],
                        model_format: Optional[str] = None, quantization: Optional[str] = None,
                        size_in_billions: Any = None) -> dict[str, Any]:
    """The model family to register (deterministic: the same inputs give the same dict)."""
    spec = model_spec(model_type, model_uri, model_format, quantization)
    if model_type == "LLM":
        spec["model_size_in_billions"] = family_size(size_in_billions)
    family = {"version": FAMILY_VERSION, "model_name": model_name, **dict(custom), "model_specs": [spec]}
    if model_type in ("audio", "image", "video", "flexible"):
        # These families are one spec, not a list: the files are the family's own model_uri.
        family.pop("model_specs")
        family.update({"model_uri": model_uri, "model_id": None, "model_revision": None})
    return family


def registration_body(family: Mapping[str, Any], persist: bool = True) -> dict[str, Any]:
    """The POST /v1/model_registrations/{type} body (the family travels as JSON text)."""
    return {"model": json.dumps(family, sort_keys=True), "persist": persist}


def family_digest(family: Mapping[str, Any]) -> str:
    """sha256 of the family as registered: the model's relaunch trigger (its registration_digest)."""
    return hashlib.sha256(json.dumps(family, sort_keys=True).encode()).hexdigest()
