"""The pinned Xinference's model catalog, offline: which names, engines and formats exist.

``stackspec/xinference_catalog.json`` is extracted from the pinned xinference wheel by
``tools/xinference_catalog.py`` (tests/test_catalog.py regenerates it and compares). `bundle
plan`, `pulumi preview` (stackspec/rules.py) and the provider's ``validate`` (components/model_props.py)
ask ``catalog_problems`` about each model, so a misspelled name or an engine the model does not
have is refused on the online side, not by Xinference at launch on the site. A custom model (one
the stack registers itself, ``models[].custom``) is not in the catalog and is not asked about;
its name must instead not clash with a built-in one (``builtin_clash``).

Standard library only; the file is read once per process (about 10 ms).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

CATALOG_FILE = Path(__file__).with_name("xinference_catalog.json")
# xinference/model/utils.py is_valid_model_name
CUSTOM_NAME_RE = re.compile(r"^[^+\\/?%#&=\s]+$")


@dataclass(frozen=True)
class CatalogModel:
    """One model family of the pinned Xinference, as the catalog file records it."""

    name: str
    type: str
    abilities: tuple[str, ...]
    engines: tuple[str, ...]  # empty: the JSON names none (Xinference's code decides), so not judged
    formats: tuple[str, ...]  # empty: not judged
    sizes: tuple[str, ...]
    quantizations: tuple[str, ...]
    packages: tuple[str, ...]  # virtualenv.packages, with Xinference's #placeholders# as written
    hubs: dict[str, str]


@dataclass(frozen=True)
class CatalogProblem:
    """What is wrong with one field of a model against the catalog."""

    field: str  # the stack key under models[i]: name, engine, format
    value: Any
    message: str
    fix: str


class Catalog:
    """The model families of one Xinference version, by type and name."""

    def __init__(self, version: str, models: dict[str, dict[str, CatalogModel]],
                 engine_packages: Optional[dict[str, tuple[str, ...]]] = None,
                 engine_format_packages: Optional[dict[str, dict[str, tuple[str, ...]]]] = None):
        self.version = version
        self.models = models
        # What the worker adds per engine (`#<engine>_dependencies#`) and per engine and model format.
        self.engine_packages = engine_packages or {}
        self.engine_format_packages = engine_format_packages or {}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Catalog":
        models = {
            model_type: {name: CatalogModel(
                name=name, type=model_type, abilities=tuple(r["abilities"]), engines=tuple(r["engines"]),
                formats=tuple(r["formats"]), sizes=tuple(r["sizes"]), quantizations=tuple(r["quantizations"]),
                packages=tuple(r["packages"]), hubs=dict(r["hubs"])) for name, r in records.items()}
            for model_type, records in data["models"].items()
        }
        engines = data.get("engine_packages", {})
        return cls(data["xinference"], models,
                   {e: tuple(p) for e, p in engines.get("engines", {}).items()},
                   {e: {f: tuple(p) for f, p in formats.items()} for e, formats in engines.get("engine_formats", {}).items()})

    def get(self, model_type: str, name: str) -> Optional[CatalogModel]:
        return self.models.get(model_type, {}).get(name)

    def types_of(self, name: str) -> list[str]:
        return [t for t, records in self.models.items() if name in records]

    def close_names(self, model_type: str, name: str) -> list[str]:
        names = self.models.get(model_type, {})
        by_lower = {n.lower(): n for n in names}
        if name.lower() in by_lower:  # a case slip is the likeliest miss; difflib ranks it below others
            return [by_lower[name.lower()]]
        return difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)


@lru_cache(maxsize=1)
def pinned_catalog() -> Catalog:
    """The catalog file the program ships (one read per process)."""
    return Catalog.from_json(json.loads(CATALOG_FILE.read_text(encoding="utf-8")))


def _one_of(values: tuple[str, ...], value: str) -> Optional[str]:
    """The catalog's spelling of ``value`` (Xinference compares engines and formats ignoring case)."""
    return next((v for v in values if v.lower() == value.lower()), None)


def catalog_problems(catalog: Catalog, model_type: str, name: str, engine: Optional[str] = None,
                     model_format: Optional[str] = None) -> list[CatalogProblem]:
    """Why the pinned Xinference would refuse to launch ``name`` as ``model_type`` with this engine/format."""
    record = catalog.get(model_type, name)
    where = f"Xinference {catalog.version}'s {model_type} models"
    if record is None:
        other_types = catalog.types_of(name)
        if other_types:
            return [CatalogProblem("type", model_type, f"{name} is not among {where}; its type is {other_types[0]}",
                                   f"set type: {other_types[0]}")]
        close = catalog.close_names(model_type, name)
        hint = f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""
        return [CatalogProblem("name", name, f"not among {where} ({len(catalog.models.get(model_type, {}))} names)",
                               f"{hint}use the model_name Xinference lists (`xinference registrations -t "
                               f"{model_type}`), or declare your own model under `custom`")]
    problems = []
    if engine and record.engines and _one_of(record.engines, engine) is None:
        problems.append(CatalogProblem("engine", engine, f"{name} has no engine {engine} in Xinference "
                                       f"{catalog.version}", f"use one of {list(record.engines)}"))
    if model_format and record.formats and _one_of(record.formats, model_format) is None:
        problems.append(CatalogProblem("format", model_format, f"{name} has no format {model_format} in Xinference "
                                       f"{catalog.version}", f"use one of {list(record.formats)}"))
    return problems


def builtin_clash(catalog: Catalog, model_type: str, name: str) -> Optional[str]:
    """Why a custom ``model_type`` model may not be called ``name``; None when it may.

    Xinference 4.1's ModelRegistry.register refuses a name already in that type's built-ins
    (the server answers "Model <name> already registered") and is_valid_model_name one with
    ``+\\/?%#&=`` or whitespace (the name becomes a directory name)."""
    if name in (".", "..") or not CUSTOM_NAME_RE.match(name):
        return "is not a name Xinference can register: it must not be empty or hold + \\ / ? % # & = or spaces"
    if catalog.get(model_type, name) is not None:
        return (f"is a built-in {model_type} model of Xinference {catalog.version}: Xinference refuses to register "
                f"a custom model over it (it answers \"Model {name} already registered\")")
    return None


# An image tag that carries the Xinference version: xprobe/xinference:v4.1.0, .../xinference-cpu:4.1.0-cu128.
_TAG_VERSION = re.compile(r":v?(\d+\.\d+\.\d+)(?:[-_.][A-Za-z0-9.]*)?$")


def image_version(image_name: str) -> Optional[str]:
    """The Xinference version an image's tag says, or None when the tag does not say one."""
    match = _TAG_VERSION.search(image_name or "")
    return match.group(1) if match else None


def image_version_note(catalog: Catalog, image_name: str) -> Optional[str]:
    """A warning when the image's Xinference is not the one the catalog checks came from."""
    version = image_version(image_name)
    if version is None or version == catalog.version:
        return None
    return (f"image {image_name} is Xinference {version}, but models are checked against the catalog of "
            f"Xinference {catalog.version} (the pinned one): names, engines and formats may differ; use a "
            f"{catalog.version} image, or regenerate stackspec/xinference_catalog.json from a {version} wheel "
            "(tools/xinference_catalog.py)")

