"""What `install` will write where: its targets and every destination, checked before anything is written.

Standard library only (install runs with the server's bare python3). The rules are
bundle/install/confinement.py's; this module applies them to each step of install:

  program   program/REL        -> PROJECT/REL (never into venv/, .state/, stacks/, .git/, nor over
                                  install's record or lock: those are refused one by one, the rest installs)
  pulumi    pulumi/bin/NAME    -> PULUMI_HOME/bin/NAME
            pulumi/plugins/... -> PULUMI_HOME/plugins/...
  models    models/DIR/REL     -> MODELS_DIR/HOST/REL (HOST: the manifest's model_dirs, see bundle/install/model_files.py)
  stack     stack/Pulumi.STACK.yaml -> PROJECT/stacks/Pulumi.STACK.yaml
  venv      PIP into VENV (install itself writes only its stamp there)

``find_destinations`` raises ConfinementError listing every path that has no place inside its
target, before the first byte is written. The steps' shared types (InstallError, StepResult)
live here too, so each step's module (bundle/install/command.py, bundle/install/venv.py) imports them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bundle.install.confinement import Confinement, Target, check_targets, strip_prefix, within
from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.layout import INSTALL_RECORD, PROGRAM_DIR, PROJECT_MARKER, is_site_owned
from bundle.format.manifest import FileEntry, StackManifest, UsageError
from bundle.format.progress import human, plural
from bundle.install.model_files import FilePair, model_file_pairs

STEPS = ("program", "venv", "pulumi", "models", "stack")
SITE_OWNED_REFUSAL = ("refused: the program never writes the site's own files (venv/, .state/, stacks/, .git/, "
                      "install's record and lock)")
MODELS_DIR_ORIGIN = "the stack's models_dir (from the bundle manifest; --models-dir DIR overrides it)"


class InstallError(VerifyFailed):
    """Files that could not be installed (exit 1); what did install stays installed."""


@dataclass
class StepResult:
    """What one step did: nothing, or copies/removals, or problems."""

    name: str
    copied: int = 0
    copied_bytes: int = 0
    unchanged: int = 0
    removed: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    note: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.copied or self.removed)

    def line(self) -> str:
        parts = [f"{plural(self.copied, 'file')} copied ({human(self.copied_bytes)})" if self.copied else "",
                 f"{plural(self.removed, 'stale file')} removed" if self.removed else "",
                 f"{self.unchanged} already in place" if self.unchanged else "", self.note]
        return f"  {self.name:<8} " + "; ".join(p for p in parts if p)


@dataclass
class Targets:
    """The directories this install writes into (None: its step is skipped)."""

    project: Optional[Target] = None
    venv: Optional[Target] = None
    pulumi: Optional[Target] = None
    models: Optional[Target] = None

    def all(self) -> list[Target]:
        return [t for t in (self.project, self.venv, self.pulumi, self.models) if t is not None]

    def lock_dirs(self, steps: list[str]) -> list[Path]:
        """The directories whose lock install holds (bundle/install/lock.py): each target, but a venv inside
        the project (the project's lock covers it) and a project that does not exist when only the stack
        step would write there (it writes nothing into a directory without Pulumi.yaml)."""
        dirs = []
        for target in self.all():
            if target is self.venv and self.project is not None and within(target.real, self.project.real):
                continue
            if target is self.project and "program" not in steps and not target.path.is_dir():
                continue
            dirs.append(target.path)
        return dirs


def resolve_targets(args: argparse.Namespace, manifest: StackManifest, steps: list[str]) -> Targets:
    """The targets the command line names (or the stack, where it names none), for the steps that run."""
    project_path = args.project.absolute()
    targets = Targets()
    if "program" in steps or "stack" in steps:
        targets.project = Target("--project", project_path)
    if "venv" in steps:
        targets.venv = Target("--venv", args.venv) if args.venv else \
            Target("--venv", project_path / "venv", origin="the venv (default: --project DIR/venv)")
    if "pulumi" in steps:
        targets.pulumi = Target("--pulumi-home", args.pulumi_home.expanduser())
    if "models" in steps:
        if args.models_dir is not None:
            targets.models = Target("--models-dir", args.models_dir)
        elif manifest.models_dir:
            targets.models = Target("--models-dir", Path(manifest.models_dir), origin=MODELS_DIR_ORIGIN)
        elif manifest.model_dirs:
            raise UsageError("--models-dir: the bundle names no models_dir; give the host model directory")
    return targets


@dataclass
class Destinations:
    """Every file install will write, with its checked destination and install-record key."""

    program: list[FilePair] = field(default_factory=list)
    program_refused: list[FileProblem] = field(default_factory=list)  # site-owned: refused one by one
    pulumi: list[FilePair] = field(default_factory=list)
    models: list[tuple[Path, str, list[FilePair]]] = field(default_factory=list)
    stack: Optional[tuple[FileEntry, Path]] = None


def find_destinations(bundle: Path, manifest: StackManifest, targets: Targets) -> tuple[Destinations, Confinement]:
    """Every file's destination, each checked; ConfinementError (nothing written) when any has no place."""
    check_targets(bundle, targets.all())
    confinement = Confinement(bundle, targets.all())
    dests = Destinations()
    if targets.project is not None:
        _place_program(manifest, targets.project, confinement, dests)
        _place_stack(manifest, targets.project, confinement, dests)
    if targets.pulumi is not None:
        for entry in manifest.role("pulumi"):
            rel = strip_prefix(entry.path, "pulumi/")
            if rel is None or not rel.startswith(("bin/", "plugins/")):
                confinement.refuse(entry.path, f"role pulumi, but not under pulumi/bin/ or pulumi/plugins/: it has no "
                                               f"place in {targets.pulumi} (install writes there only bin/ and "
                                               "plugins/); get the bundle again, or rebuild it")
                continue
            dest = confinement.place(targets.pulumi, rel, entry.path)
            if dest is not None:
                dests.pulumi.append((entry, dest, rel))
    if targets.models is not None:
        dests.models = model_file_pairs(manifest, targets.models, confinement)
    confinement.check()
    return dests, confinement


def _place_program(manifest: StackManifest, project: Target, confinement: Confinement, dests: Destinations) -> None:
    prefix = PROGRAM_DIR + "/"
    for entry in manifest.role("program"):
        rel = strip_prefix(entry.path, prefix)
        if rel is None:
            confinement.refuse(entry.path, f"role program, but not under {prefix}: it has no place in {project}; "
                                           "get the bundle again, or rebuild it")
            continue
        if is_site_owned(rel):  # refused one by one, whatever else is wrong with it: it is never written
            dests.program_refused.append(FileProblem(entry.path, SITE_OWNED_REFUSAL))
            continue
        dest = confinement.place(project, rel, entry.path)
        if dest is not None:
            dests.program.append((entry, dest, rel))


def _place_stack(manifest: StackManifest, project: Target, confinement: Confinement, dests: Destinations) -> None:
    entries = manifest.role("stack")
    if not entries:
        return
    name = f"Pulumi.{manifest.stack}.yaml"
    entry = entries[0]
    if len(entries) > 1 or entry.path != f"stack/{name}" or "/" in manifest.stack:
        listed = ", ".join(e.path for e in entries)
        confinement.refuse(entry.path, f"the stack file of stack {manifest.stack!r} is stack/{name} (one file), the "
                                       f"manifest lists {listed}: it has no place in {project}/stacks; get the "
                                       "bundle again, or rebuild it")
        return
    dest = confinement.place(project, f"stacks/{name}", entry.path)
    if dest is not None:
        dests.stack = (entry, dest)


def project_problem(project: Path, ignored: tuple[str, ...]) -> Optional[str]:
    """Why the program must not be installed into ``project`` (None: new, empty, or a checkout).

    ``ignored``: install's own files (its lock), which do not make a directory non-empty."""
    if not project.exists():
        return None
    if not project.is_dir():
        return "exists and is not a directory"
    if (project / PROJECT_MARKER).is_file() or (project / INSTALL_RECORD).is_file():
        return None
    if not [name for name in os.listdir(project) if name not in ignored]:
        return None
    return (f"is not empty and holds no {PROJECT_MARKER}: not the project checkout; pass --project DIR (the "
            "checkout, or a new directory), or --skip program")
