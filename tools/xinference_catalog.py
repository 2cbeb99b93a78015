"""Extract the pinned Xinference's model catalog into one compact file the program ships.

Reads the model families of the installed xinference package (``xinference/model/*/models/
*.json``, the files its wheel carries) and writes ``stackspec/xinference_catalog.json``: per model
its name, type, abilities, engines, formats, sizes, quantizations, virtualenv packages and hub
ids, plus the Xinference version they came from and its per-engine virtualenv packages. Sorted and without timestamps, so the same
wheel always gives the same bytes (tests/test_catalog.py regenerates it and compares).

Engines: what the JSON says (``engine`` of an audio/image family; the ``#engine# == "X"`` markers
of its virtualenv packages, for every type). Xinference's code picks among them at launch, per
format and architecture; an engine the JSON never names (vLLM for a family without a vllm
marker) is not listed, so a check against ``engines`` must treat an empty list as "unknown".

    venv/bin/python tools/xinference_catalog.py [--check] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "stackspec" / "xinference_catalog.json"
TYPES = {"llm": "LLM", "embedding": "embedding", "rerank": "rerank", "audio": "audio", "image": "image",
         "video": "video", "flexible": "flexible"}
_ENGINE_MARKER = re.compile(r"#engine#\s*==\s*[\"']([^\"']+)[\"']")


def _sorted_set(values: Iterable[Any]) -> list:
    return sorted({str(v) for v in values if v is not None and v != ""})


def _hubs(sources: dict) -> dict[str, str]:
    return {hub: src["model_id"] for hub, src in sorted(sources.items()) if isinstance(src, dict) and src.get("model_id")}


def entry_of(family: dict, model_type: str) -> dict:
    """The compact record of one model family."""
    specs = family.get("model_specs") or [family]
    packages = list((family.get("virtualenv") or {}).get("packages") or [])
    engines = {m for p in packages for m in _ENGINE_MARKER.findall(p)}
    if family.get("engine"):
        engines.add(family["engine"])
    hubs: dict[str, str] = {}
    quantizations: set = set()
    for spec in specs:
        sources = spec.get("model_src") or family.get("model_src") or {}
        for hub, model_id in _hubs(sources).items():
            hubs.setdefault(hub, model_id)
        for src in sources.values():
            if isinstance(src, dict):
                quantizations.update(src.get("quantizations") or [])
    return {
        "type": model_type,
        "abilities": _sorted_set(family.get("model_ability") or []),
        "engines": sorted(engines),
        "formats": _sorted_set(s.get("model_format") for s in specs) or _sorted_set([family.get("model_format")]),
        "sizes": _sorted_set(str(s.get("model_size_in_billions")).replace("_", ".") for s in specs
                             if s.get("model_size_in_billions") is not None),
        "quantizations": _sorted_set(quantizations),
        "packages": packages,
        "hubs": hubs,
    }


def catalog(package_dir: Path, version: str) -> dict:
    """{"xinference": version, "models": {type: {name: record}}} of an xinference package directory."""
    models: dict[str, dict[str, dict]] = {}
    for folder, model_type in TYPES.items():
        for path in sorted((package_dir / "model" / folder / "models").glob("*.json")):
            families = json.loads(path.read_text(encoding="utf-8"))
            for family in families if isinstance(families, list) else [families]:
                name = family.get("model_name")
                if not name:
                    continue
                record = entry_of(family, model_type)
                known = models.setdefault(model_type, {}).get(name)
                if known is not None:  # one name in several files or variants (MLX, GGUF): merge what they add
                    for key in ("abilities", "engines", "formats", "sizes", "quantizations"):
                        known[key] = sorted(set(known[key]) | set(record[key]))
                    known["packages"] += [p for p in record["packages"] if p not in known["packages"]]
                    for hub, model_id in record["hubs"].items():
                        known["hubs"].setdefault(hub, model_id)
                else:
                    models[model_type][name] = record
    return {"xinference": version, "models": {t: dict(sorted(m.items())) for t, m in sorted(models.items())},
            "engine_packages": engine_packages()}


def engine_packages() -> dict:
    """The packages Xinference adds per engine (its ``#<engine>_dependencies#`` placeholders) and per
    engine and model format, as xinference/core/virtual_env_manager.py holds them; stackspec/engine_packages.py
    expands a model's virtualenv packages with these the way the worker does at launch."""
    from xinference.core import virtual_env_manager as venv

    return {"engines": {e: list(p) for e, p in sorted(venv.ENGINE_VIRTUALENV_PACKAGES.items())},
            "engine_formats": {e: {f: list(p) for f, p in sorted(formats.items())}
                               for e, formats in sorted(venv.ENGINE_VIRTUALENV_MODEL_FORMAT_PACKAGES.items())}}


def render(data: dict) -> str:
    return json.dumps(data, indent=0, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def installed_xinference() -> tuple[Path, str]:
    import xinference  # the pinned one, from the project's venv

    return Path(xinference.__file__).resolve().parent, metadata.version("xinference")


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh extraction")
    args = parser.parse_args(argv)
    package_dir, version = installed_xinference()
    text = render(catalog(package_dir, version))
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from xinference ' + version + '; regenerate it'}")
        return 0 if same else 1
    write_atomic(args.out, text)
    counts = {t: len(m) for t, m in json.loads(text)["models"].items()}
    print(f"{args.out}: xinference {version}, {sum(counts.values())} models {counts}, {len(text) // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
