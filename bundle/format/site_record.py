"""Where `install` put a stack's bundle and models, recorded for the Pulumi program.

Standard library only: `install` writes it with the server's bare python3.

`install` records, per stack, the unpacked bundle directory and the host model directory it
filled (PROJECT/.xinference-offline-site.json). The program reads the record, so the README's
site steps typed as written need no hand edit of the stack file: `pulumi preview/up` use the
bundle's image tar and digests and the models where install put them. The site's stack file is
never rewritten; what it says wins:

- ``bundle_dir``: the stack's when it names one, else the record's;
- ``models_dir``: the stack's when it names one that is not simply the build machine's (the
  value the bundle's own stack file carries, which `install --models-dir` overrode), else the
  record's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from bundle.format.layout import SITE_RECORD
from bundle.format.manifest import write_atomic

NAMESPACE = "xinference-offline"
BUNDLE_DIR_KEY = f"{NAMESPACE}:bundle_dir"
MODELS_DIR_KEY = f"{NAMESPACE}:models_dir"
FORMAT = 1


def record_path(project: Path) -> Path:
    return Path(project) / SITE_RECORD


def read_record(project: Path) -> dict[str, dict[str, str]]:
    """{stack: {"bundle_dir", "models_dir", "bundle_id"}}; a missing or unreadable record is empty."""
    try:
        data = json.loads(record_path(project).read_text())
    except (OSError, ValueError):
        return {}
    stacks = data.get("stacks") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(stacks, dict):
        return {}
    return {name: {k: v for k, v in entry.items() if isinstance(v, str)}
            for name, entry in stacks.items() if isinstance(entry, dict)}


def write_record(project: Path, stack: str, bundle_dir: Path, models_dir: Optional[Path], bundle_id: str) -> bool:
    """Record this stack's bundle and model directories (atomically; the other stacks' entries kept).
    True when the record changed."""
    stacks = read_record(project)
    entry = {"bundle_dir": str(bundle_dir), "bundle_id": bundle_id}
    if models_dir is not None:
        entry["models_dir"] = str(models_dir)
    if stacks.get(stack) == entry:
        return False
    stacks[stack] = entry
    text = json.dumps({"format": FORMAT, "stacks": stacks}, indent=1, sort_keys=True) + "\n"
    write_atomic(record_path(project), text.encode())
    return True


def with_installed_paths(raw: Mapping[str, Any], installed: Mapping[str, str],
                         bundle_models_dir: Callable[[str], Optional[str]]) -> tuple[dict[str, Any], list[str]]:
    """The stack's raw config with the installed bundle and model directories filled in where the
    stack names none (see the module's rules), and one note per value taken from the record.
    ``bundle_models_dir(bundle_dir)``: the models_dir the bundle's own stack file carries."""
    config, notes = dict(raw), []
    bundle_dir = config.get(BUNDLE_DIR_KEY)
    if not bundle_dir and installed.get("bundle_dir"):
        bundle_dir = config[BUNDLE_DIR_KEY] = installed["bundle_dir"]
        notes.append(f"bundle_dir: {bundle_dir} (where `bundle install` took this stack from; "
                     "set bundle_dir in the stack file to choose another)")
    models_dir = installed.get("models_dir")
    if models_dir and config.get(MODELS_DIR_KEY) != models_dir:
        stated = config.get(MODELS_DIR_KEY)
        built = bundle_models_dir(bundle_dir) if stated and bundle_dir else None
        if not stated or stated == built:
            config[MODELS_DIR_KEY] = models_dir
            was = f"; the stack file's {stated} is the build machine's" if stated else ""
            notes.append(f"models_dir: {models_dir} (where `bundle install` put the models{was}; "
                         "set models_dir in the stack file to choose another)")
    return config, notes
