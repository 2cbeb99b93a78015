"""What `plan --bundle DIR` says of the bundle's sbom.cdx.json: counts per kind, and each model with its revision.

Reads the document as plain JSON (the CycloneDX library is an online-machine tool, not in the site's venv),
by the ``xinference-offline:kind`` property bundle/build/sbom.py gives every component it writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from bundle.contents.items import SBOM_KIND, SBOM_NAME

KIND_ORDER = ("image", "debian-package", "image-python", "site-wheel", "engine-wheel", "engine-stand-in", "pulumi",
              "model", "program")


def walk(components: list[dict]) -> Iterator[dict]:
    """Every component, nested ones included (an image's packages, a model's files)."""
    for component in components:
        yield component
        yield from walk(component.get("components", []))


def properties(component: dict) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in component.get("properties", [])}


def kind_counts(doc: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for component in walk(doc.get("components", [])):
        kind = properties(component).get(SBOM_KIND)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def summary_lines(doc: dict) -> list[str]:
    counts = kind_counts(doc)
    order = [k for k in KIND_ORDER if k in counts] + sorted(set(counts) - set(KIND_ORDER))
    lines = [f"SBOM ({SBOM_NAME}, CycloneDX {doc.get('specVersion', '?')}): "
             + ", ".join(f"{counts[k]} {k}" for k in order)]
    models = [c for c in doc.get("components", []) if properties(c).get(SBOM_KIND) == "model"]
    width = max((len(c.get("name", "")) for c in models), default=0)
    for model in sorted(models, key=lambda c: c.get("name", "")):
        props = properties(model)
        hub, repo, revision = (props.get(f"xinference-offline:{k}") for k in ("hub", "id", "revision"))
        files = len(model.get("components", []))
        if hub == "local" or not hub:
            origin = f"local copy ({props.get('xinference-offline:local-path') or 'from models_dir'})"
        elif revision == "unpinned":
            origin = f"{hub} {repo}, revision NOT PINNED (whatever the hub served on the day of the build)"
        else:
            origin = f"{hub} {repo} @ {revision}"
        lines.append(f"  model {model.get('name', '?'):<{width}}  {origin}, {files} files")
    return lines


def bundle_sbom_summary(bundle: Path) -> list[str]:
    """The summary lines of DIR/sbom.cdx.json; one line saying so when the bundle has none or it is unreadable."""
    path = Path(bundle) / SBOM_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"SBOM: none in this bundle ({SBOM_NAME} is written by `bundle build` since the SBOM was added)"]
    except (OSError, ValueError) as exc:
        return [f"SBOM: {path} cannot be read ({exc})"]
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        return [f"SBOM: {path} is not a CycloneDX document"]
    return summary_lines(doc)
