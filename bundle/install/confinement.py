"""Where install may write: every destination checked inside its target before the first byte.

Standard library only (install runs with the server's bare python3).

The targets are the directories the command line names, or, where it names none, the stack:

  --project DIR       the program's files, stacks/Pulumi.STACK.yaml, .state/ (default: .)
  --venv DIR          the venv (default: PROJECT/venv; pip writes there, install only its stamp)
  --pulumi-home DIR   bin/ and plugins/ (default: ~/.pulumi)
  --models-dir DIR    every model directory (default: the stack's models_dir in the manifest)

A target given on the command line wins over the manifest: with `--models-dir OTHER` every
model directory goes under OTHER, also one the manifest gives as an absolute path under the
stack's models_dir; an absolute one elsewhere is refused. The manifest is parsed strictly
before install sees it (bundle/format/manifest_check.py), so none of what follows should ever fire
on a bundle `build` wrote; it is checked again here all the same, at the place of the write,
because a manifest is hostile input and a symlink on this disk is no concern of the parser.

Checked before anything is written, in this order:

1. the targets (``check_targets``, UsageError, exit 2, naming both paths where two meet):
   none is a system directory (/etc, /usr/bin, /proc, ...) or the top of a tree (/, /usr,
   /var, /home, ...), also through a symlink; none lies inside the bundle (install would
   write onto its own source); the bundle does not lie inside the models directory; no two
   targets are one directory;
2. the whole plan (``Confinement``, ConfinementError, exit 1, every bad path listed at once):
   each manifest path, less its role's prefix (``program/``, ``pulumi/`` then ``bin/`` or
   ``plugins/``, the model's bundle directory), must be a canonical relative path (no
   absolute path, ``//``, ``.``, ``..``); joined to its target, its parent directory resolved
   with os.path.realpath (every symlinked parent followed) must lie inside the resolved
   target, outside the bundle, and outside any other target nested in this one (a models
   directory inside the project: model files never land in the program's place, nor program
   files in the models'); each source must resolve inside the bundle. A refusal names the
   manifest path, where it would have landed and the target.

At write time each destination is checked once more, right before its temp file is made
(``recheck``): a symlink planted after the plan was checked stops the install there. What is
left is the moment between that check and the rename; install runs as root into directories
only root should be able to write, so keep them that way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from bundle.format.overlap import inside
from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.manifest import UsageError, path_problem
from bundle.format.manifest_rules import render, text_problem

FIX_MANIFEST = ("a manifest `bundle build` wrote never says this (it was rewritten): get the bundle again, or "
                "rebuild it")
# Trees no target may be or lie in: the system's own. A models_dir of /etc/x in a rewritten manifest, or
# a models directory that is a symlink into /etc, would otherwise make install (as root) write there.
SYSTEM_TREES = ("/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr/bin", "/usr/sbin", "/usr/lib",
                "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/include", "/usr/share", "/usr/local/bin",
                "/usr/local/sbin", "/boot", "/dev", "/proc", "/sys", "/run")
# Directories a target may lie in but never be: the tops of the file system's trees.
TOP_DIRS = ("/", "/usr", "/usr/local", "/var", "/var/lib", "/home", "/root", "/opt", "/srv", "/tmp", "/mnt", "/media")
MAX_LISTED = 50  # problems a refusal lists; its first line says how many there are


class ConfinementError(VerifyFailed):
    """Manifest paths that would be written outside their targets (exit 1); nothing was written."""


def within(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it (both already resolved: a lexical comparison)."""
    return path == root or root in path.parents


def shown(path: object) -> str:
    """A path for a message: as it is, or escaped when it holds a control character or lone surrogate."""
    text = str(path)
    return render(text) if text_problem(text) else text


@dataclass(frozen=True)
class Target:
    """One directory install writes into, and who named it (the command line, or the stack)."""

    flag: str  # --project, --venv, --pulumi-home, --models-dir
    path: Path  # absolute, as given
    origin: str = ""  # "" when the command line gave it; else where it came from
    real: Path = field(init=False)

    def __post_init__(self) -> None:
        if "\0" in str(self.path):  # only a rewritten manifest's models_dir can say this; realpath would raise
            raise UsageError(f"{self.origin or self.flag} {render(str(self.path))}: a NUL byte in a directory name; "
                             "give the directory with --models-dir DIR")
        object.__setattr__(self, "path", Path(os.path.abspath(self.path)))
        object.__setattr__(self, "real", Path(os.path.realpath(self.path)))

    def __str__(self) -> str:
        name = f"{self.flag} {shown(self.path)}" if not self.origin else f"{self.origin} {shown(self.path)}"
        return name if self.real == self.path else f"{name} (= {shown(self.real)})"


def system_problem(target: Target) -> Optional[str]:
    """Why ``target`` is no directory to install into (a system directory, or a tree's top)."""
    real = target.real
    for tree in SYSTEM_TREES:
        if within(real, Path(tree)):
            via = "" if real == target.path else f"resolves to {shown(real)}, "
            return (f"{via}inside {tree}, a system directory: install never writes there; give a directory of its "
                    "own (e.g. /data/docker_models for models, /opt/xinference-offline/... for the rest)")
    if str(real) in TOP_DIRS:
        via = "" if real == target.path else " (through a symlink)"
        return (f"is {shown(real)}{via}, the top of a directory tree: install fills a directory of its own; give "
                "one below it (e.g. /opt/xinference-offline/program)")
    return None


def check_targets(bundle: Path, targets: Iterable[Target]) -> None:
    """UsageError (exit 2) naming the paths, before anything is touched, for targets install must not use."""
    targets = list(targets)
    for target in targets:
        problem = system_problem(target)
        if problem:
            raise UsageError(f"{target}: {problem}")
        if inside(target.path, bundle):
            raise UsageError(f"{target}: lies inside the bundle {bundle} it installs from: install would write onto "
                             "its own source; give a directory outside the bundle")
        if target.flag == "--models-dir" and inside(bundle, target.path):
            raise UsageError(f"{target}: holds the bundle {bundle} it installs from: a model directory could land on "
                             "the bundle's files; keep the bundle outside the models directory (move it, or give "
                             "another --models-dir)")
    for index, first in enumerate(targets):
        for second in targets[index + 1:]:
            if inside(first.path, second.path) and inside(second.path, first.path):
                raise UsageError(f"{first} and {second} are one directory: each target of install needs its own "
                                 "(their files would overwrite each other's); give them different directories")


def strip_prefix(path: str, prefix: str) -> Optional[str]:
    """``path`` less ``prefix`` (which ends with /), or None when it does not start with it."""
    return path[len(prefix):] if path.startswith(prefix) and len(path) > len(prefix) else None


def naive_landing(root: Path, rel: str) -> str:
    """Where a plain join would put ``rel``: as ``root / a / b`` does, whatever follows a ``//`` (or a leading
    ``/``) is an absolute path that replaces everything before it; ``..`` climbs."""
    first, *rest = rel.split("//")
    return os.path.normpath(os.path.join(str(root), first, *("/" + piece for piece in rest)))


def symlink_on_the_way(root: Path, rel: str) -> Optional[Path]:
    """The first symlink among the directories from ``root`` down to ``rel``'s parent (``root`` resolved)."""
    here = Path(os.path.realpath(root))
    for part in rel.split("/")[:-1]:
        here = here / part
        if os.path.islink(here):
            return here
    return None


class Confinement:
    """The install plan's destinations, each checked inside its target; problems gathered, then refused at once."""

    def __init__(self, bundle: Path, targets: Iterable[Target]):
        self.bundle = Path(os.path.abspath(bundle))
        self.bundle_real = Path(os.path.realpath(bundle))
        self.targets = [t for t in targets if t is not None]
        self.problems: list[FileProblem] = []

    # -- planning: gather every problem, write nothing ---------------------------------------

    def refuse(self, where: str, message: str) -> None:
        self.problems.append(FileProblem(where, message))

    def place(self, target: Target, rel: str, manifest_path: str) -> Optional[Path]:
        """``target``/``rel`` for the file ``manifest_path``, or None (and a problem) when it would land outside."""
        problem = self.problem(target, rel)
        if problem is None:
            problem = self.source_problem(manifest_path)
        if problem:
            self.refuse(shown(manifest_path), problem)
            return None
        return target.path / rel

    def source_problem(self, manifest_path: str) -> Optional[str]:
        lexical = path_problem(manifest_path)
        if lexical:
            return (f"would be read from {shown(naive_landing(self.bundle, manifest_path))}, outside the bundle "
                    f"{self.bundle}: not a canonical relative path ({lexical}); {FIX_MANIFEST}")
        real = Path(os.path.realpath(self.bundle / manifest_path))
        if not within(real, self.bundle_real):
            return (f"would be read from {shown(real)}, outside the bundle {self.bundle} (through a symlink in the "
                    "bundle; a bundle holds regular files only): run `python -m bundle verify`, or unpack the "
                    "archive again")
        return None

    def problem(self, target: Target, rel: str) -> Optional[str]:
        """Why ``rel`` joined to ``target`` is no place to write (None: it is inside, and only there)."""
        lexical = path_problem(rel)
        if lexical:
            return (f"would land at {shown(naive_landing(target.path, rel))}, outside {target}: not a canonical "
                    f"relative path ({lexical}); {FIX_MANIFEST}")
        dest = target.path / rel
        parent = Path(os.path.realpath(dest.parent))
        landing = parent / dest.name
        if not within(parent, target.real):
            link = symlink_on_the_way(target.path, rel)
            why = f"{shown(link)} is a symlink to {shown(os.readlink(link))}" if link else \
                "a symlinked directory on the way"
            return (f"would land at {shown(landing)}, outside {target}: {why}; install never writes through a "
                    f"symlink out of its target: remove the symlink (or move what it points to into "
                    f"{shown(target.path)})")
        if within(landing, self.bundle_real):
            return (f"would land at {shown(landing)}, inside the bundle {self.bundle} it installs from, in {target}; "
                    "keep the bundle out of the way of install's targets (move it)")
        for other in self.targets:
            if other is target or other.real == target.real or not within(other.real, target.real):
                continue
            if within(landing, other.real):
                return (f"would land at {shown(landing)}, inside {other}, another target of this install that lies "
                        f"in {target}; give the targets directories apart")
        return None

    def check(self, what: str = "refusing to install") -> None:
        """Raise ConfinementError listing every problem gathered (nothing has been written)."""
        if self.problems:
            count = len(self.problems)
            paths = "1 manifest path" if count == 1 else f"{count} manifest paths"
            places = "its target" if count == 1 else "their targets"
            shown_problems = self.problems[:MAX_LISTED]
            if count > MAX_LISTED:  # one symlinked model directory can hold thousands of files
                shown_problems.append(FileProblem(f"~ and {count - MAX_LISTED} more", "of the same kinds (the first "
                                              f"{MAX_LISTED} are listed)"))
            raise ConfinementError(f"{what}: {paths} would be written outside {places} (or onto the bundle, or "
                                   "into another target); nothing was installed", shown_problems)

    # -- at write time -------------------------------------------------------------------------

    def recheck(self, target: Target, dest: Path, manifest_path: str) -> None:
        """Right before writing ``dest``: still inside ``target``? Else stop the install (ConfinementError)."""
        rel = os.path.relpath(dest, target.path)
        problem = self.problem(target, rel.replace(os.sep, "/"))
        if problem:
            raise ConfinementError("stopped: a destination changed while install ran (a symlink appeared); "
                                   "what was written before this stays", [FileProblem(shown(manifest_path), problem)])

    def removable(self, target: Target, key: str) -> Optional[Path]:
        """The file a record ``key`` names inside ``target``, when install may remove it there (else None)."""
        if path_problem(key) or self.problem(target, key):
            return None
        return target.path / key
