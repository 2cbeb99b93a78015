"""What one bundle for several stacks holds: a pure function of the stack configs.

A site runs one stack per server and carries one archive. The stacks' items are merged by
bundle path (what they share is carried once); a model directory two stacks fill from
different sources is refused, naming both; each stack keeps its own facts (StackEntry: its
image, host model directory, model directories and models) for install and the program.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from bundle.contents.items import BundleItem, bundle_items, model_bundle_dir
from bundle.format.errors import SetupError
from bundle.format.manifest import StackEntry
from stackspec.config import StackConfig
from stackspec.docker_host import remote_docker_hostname
from stackspec.engine_packages import stack_packages
from stackspec.errors import ConfigError
from stackspec.launch import cluster_container_name, models_dir_of
from stackspec.stack_file import from_stack_file, stack_name_of
from stackspec.xinference import PACKAGES_DIR


@dataclass(frozen=True)
class LoadedStack:
    """One stack the bundle is built for."""

    name: str
    cfg: StackConfig
    path: Path  # its stack file


@dataclass(frozen=True)
class Source:
    """A model directory's origin (the fields of the stack config's ModelSource)."""

    hub: str  # modelscope | huggingface | local
    id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[str] = None

    def describe(self) -> str:
        if self.hub == "local":
            return f"local {self.path}"
        return f"{self.hub} {self.id}@{self.revision or 'default'}"


@dataclass(frozen=True)
class ModelDir:
    """A model (or companion) directory: where it goes in the bundle and on the host, where it comes from."""

    bundle_dir: str  # models/<path>/ as bundle_items names it
    host_path: str  # relative to models_dir, or absolute
    source: Source
    hub: bool


@dataclass
class MergedItems:
    """The merged items of every stack, and who wants each."""

    items: list[BundleItem]  # each bundle path once, in the order the stacks list them
    per_stack: dict[str, list[BundleItem]]
    wanted_by: dict[str, list[LoadedStack]]  # bundle path -> the stacks that want it


def merge_stacks(stacks: list[LoadedStack], image_tar: Optional[Path] = None) -> MergedItems:
    """Every stack's items, each bundle path once; ``image_tar`` (one tar for all) needs one image."""
    merged: dict[str, BundleItem] = {}
    per_stack: dict[str, list[BundleItem]] = {}
    wanted_by: dict[str, list[LoadedStack]] = {}
    for stack in stacks:
        per_stack[stack.name] = bundle_items(stack.cfg, stack.name)
        for item in per_stack[stack.name]:
            merged.setdefault(item.path, item)
            wanted_by.setdefault(item.path, []).append(stack)
    images = {stack.cfg.image.name for stack in stacks if any(i.role == "image" for i in per_stack[stack.name])}
    if image_tar is not None and len(images) > 1:
        raise SetupError(f"--image-tar: the stacks use {len(images)} images ({', '.join(sorted(images))}); "
                         "give each stack's tar as image.tar in its stack file instead")
    clashes = stack_clashes(stacks)
    if clashes:
        raise SetupError("the stacks collide on a shared docker host:\n" + "\n".join(f"  {c}" for c in clashes))
    return MergedItems(list(merged.values()), per_stack, wanted_by)


def stack_entry(stack: LoadedStack, items: list[BundleItem]) -> StackEntry:
    """The manifest's facts about one stack."""
    cfg = stack.cfg
    image_item = next((i for i in items if i.role == "image"), None)
    models: dict[str, list[str]] = {}
    model_dirs: dict[str, str] = {}
    # A model that installs packages has the carried wheel folder as one more of its directories:
    # install puts it into models_dir, and a changed wheel relaunches the model (its digest).
    with_packages = {p.uid for p in stack_packages(cfg)}
    for model in cfg.enabled_models:
        paths = [model.path or model.uid, *(c.path for c in model.companions)]
        paths += [PACKAGES_DIR] if model.uid in with_packages else []
        models[model.uid] = [model_bundle_dir(p).rstrip("/") for p in paths]
        model_dirs.update({model_bundle_dir(p).rstrip("/"): p for p in paths})
    return StackEntry(image=cfg.image.name if image_item else None,
                      image_tar=image_item.path if image_item else None,
                      models_dir=cfg.models_dir, model_dirs=model_dirs, models=models)


def model_sources(stacks: list[LoadedStack]) -> dict[str, ModelDir]:
    """{bundle dir: ModelDir} of every stack's enabled models and their companions."""
    dirs: dict[str, ModelDir] = {}
    first_stack: dict[str, str] = {}
    for stack in stacks:
        for model in stack.cfg.enabled_models:
            local_root = models_dir_of(stack.cfg, model)
            pairs = [(model.path or model.uid, model.source)]
            pairs += [(c.path, c.source) for c in model.companions]
            for host_path, source in pairs:
                if source is None:
                    here = host_path if host_path.startswith("/") else os.path.join(local_root, host_path)
                    src, hub = Source("local", path=here), False
                else:
                    src, hub = Source(source.hub, source.id, source.revision, source.path), source.hub != "local"
                bundle_dir = model_bundle_dir(host_path)
                known = dirs.get(bundle_dir)
                if known is not None and known.source != src:
                    raise SetupError(f"{bundle_dir}: stack {first_stack[bundle_dir]} fills it from {known.source}, "
                                     f"stack {stack.name} (model {model.uid}) from {src}; give one of them "
                                     "another path, or the same source")
                if known is None:
                    dirs[bundle_dir] = ModelDir(bundle_dir, host_path, src, hub)
                    first_stack[bundle_dir] = stack.name
    return dirs


def _claims(cfg: StackConfig) -> Iterator[tuple[str, str, str]]:
    """(remote host, what, value) for each container name, host port and GPU the stack takes there.

    A local socket is a different machine for every stack (each server runs its own stack),
    so only remote docker hosts can be shared by two stacks of a site.
    """
    if cfg.mode == "docker":
        host = remote_docker_hostname(cfg.docker.host)
        if host:
            yield host, "container", cfg.container.name
            yield host, "port", str(cfg.container.port)
            yield from ((host, "GPU", str(gpu)) for gpu in cfg.gpu_ids)
    elif cfg.mode == "cluster":
        for server in cfg.servers:
            host = remote_docker_hostname(server.docker.host)
            if host:
                if server.supervisor:
                    yield host, "container", cluster_container_name(cfg, "supervisor")
                yield host, "container", cluster_container_name(cfg, "worker")
                yield from ((host, "GPU", str(gpu)) for gpu in server.gpu_ids)


@dataclass(frozen=True)
class Clash:
    """One container name, host port or GPU that several stacks take on one remote docker host."""

    host: str
    what: str  # "container", "port" or "GPU"
    value: str
    stacks: tuple[str, ...]

    def __str__(self) -> str:
        key = {"container": "container.name", "port": "container.port", "GPU": "gpus"}[self.what]
        return (f"{self.host}: {self.what} {self.value} is taken by stacks {', '.join(self.stacks)}; fix: give "
                f"each stack its own docker.host (servers[].docker.host in a cluster), or a distinct {key}")


def stack_clashes(stacks: list[LoadedStack]) -> list[Clash]:
    """What two stacks of one site would both take on one remote docker host.

    The usual cause is a stack file copied for the next server with its docker.host left
    as it was: the second `pulumi up` then fails on the name or port the first stack's container
    holds, or loads its models onto a GPU the first stack budgeted for itself.
    """
    takers: dict[tuple[str, str, str], list[str]] = {}
    for stack in stacks:
        for claim in dict.fromkeys(_claims(stack.cfg)):
            takers.setdefault(claim, []).append(stack.name)
    return [Clash(host, what, value, tuple(names)) for (host, what, value), names in takers.items() if len(names) > 1]


def sibling_clashes(stack: str, cfg: StackConfig, stacks_dir: Path) -> list[Clash]:
    """stack_clashes of this stack against the other stack files of the project (stacks_dir).

    For the program's preview: an operator machine that deploys several servers over ssh
    keeps their stack files side by side. A sibling file that does not validate is skipped
    (its own preview reports it).
    """
    if next(_claims(cfg), None) is None:  # nothing on a remote host: no sibling file to read
        return []
    others = []
    for path in sorted(Path(stacks_dir).glob("Pulumi.*.yaml")):
        name = stack_name_of(path)
        if name == stack:
            continue
        try:
            others.append(LoadedStack(name, from_stack_file(path), path))
        except ConfigError:
            continue
    mine = LoadedStack(stack, cfg, Path(stacks_dir) / f"Pulumi.{stack}.yaml")
    return [clash for clash in stack_clashes([mine, *others]) if stack in clash.stacks]
