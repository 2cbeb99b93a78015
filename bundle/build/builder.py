"""The Builder behind `python -m bundle build` (bundle/build/command.py: its options and the layout it writes):
every item of the stacks' merged plan carried into the bundle directory, reusing what is already
there, then the SBOM, and MANIFEST.json written last."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import posixpath
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, TextIO

from bundle.build import wheel_lock
from bundle.contents.items import IMAGE_DIR, PULUMI_PLUGINS, SBOM_NAME, image_tar_name
from bundle.build.docker_image import check_image_tar, docker_save
from bundle.build.engine_wheels import package_record, resolve_model
from bundle.build.fetch import HUB_BOOKKEEPING, download_model, list_source_files
from bundle.format.errors import FetchError, SetupError
from bundle.format.filecopy import HashCache, copy_with_sha256, link_or_copy, remove_partials
from bundle.format.image_dir import ImageDirError, image_dir_of, prune_cache, split_tar_cached
from bundle.format.delta import base_of
from bundle.format.layout import INSTALL_RECORD, PROJECT_MARKER
from bundle.format.manifest import (MANIFEST_NAME, BundleError, FileEntry, Manifest, StackEntry, load_manifest,
                                    write_atomic)
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.progress import Progress, bars_wanted
from bundle.build.image_env import image_env
from bundle.build.program import program_files
from bundle.build.pulumi_release import PULUMI_RELEASES, download_toolchain, locate_toolchain, toolchain_versions
from bundle.build.sbom import ImageFacts, SbomInputs, model_facts, sbom_json
from bundle.contents.stacks import ModelDir, LoadedStack, model_sources, merge_stacks, stack_entry
from stackspec.engine_packages import pip_conf, stack_packages


PROJECT_ROOT = Path(__file__).resolve().parents[2]  # bundle/build/builder.py -> the checkout
PULUMI_REQUIRED = ("pulumi", "pulumi-language-python")


@dataclass
class BuildOptions:
    """What the command line gives `build` besides the stack."""

    out: Path
    project: Path = PROJECT_ROOT  # the checkout carried as program/ (holds Pulumi.yaml)
    image_tar: Optional[Path] = None
    pulumi_dir: Optional[Path] = None
    pulumi_url: str = PULUMI_RELEASES
    pulumi_checksums: Optional[Path] = None  # sha256sum lines for the release archives
    wheels_from: Optional[Path] = None
    requirements: Optional[Path] = None  # default: the project's requirements.lock
    python_version: Optional[str] = None
    platforms: list[str] = field(default_factory=list)
    cache_dir: Optional[Path] = None
    hub_offline: bool = False
    full: bool = False
    quiet: bool = False
    base: Optional[Manifest] = None  # --base OLD: a delta on that bundle (bundle/format/delta.py)
    image_form: str = "layers"  # "layers": the tar's members as bundle files (bundle/format/image_dir.py); "tar"


@dataclass
class ItemReport:
    """One line of the summary: a bundle item, its size, and what this build had to fetch."""

    path: str
    what: str
    files: int = 0
    size: int = 0
    fetched_files: int = 0
    fetched_size: int = 0


class Builder:
    """Builds (or refreshes) one bundle directory for one or more stacks."""

    def __init__(self, stacks: list[LoadedStack], options: BuildOptions, out: TextIO):
        self.stacks, self.opts, self.stdout = stacks, options, out
        self.wanted_by: dict[str, list[LoadedStack]] = {}  # bundle item path -> the stacks that want it
        self.out = options.out.absolute()
        self.cache_dir = (options.cache_dir or self.out.parent / f".{self.out.name}.build-cache").absolute()
        self.hashes = HashCache(self.cache_dir / "hashes.json")
        self.entries: dict[str, FileEntry] = {}
        self.model_dirs_done: set[str] = set()
        self.reports: list[ItemReport] = []
        self.image_ids: dict[str, Optional[str]] = {}  # image bundle path -> the id its tar loads as
        self.image_tars: dict[str, Path] = {}  # image bundle path -> its tar here (engine packages read it)
        self.image_dirs: dict[str, str] = {}  # image bundle path -> the directory keeping its members
        self.image_splits: set[Path] = set()  # the cache's member files this build links into the bundle
        self.engine_records: list[dict] = []  # packages.json's models (the SBOM's model -> wheel dependencies)
        self.pulumi_versions: dict[str, str] = {}  # executable name -> version (for the SBOM)
        self.sbom_report = ItemReport(SBOM_NAME, "")
        self.progress = Progress(None, "build", bars_wanted(options.quiet))

    # -- the whole build ----------------------------------------------------------------------

    def build(self) -> Manifest:
        merged = merge_stacks(self.stacks, self.opts.image_tar)
        self.wanted_by = merged.wanted_by
        model_dirs = model_sources(self.stacks)
        if not (self.opts.project / PROJECT_MARKER).is_file():
            raise SetupError(f"--project {self.opts.project}: has no {PROJECT_MARKER}: not the project checkout "
                             "(the bundle carries it as program/)")
        self._prepare_out_dir()
        previous = self._previous_manifest()
        try:
            for item in merged.items:
                report = ItemReport(item.path, item.what)
                self.reports.append(report)
                handler = getattr(self, f"_{item.role}")
                handler(item, report, model_dirs)
                self.hashes.save()  # an interrupted build keeps what it already hashed
        finally:
            self.progress.close()
        stacks = {stack.name: self._with_image_id(stack_entry(stack, merged.per_stack[stack.name]))
                  for stack in self.stacks}
        self._write_sbom(stacks, model_dirs)
        self._remove_stale()
        prune_cache(self.cache_dir / "image-members", self.image_splits)
        self.hashes.forget_except(set(self.entries))
        self.hashes.save()
        manifest = Manifest(
            stacks=stacks,
            files=sorted(self.entries.values(), key=lambda e: e.path),
            created=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            python=self.opts.python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
        )
        if self.opts.base is not None:
            manifest.base = base_of(self.opts.base, manifest)
        if previous is not None and dataclasses.replace(previous, created=manifest.created) == manifest:
            manifest.created = previous.created  # same content, same bundle id
        manifest.save(self.out)
        return manifest

    def _previous_manifest(self) -> Optional[Manifest]:
        """The manifest of the bundle being refreshed (then removed: a rebuild is under way)."""
        try:
            previous = load_manifest(self.out)
        except BundleError:
            previous = None
        (self.out / MANIFEST_NAME).unlink(missing_ok=True)
        (self.out / SIGNATURE_NAME).unlink(missing_ok=True)  # it signed the old manifest: sign the new one anew
        return previous

    def _prepare_out_dir(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise SetupError(f"--out {out}: exists and is not a directory")
        is_ours = (out / MANIFEST_NAME).exists() or (self.cache_dir / "hashes.json").exists()
        if out.is_dir() and any(out.iterdir()) and not is_ours:
            raise SetupError(f"--out {out}: is not empty and is not a bundle built here; choose a new directory "
                             "(build deletes files of its output directory that the bundle does not need)")
        out.mkdir(parents=True, exist_ok=True)
        remove_partials(out)

    def _with_image_id(self, entry: StackEntry) -> StackEntry:
        if not entry.image_tar:
            return entry
        image_dir = self.image_dirs.get(entry.image_tar)
        return dataclasses.replace(entry, image_id=self.image_ids.get(entry.image_tar), image_dir=image_dir,
                                   image_tar=None if image_dir else entry.image_tar)

    # -- one handler per role of bundle_items -------------------------------------------------

    def _image(self, item, report: ItemReport, _dirs) -> None:
        images = [stack.cfg.image for stack in self.wanted_by[item.path]]  # one name, maybe several tars
        image = images[0].name
        here = next((Path(i.tar) for i in images if i.tar and Path(i.tar).is_file()), None)
        tar = self.opts.image_tar
        if tar is not None:
            if not tar.is_file():
                raise SetupError(f"--image-tar {tar}: no such file")
        elif here is not None:
            tar = here
        else:
            tar = docker_save(image, images[0].tar, self.cache_dir / "images", self._say)
        self.image_ids[item.path] = check_image_tar(tar, image)
        self.image_tars[item.path] = tar
        if self.opts.image_form == "layers":
            self._carry_members(tar, item.path, report)
            return
        # Linked whatever its folder (copied only across file systems): `pack` re-hashes every file as
        # it reads it, so a tar rewritten in place after this build is refused there, not shipped.
        self._carry_file(tar, item.path, "image", None, report, link=True)

    def _carry_members(self, tar: Path, item_path: str, report: ItemReport) -> None:
        """The tar's members as bundle files under images/NAME/ (split once into the cache, hashed on the
        way, then hard-linked like the tar was)."""
        try:
            root, members = split_tar_cached(tar, self.cache_dir / "image-members", self.progress.update)
        except ImageDirError as exc:
            raise SetupError(str(exc)) from None
        image_dir = self.image_dirs[item_path] = image_dir_of(item_path)
        report.path = image_dir + "/"
        self.image_splits.add(root)
        for member in members:
            rel = f"{image_dir}/{member.name}"
            self.hashes.record(rel, (root / member.name).stat(), member.sha256)  # a link of it is not read again
            self._carry_file(root / member.name, rel, "image", None, report, link=True)

    def _model(self, item, report: ItemReport, dirs: dict[str, ModelDir]) -> None:
        if item.path in self.model_dirs_done:  # a companion two models share
            report.what += " (shared, already in the bundle)"
            return
        self.model_dirs_done.add(item.path)
        model_dir = dirs[item.path]
        source_dir = download_model(model_dir.source, self.cache_dir, self.opts.hub_offline, self.opts.quiet)
        files = list(list_source_files(source_dir, HUB_BOOKKEEPING if model_dir.hub else frozenset()))
        if not files:
            raise FetchError(f"{item.what}: {source_dir} holds no files")
        self._carry_tree(files, item.path, "model", item.model, report, link=model_dir.hub)

    def _wheel(self, item, report: ItemReport, _dirs) -> None:
        requirements = self.opts.requirements or wheel_lock.default_requirements(self.opts.project)
        if not requirements.is_file():
            raise SetupError(f"--requirements {requirements}: no such file")
        args = wheel_lock.pip_args(self.opts.python_version, self.opts.platforms)
        if self.opts.wheels_from is not None:
            wheel_dir = self.opts.wheels_from
            names = wheel_lock.resolve_offline(wheel_dir, requirements, args)
        else:
            wheel_dir, names = wheel_lock.download(requirements, self.cache_dir, args, self.opts.quiet, self._say)
        wheels = wheel_lock.locked_wheels(wheel_dir, names)
        self._carry_tree([(name, wheel_dir / name) for name in names], item.path, "wheel", None, report,
                        link=wheel_dir.is_relative_to(self.cache_dir))
        carried = self._cache_text("wheels", "requirements.txt", wheel_lock.carried_requirements(wheels, requirements))
        self._carry_file(carried, item.path + "requirements.txt", "wheel", None, report)

    def _packages(self, item, report: ItemReport, _dirs) -> None:
        """The engine wheels of every model whose virtualenv installs packages, for its stack's image."""
        sources: dict[str, Path] = {}  # wheel file name -> the cached file
        records = self.engine_records
        for stack in self.wanted_by[item.path]:
            tar = self.image_tars.get(posixpath.join(IMAGE_DIR, image_tar_name(stack.cfg.image.name))) \
                if stack.cfg.image else None
            if tar is None:
                raise SetupError(f"stack {stack.name}: its models install engine packages, which are resolved for "
                                 "the image's Python, but the stack carries no image")
            env = image_env(tar, self.cache_dir)
            for packages in stack_packages(stack.cfg, cuda_version=env.cuda_version):
                wheels = resolve_model(packages, env, self.cache_dir, self._say)
                for name in wheels.files:
                    sources.setdefault(name, wheels.directory / name)  # type: ignore[operator]
                records.append(package_record(stack.name, wheels, env))
        owner = records[0]["model"]  # the manifest names one model per file; the folder serves several
        self._carry_tree(sorted(sources.items()), item.path + "wheels/", "model", owner, report, link=True)
        for name, text in (("packages.json", json.dumps({"models": records}, indent=1, sort_keys=True) + "\n"),
                           ("pip.conf", pip_conf())):
            self._carry_file(self._cache_text("engine-wheels", name, text), item.path + name, "model", owner, report)

    def _cache_text(self, folder: str, name: str, text: str) -> Path:
        """A small file the build writes for the bundle, kept content-addressed in the cache (a rewrite of
        the same bytes would look like a change)."""
        data = text.encode()
        stem, dot, ext = name.rpartition(".")
        path = self.cache_dir / folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}{dot}{ext}"
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        return path

    def _pulumi(self, item, report: ItemReport, _dirs) -> None:
        if self.opts.pulumi_dir is not None:
            toolchain = locate_toolchain(self.opts.pulumi_dir)
        else:
            self._say(f"build: downloading the Pulumi CLI and plugins from {self.opts.pulumi_url}")
            toolchain = download_toolchain(self.cache_dir, self.opts.pulumi_url, self.opts.hub_offline,
                                           checksums_file=self.opts.pulumi_checksums)
        binaries = [(name, toolchain.bin_dir / name) for name in sorted(os.listdir(toolchain.bin_dir))
                    if name.startswith("pulumi") and (toolchain.bin_dir / name).is_file()]
        plugins = []
        if toolchain.plugins_dir is not None:
            plugins = [(rel, path) for rel, path in list_source_files(toolchain.plugins_dir)
                       if not rel.endswith((".lock", ".partial")) and "/" in rel]
        names = {name for name, _ in binaries}
        missing = [n for n in PULUMI_REQUIRED if n not in names]
        for plugin in PULUMI_PLUGINS:
            binary = f"pulumi-resource-{plugin}"
            if binary not in names and not any(rel.startswith(f"resource-{plugin}-v") and rel.endswith("/" + binary)
                                               for rel, _ in plugins):
                missing.append(binary)
        if missing:
            where = self.opts.pulumi_dir or toolchain.bin_dir
            raise SetupError(f"the Pulumi toolchain in {where} lacks {', '.join(missing)}; build them with "
                             "tools/pulumi_toolchain.py (or point --pulumi-dir at a complete toolchain)")
        downloaded = toolchain.bin_dir.is_relative_to(self.cache_dir)
        self.pulumi_versions = toolchain_versions(toolchain, downloaded)
        self._carry_tree(binaries, item.path + "bin/", "pulumi", None, report, link=downloaded)
        self._carry_tree(plugins, item.path + "plugins/", "pulumi", None, report, link=downloaded)

    def _program(self, item, report: ItemReport, _dirs) -> None:
        files, notes = program_files(self.opts.project, excluded_dirs=(self.out, self.cache_dir),
                                     excluded_names=(INSTALL_RECORD,))
        for note in notes:
            print(f"build: program: {note}", file=sys.stderr)
        self._carry_tree(files, item.path, "program", None, report)

    def _stack(self, item, report: ItemReport, _dirs) -> None:
        self._carry_file(self.wanted_by[item.path][0].path, item.path, "stack", None, report)

    # -- file plumbing ------------------------------------------------------------------------

    def _sbom(self, item, report: ItemReport, _dirs) -> None:
        self.sbom_report = report  # written by _write_sbom once every other item is carried: it lists them

    def _write_sbom(self, stacks: dict[str, StackEntry], model_dirs: dict[str, ModelDir]) -> None:
        """sbom.cdx.json (bundle/build/sbom.py) of what this build carries, carried like the other files."""
        images = []
        for path, tar in sorted(self.image_tars.items()):
            try:
                env, unread = image_env(tar, self.cache_dir), None
            except SetupError as exc:  # an image without the Python we read: listed, its packages not
                env, unread = None, str(exc)
                self._say(f"build: sbom: {path}: its packages are not listed ({exc})")
            images.append(ImageFacts(self.wanted_by[path][0].cfg.image.name, self.image_dirs.get(path, path),
                                     self.image_ids.get(path), env, unread))
        models = model_facts([(s.cfg, stacks[s.name].models) for s in self.stacks],
                             {d: m.source for d, m in model_dirs.items()})
        text = sbom_json(SbomInputs(list(self.entries.values()), images, models, self.engine_records,
                                    self.pulumi_versions, sorted(stacks)))
        self._carry_file(self._cache_text("sbom", SBOM_NAME, text), SBOM_NAME, "other", None, self.sbom_report)

    def _carry_tree(self, files: Iterable[tuple[str, Path]], prefix: str, role: str, model: Optional[str],
                   report: ItemReport, link: bool = False) -> None:
        for rel, src in files:
            self._carry_file(src, prefix + rel, role, model, report, link)

    def _carry_file(self, src: Path, rel: str, role: str, model: Optional[str], report: ItemReport,
                   link: bool = False) -> None:
        """Make out/rel hold src's content; reuse it when size and mtime already match."""
        dest = self.out / rel
        src_stat = src.stat()
        try:
            dest_stat = dest.lstat()
        except FileNotFoundError:
            dest_stat = None
        same = (not self.opts.full and dest_stat is not None and dest.is_file() and not dest.is_symlink()
                and dest_stat.st_size == src_stat.st_size and dest_stat.st_mtime_ns == src_stat.st_mtime_ns)
        if same:
            sha = self.hashes.sha256(rel, dest, self.progress.update)
        else:
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            sha = link_or_copy(src, dest, self.progress.update) if link else \
                copy_with_sha256(src, dest, progress=self.progress.update, fsync=False)
            if sha is None:  # hard-linked: hash it once (the cache remembers it)
                sha = self.hashes.sha256(rel, dest, self.progress.update)
            else:
                self.hashes.record(rel, dest.stat(), sha)
            report.fetched_files += 1
            report.fetched_size += src_stat.st_size
        if rel in self.entries:
            raise SetupError(f"{rel}: two sources want the same bundle file; give the models distinct paths")
        self.entries[rel] = FileEntry(rel, src_stat.st_size, sha, role, model)
        report.files += 1
        report.size += src_stat.st_size

    def _remove_stale(self) -> None:
        """Delete what an earlier build put in the bundle that this one did not produce."""
        keep = set(self.entries)
        for dirpath, dirnames, filenames in os.walk(self.out, topdown=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                if os.path.relpath(path, self.out).replace(os.sep, "/") not in keep:
                    os.unlink(path)
            if dirpath != str(self.out) and not os.listdir(dirpath):
                os.rmdir(dirpath)

    def _say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, file=sys.stderr)

