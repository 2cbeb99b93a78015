"""What an offline bundle for a stack must hold: a pure function of the stack config.

`plan` prints it, `build` fetches it, `verify`/`plan --bundle` check a bundle against it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Optional

from bundle.format.layout import PROGRAM_DIR
from stackspec.config import ModelSource, StackConfig
from stackspec.engine_packages import stack_packages
from stackspec.errors import ConfigError, Problem
from stackspec.launch import models_dir_of
from stackspec.rules import ModelDirs
from stackspec.stack_file import from_stack_file
from stackspec.xinference import PACKAGES_DIR

IMAGE_DIR = "images"
MODELS_DIR = "models"
WHEELS_DIR = "wheels"
PULUMI_DIR = "pulumi"
STACK_DIR = "stack"
PULUMI_PLUGINS = ("docker", "command")
SBOM_NAME = "sbom.cdx.json"  # written by bundle/build/sbom.py, read by bundle/plan/sbom_summary.py
SBOM_KIND = "xinference-offline:kind"  # the property that says what each SBOM component is


@dataclass(frozen=True)
class BundleItem:
    """One thing the bundle carries: a file or a directory (path ends with /)."""

    role: str  # image | model | packages | wheel | pulumi | program | stack
    path: str  # relative to the bundle root
    what: str  # human description
    model: Optional[str] = None  # uid for role "model"
    source: Optional[ModelSource] = None


def image_tar_name(image: str) -> str:
    """`xprobe/xinference:v4.1.0` -> `xprobe_xinference_v4.1.0.tar` (a safe single file name)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in image) + ".tar"


def model_bundle_dir(path: str) -> str:
    # The model's directory under models_dir becomes models/<same relative path> in the bundle.
    return posixpath.join(MODELS_DIR, path.strip("/").split("/")[-1] if path.startswith("/") else path) + "/"


def packages_bundle_dir() -> str:
    """models/_engine_packages/: installed into models_dir beside the models, mounted with them."""
    return model_bundle_dir(PACKAGES_DIR)


def carry_problems(cfg: StackConfig) -> list[Problem]:
    """What the stack allows but a bundle cannot carry. `install` writes models only under the
    models directory (it is the one target it is given), so a model an existing server reads
    from an absolute path elsewhere could be deployed, but never installed from a bundle."""
    problems = []
    for i, model in enumerate(cfg.models):
        if not model.enabled:
            continue
        models_dir = models_dir_of(cfg, model).rstrip("/") + "/"
        dirs = [(f"models[{i}].path", model.path)]
        dirs += [(f"models[{i}].companions[{j}].path", c.path) for j, c in enumerate(model.companions)]
        if (model.path or model.uid).strip("/") == PACKAGES_DIR or any(c.path.strip("/") == PACKAGES_DIR
                                                                        for c in model.companions):
            problems.append(Problem(f"models[{i}]", model.path or model.uid, f"names {PACKAGES_DIR}, the directory of "
                                    "models_dir where the bundle puts the engine packages of the models' virtualenvs",
                                    "give the model (or its companion) another path"))
        for at, path in dirs:
            if path and path.startswith("/") and not (posixpath.normpath(path) + "/").startswith(models_dir):
                problems.append(Problem(at, path, f"is outside models_dir {models_dir.rstrip('/')}, where "
                                                  "`bundle install` puts every model it carries",
                                        f"move the model under {models_dir.rstrip('/')} and write its path relative "
                                        "to it, or set enabled: false to leave it out of the bundle"))
    return problems


def carried_stack(path, model_dirs: Optional[ModelDirs] = None) -> StackConfig:
    """The stack file read for a bundle: the config's own checks, then carry_problems (ConfigError).
    ``model_dirs``: where the models' files are here, for the VRAM estimates (stackspec.rules.server_budgets)."""
    cfg = from_stack_file(path, model_dirs)
    problems = carry_problems(cfg)
    if problems:
        raise ConfigError(problems, source=str(path))
    return cfg


def bundle_items(cfg: StackConfig, stack: str) -> list[BundleItem]:
    items: list[BundleItem] = []
    if cfg.mode != "existing" and cfg.image is not None:
        items.append(BundleItem("image", posixpath.join(IMAGE_DIR, image_tar_name(cfg.image.name)),
                                f"docker save of {cfg.image.name}"))
    for model in cfg.enabled_models:
        source = model.source
        described = f"{source.hub} {source.id or source.path}" + (f"@{source.revision}" if source.revision else "") \
            if source else "copied from the existing model directory"
        items.append(BundleItem("model", model_bundle_dir(model.path or model.uid), f"{model.uid}: {described}",
                                model=model.uid, source=source))
        for companion in model.companions:
            items.append(BundleItem("model", model_bundle_dir(companion.path),
                                    f"companion of {model.uid}: {companion.path}", model=model.uid,
                                    source=companion.source))
    carrying = stack_packages(cfg)
    if carrying:
        items.append(BundleItem("packages", packages_bundle_dir(), "engine packages (wheels for the image's Python, "
                                "resolved at build) of " + ", ".join(p.uid for p in carrying)))
    items.append(BundleItem("wheel", WHEELS_DIR + "/", "Python wheels of requirements.lock, hash-pinned (offline install)"))
    items.append(BundleItem("pulumi", PULUMI_DIR + "/", "Pulumi CLI, python language host, plugins "
                            + ", ".join(PULUMI_PLUGINS)))
    items.append(BundleItem("program", PROGRAM_DIR + "/",
                            "the Pulumi program and the bundle tool (this project's files)"))
    items.append(BundleItem("stack", posixpath.join(STACK_DIR, f"Pulumi.{stack}.yaml"), "the stack file"))
    items.append(BundleItem("sbom", SBOM_NAME, "CycloneDX 1.6 SBOM of all the above (the image's packages, "
                            "wheels, Pulumi, models with their revisions)"))
    return items
