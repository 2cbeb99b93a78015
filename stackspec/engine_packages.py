"""The Python packages a model's launch installs into its virtualenv, as Xinference 4.1 decides them.

With virtualenvs on, the worker (xinference/core/worker.py ``_prepare_virtual_env``) installs,
per model, into a virtualenv that sees the image's own packages: the engine's and format's
defaults, then the family's ``virtualenv.packages`` with

- ``#<engine>_dependencies#`` replaced by that engine's packages, when it is the model's engine
  (and dropped otherwise);
- entries guarded by ``; #engine# == "X"`` kept only for engine X, and by ``cuda_version`` only
  on a CUDA image whose version satisfies them;
- ``#system_<name>#`` kept as a placeholder that xoscar pins to the image's own version
  (``name==<installed>``): left to the image, never carried.

``model_packages`` does those steps on the catalog's data (stackspec/xinference_catalog.json, taken
from the pinned xinference by tools/xinference_catalog.py), so `bundle plan` lists them and
`bundle build` downloads their wheels without importing xinference. tests/test_engine_packages.py
compares the result with the pinned xinference's own functions for every catalog family and engine.

Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from stackspec.catalog import Catalog, pinned_catalog
from stackspec.config import ModelConfig, StackConfig
from stackspec.xinference import CONTAINER_PACKAGE_WHEELS, CONTAINER_PACKAGES_DIR

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# Xinference spells two engines differently in placeholders (worker: dependency_to_engine_map).
_PLACEHOLDER_ENGINES = {"llama_cpp": "llama.cpp", "trt_llm": "trt-llm"}
SYSTEM_PREFIX = "#system_"


@dataclass(frozen=True)
class ModelPackages:
    """What one model's virtualenv asks for: requirements to carry, and packages left to the image."""

    uid: str
    engine: Optional[str]
    requirements: tuple[str, ...]  # PEP 508 lines (they may keep a standard marker such as sys_platform)
    from_image: tuple[str, ...]  # the names of #system_<name># entries: pinned to the image's version

    @property
    def wanted(self) -> bool:
        """True when the launch installs anything (then the stack carries a wheel folder)."""
        return bool(self.requirements)


def canonical_name(requirement: str) -> str:
    """PEP 503's normalized project name of a requirement line ('' for a URL or a placeholder)."""
    match = _NAME.match(requirement)
    if requirement.strip().startswith("#") or not match or "://" in requirement.split(";", 1)[0]:
        return ""
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def expand_placeholders(packages: Iterable[str], engine: Optional[str], catalog: Catalog) -> list[str]:
    """``#<engine>_dependencies#`` -> the engine's packages for the model's engine; other engines' dropped."""
    expanded: list[str] = []
    for pkg in packages:
        name = pkg.split(";", 1)[0].strip().lower()
        if name.startswith("#") and name.endswith("#"):
            name = name[1:-1]
        if name.endswith("_dependencies") and engine:
            target = name[: -len("_dependencies")]
            if _PLACEHOLDER_ENGINES.get(target, target) == engine:
                expanded.extend(catalog.engine_packages.get(engine, ()))
            continue
        expanded.append(pkg)
    return expanded


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


_COMPARE = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _marker_allows(marker: str, engine: Optional[str], cuda_version: Optional[str], sys_platform: str,
                   machine: str) -> bool:
    """xinference/core/utils.py filter_virtualenv_packages_by_markers's test of one custom marker."""
    marker = marker.strip().lower()
    if "#engine#" in marker or "#model_engine#" in marker:
        if not engine or not any(f"{key} == {quote}{engine}{quote}" in marker
                                 for key in ("#engine#", "#model_engine#") for quote in "\"'"):
            return False
    cuda_tests = re.findall(r"\bcuda_version\b\s*([<>=!~]+)\s*['\"]([^'\"]+)['\"]", marker)
    if cuda_tests:
        if not cuda_version:
            return False
        ours = _version_tuple(cuda_version)
        if not all(op in _COMPARE and _COMPARE[op](ours, _version_tuple(v)) for op, v in cuda_tests):
            return False
    for op, expected in re.findall(r"\bsys_platform\b\s*(==|!=)\s*['\"]([^'\"]+)['\"]", marker):
        if (op == "==") != (sys_platform == expected):
            return False
    for expected in ("x86_64", "aarch64"):
        if f'platform_machine == "{expected}"' in marker and machine != expected:
            return False
    return True


def _has_custom_marker(marker: str) -> bool:
    marker = marker.lower()
    return "#engine#" in marker or "#model_engine#" in marker or "cuda_version" in marker


def filter_markers(packages: Iterable[str], engine: Optional[str], cuda_version: Optional[str] = None,
                   sys_platform: str = "linux", machine: str = "x86_64") -> list[str]:
    """Keep the entries whose Xinference markers hold for this engine and image (the marker is dropped)."""
    kept = []
    for pkg in packages:
        req, sep, marker = pkg.partition(";")
        if sep and _has_custom_marker(marker):
            if _marker_allows(marker, engine, cuda_version, sys_platform, machine):
                kept.append(req.strip())
            continue
        kept.append(pkg)
    return kept


_MARKER_WORDS = {"python_version", "python_full_version", "os_name", "sys_platform", "platform_release",
                 "platform_system", "platform_version", "platform_machine", "platform_python_implementation",
                 "implementation_name", "implementation_version", "extra", "and", "or", "not", "in"}


def _is_pep508_marker(marker: str) -> bool:
    """Whether packaging would parse this marker: only PEP 508's variables outside the quotes."""
    if "#" in marker:
        return False
    bare = re.sub(r"'[^']*'|\"[^\"]*\"", " ", marker)
    return all(word in _MARKER_WORDS for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare))


def _merge_key(package: str) -> str:
    """merge_virtual_env_packages's get_key: packaging's name when the line parses as PEP 508 (a custom
    marker such as #engine# or cuda_version does not), else the part before the first separator."""
    head, _, marker = package.partition(";")
    head = head.strip()
    if head.startswith(SYSTEM_PREFIX) and head.endswith("#"):
        return head[len(SYSTEM_PREFIX):-1].lower()
    if head.startswith("#"):
        return head
    match = _NAME.match(head)
    if match and _is_pep508_marker(marker) and "://" not in head.split("@", 1)[0]:
        return match.group(1).lower()
    for sep in ("@", "==", ">=", "<=", "~=", "!=", "[", " "):
        if sep in head:
            return head.split(sep, 1)[0].strip().lower()
    return head.lower()


def merge_packages(packages: list[str]) -> list[str]:
    """xinference/core/utils.py merge_virtual_env_packages on a family's list alone: one entry per project
    and engine condition; an unconditioned entry replaces that project's engine-conditioned ones and the
    reverse, in the first one's place."""
    merged: list[Optional[str]] = []
    index_of: dict[str, int] = {}
    engine_keys: dict[str, set[str]] = {}
    for pkg in packages:
        key = _merge_key(pkg)
        head, sep, marker = pkg.partition(";")
        marker = marker.strip().lower()
        engine_condition = marker if sep and ("#engine#" in marker or "#model_engine#" in marker) else None
        if sep and head.strip().startswith(SYSTEM_PREFIX):
            key = f"{key}; {marker}"
        elif engine_condition:
            conditional = f"{key}; {engine_condition}"
            engine_keys.setdefault(key, set()).add(conditional)
            if key in index_of:
                index = index_of.pop(key)
                merged[index] = pkg
                index_of[conditional] = index
                continue
            key = conditional
        else:
            conditional_keys = engine_keys.pop(key, set())
            if conditional_keys:
                indexes = sorted(index_of.pop(k) for k in conditional_keys)
                index_of[key] = indexes[0]
                merged[indexes[0]] = pkg
                for index in indexes[1:]:
                    merged[index] = None
                continue
        if key in index_of:
            merged[index_of[key]] = pkg
        else:
            index_of[key] = len(merged)
            merged.append(pkg)
    return [pkg for pkg in merged if pkg is not None]


def xinference_packages(catalog: Catalog, family_packages: Iterable[str], engine: Optional[str],
                        model_format: Optional[str], cuda_version: Optional[str] = None) -> list[str]:
    """The list the worker hands xoscar for this family, engine and format (``#system_*#`` still in it)."""
    engine = engine.lower() if engine else None
    defaults = list(catalog.engine_format_packages.get(engine, {}).get(model_format.lower(), ())) \
        if engine and model_format else []
    if engine == "trt-llm":
        defaults = list(catalog.engine_packages.get(engine, ())) + defaults
    family_packages = list(family_packages)
    if not family_packages and not defaults:
        return []
    packages = merge_packages(expand_placeholders(defaults + family_packages, engine, catalog))
    return filter_markers(packages, engine, cuda_version)


def family_packages(model: ModelConfig, catalog: Catalog) -> tuple[str, ...]:
    """The family's ``virtualenv.packages``: the catalog's, or what a custom model declares."""
    if model.custom is not None:
        virtualenv = model.custom.get("virtualenv") or {}
        return tuple(virtualenv.get("packages") or ()) if isinstance(virtualenv, dict) else ()
    record = catalog.get(model.type, model.model_name)
    return record.packages if record else ()


def launch_engine(model: ModelConfig, catalog: Catalog) -> Optional[str]:
    """The engine Xinference runs ``model`` on: the one named, else its default for the type.

    xinference/model/embedding/core.py and rerank/core.py fall back to ``sentence_transformers`` (a
    rerank family in GGUF only to ``llama.cpp``), but the worker prepares the virtualenv with the
    engine *as named*: with none, every engine-guarded entry is dropped and nothing is installed, so
    on an image without sentence-transformers (the official slim one) the load then fails. A model
    that carries packages is therefore planned, and launched, with this engine named."""
    if model.engine:
        return model.engine
    if model.type not in ("embedding", "rerank"):
        return None
    record = catalog.get(model.type, model.model_name) if model.custom is None else None
    gguf_only = model.format == "ggufv2" or (not model.format and record is not None and record.formats == ("ggufv2",))
    return "llama.cpp" if model.type == "rerank" and gguf_only else "sentence_transformers"


def model_packages(model: ModelConfig, catalog: Catalog, cuda_version: Optional[str] = None) -> ModelPackages:
    """What ``model``'s launch installs, split into what to carry and what the image keeps.

    ``cuda_version`` is the image's torch's CUDA (``torch.version.cuda``: what the worker passes to
    the markers), None for a CPU image or one not read yet."""
    engine = launch_engine(model, catalog)
    packages = xinference_packages(catalog, family_packages(model, catalog), engine, model.format, cuda_version)
    requirements, from_image = [], []
    for pkg in packages:
        head = pkg.split(";", 1)[0].strip()
        if head.startswith(SYSTEM_PREFIX) and head.endswith("#"):
            from_image.append(head[len(SYSTEM_PREFIX):-1])
        else:
            requirements.append(pkg)
    return ModelPackages(model.uid, engine, tuple(requirements), tuple(from_image))


def stack_packages(cfg: StackConfig, catalog: Optional[Catalog] = None,
                   cuda_version: Optional[str] = None) -> list[ModelPackages]:
    """The enabled models whose launch installs packages, in a mode whose container this tool runs.

    An existing server keeps its own virtualenv settings: nothing is carried for it. Nor for a stack
    whose container.env sets XINFERENCE_ENABLE_VIRTUAL_ENV=0 (an image with every package baked in):
    its models then launch in the image's own environment."""
    if cfg.mode == "existing" or cfg.container.env.get("XINFERENCE_ENABLE_VIRTUAL_ENV") == "0":
        return []
    catalog = catalog or pinned_catalog()
    return [p for p in (model_packages(m, catalog, cuda_version) for m in cfg.enabled_models) if p.wanted]


def virtualenv_env() -> dict[str, str]:
    """The container env of a stack that carries engine packages: virtualenvs on, installed offline
    from the carried folder only (pip.conf names it as the index xoscar's uv is given)."""
    return {
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "1",
        "XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL": "1",
        "XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS": CONTAINER_PACKAGES_DIR,
        "PIP_CONFIG_FILE": f"{CONTAINER_PACKAGES_DIR}/pip.conf",
        "UV_OFFLINE": "1",
    }


def launch_kwargs() -> dict[str, object]:
    """What a launch of a model that carries packages adds to its body (a stack's extra wins)."""
    return {"enable_virtual_env": True, "virtual_env_find_links": [CONTAINER_PACKAGE_WHEELS]}


def pip_conf() -> str:
    """The pip.conf of the carried folder, as the container sees it (xinference inherits pip's config)."""
    return ("# Written by `bundle build`: the engine wheels this bundle carries, the only package source of\n"
            "# the models' virtualenvs (XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL=1 needs an index_url).\n"
            f"[global]\nindex-url = {CONTAINER_PACKAGE_WHEELS}\nfind-links = {CONTAINER_PACKAGE_WHEELS}\n")
