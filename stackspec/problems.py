"""How a pydantic ValidationError of the stack config becomes Problems: key path, value, message, fix.

pydantic's locations name union branches and list indices; an operator reads the key path
as written in the stack file (`models[0].gpus`), an unknown key with the closest known one,
and a fix per error type (or the one a validator gave in its error's context, as
stackspec/values.py does).
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from stackspec.errors import Problem
from stackspec.values import FIXES as VALUE_FIXES


# Keys an operator may bring from elsewhere (the issue that asked for per-GPU memory spelled it
# gpus_memory_gb), with where the setting lives here: no close spelling would point there.
SPELLED_HERE = {"gpus_memory_gb": "each GPU's memory is declared as `gpus: [{id: 0, vram_gb: 24}, {id: 1, vram_gb: 24}]`",
                "gpu_memory_gb": "each GPU's memory is declared as `gpus: [{id: 0, vram_gb: 24}, ...]`"}


def unknown_key(path: str, value: Any, known: list[str]) -> Problem:
    """An unknown key, with the closest known one suggested."""
    leaf = path.rsplit(".", 1)[-1].split("]")[-1]
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(sorted(known))}"
    if "." not in path and leaf in SPELLED_HERE:
        hint = SPELLED_HERE[leaf]
    return Problem(path, value, "unknown key", f"{hint} (remove or rename it)")


def problems_from(exc: ValidationError, prefix: str, root: type[BaseModel]) -> list[Problem]:
    """One Problem per pydantic error; ``prefix`` is where ``root`` (the model validated) sits in the config."""
    problems = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not _is_union_branch(p)]
        path = _join_path(prefix, loc)
        if err["type"] == "extra_forbidden":
            problems.append(unknown_key(path, err.get("input"), _known_fields_at(root, loc)))
            continue
        fix = (err.get("ctx") or {}).get("fix") or _FIXES.get(err["type"], "see the config reference in the README")
        problems.append(Problem(path, err.get("input"), err["msg"], fix))
    return problems


def _is_union_branch(part: Any) -> bool:
    # pydantic names union branches in loc ("int", "literal['auto']", "function-before[...]"): not keys.
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str"})


def _join_path(prefix: str, loc: list[Any]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _known_fields_at(root: type[BaseModel], loc: list[Any]) -> list[str]:
    # Walk the schema along the error location to suggest the right sibling key.
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        model = model_of(model)
        if model is None or part not in model.model_fields:
            return []
        model = model.model_fields[part].annotation
    model = model_of(model)
    return list(model.model_fields) if model else []


def model_of(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = model_of(arg)
        if found:
            return found
    return None


_FIXES = {
    "missing": "add this key",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "literal_error": "use one of the values listed",
    "greater_than_equal": "use a larger value",
    "greater_than": "use a larger value",
    "less_than_equal": "use a smaller value",
    "string_pattern_mismatch": "use the format shown in the config reference",
    "string_type": "write a text value",
    "list_type": "write a YAML list",
    "dict_type": "write a YAML mapping",
    "model_type": "write a YAML mapping",
    "model_attributes_type": "write a YAML mapping",
    "string_too_short": "write a non-empty value",
    "value_error": "see the message",
    "finite_number": "write a finite number",
    **VALUE_FIXES,
}
