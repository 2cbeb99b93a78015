"""Which files of the project checkout the bundle carries as `program/` (the Pulumi program and
the bundle tool itself), so the offline site needs the archive and nothing else.

In a git work tree (and with `git` installed): `git ls-files --cached --others
--exclude-standard`, i.e. tracked files plus untracked ones git does not ignore, as they are
now (local edits travel; ignored build outputs do not). Elsewhere: every file below the
project, less what this project's .gitignore leaves out (venv/, build/, __pycache__/, *.pyc,
...). Either way these never travel:

  .state/    the site's Pulumi state (the backend Pulumi.yaml names)
  stacks/    stack files: the bundle's own stack file is its `stack` item, and a site's edited
             stack files must never be overwritten by someone else's
  venv/      the site's virtualenv (install builds it from the bundled wheels)
  .git/      repository internals
  .xinference-offline-installed.json, .xinference-offline.lock
             install's record of what it put there and its lock file (bundle/install/lock.py)
  the bundle output directory and its build cache, when they lie inside the project

install applies the same list the other way round: it never writes a program file into the
site's own directories or over those two files, whatever a manifest lists (``is_site_owned``).

Symlinks and other non-regular files are skipped with a note (a bundle holds regular files only).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Iterable, Optional

from bundle.format.layout import SITE_OWNED_DIRS, is_site_owned

from bundle.format.filecopy import kind_of

# Without git: what the project's .gitignore leaves out, by directory name (any depth) ...
WALK_SKIPPED_DIRS = frozenset({"venv", ".venv", "__pycache__", ".pytest_cache", ".git"})
# ... by top-level directory name, and by file name suffix.
WALK_SKIPPED_TOP_DIRS = frozenset({"build", "dist", ".cache"})
WALK_SKIPPED_SUFFIXES = (".pyc", ".pyo")
# Build artefacts are never program files, tracked or not: wheels and archives travel in their own
# roles (wheels/, image/, the bundle itself), and one left in the work tree must not ride along.
ARTEFACT_SUFFIXES = (".whl", ".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".zip")


def program_files(project: Path, excluded_dirs: Iterable[Path] = (), excluded_names: Iterable[str] = ()
                  ) -> tuple[list[tuple[str, Path]], list[str]]:
    """([(project-relative POSIX path, absolute path)] sorted, [notes on skipped files]).

    ``excluded_dirs``: absolute directories left out wherever they are (the bundle output);
    ``excluded_names``: top-level file names left out (install's record of the program).
    """
    project = project.absolute()
    excluded = [d.absolute() for d in excluded_dirs]
    skipped_names = set(excluded_names)
    candidates = _git_files(project)
    if candidates is None:
        candidates, notes = _walked_files(project, excluded)
    else:
        notes = []
    files: list[tuple[str, Path]] = []
    for rel in sorted(set(candidates)):
        path = project / rel
        if is_site_owned(rel) or rel in skipped_names or any(path.is_relative_to(d) for d in excluded):
            continue
        if rel.lower().endswith(ARTEFACT_SUFFIXES):
            notes.append(f"{rel}: skipped: a build artefact (wheels and archives are never program files)")
            continue
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # deleted here but still in git's index: the local state travels
            continue
        if stat.S_ISREG(mode):
            files.append((rel, path))
        else:
            notes.append(f"{rel}: skipped: a {kind_of(mode)} (a bundle holds regular files only)")
    return files, notes


def _git_files(project: Path) -> Optional[list[str]]:
    """Tracked + untracked-not-ignored files below ``project``; None when it is no git work tree."""
    git = shutil.which("git")
    if git is None:
        return None
    inside = subprocess.run([git, "rev-parse", "--is-inside-work-tree"], cwd=project, capture_output=True, text=True)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    listed = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=project,
                            capture_output=True)
    if listed.returncode != 0:
        return None
    return [os.fsdecode(name) for name in listed.stdout.split(b"\0") if name]


def _walked_files(project: Path, excluded: list[Path]) -> tuple[list[str], list[str]]:
    """Every path below ``project`` but the skipped directories and files; symlinked dirs noted."""
    files: list[str] = []
    notes: list[str] = []
    for dirpath, dirnames, filenames in os.walk(project):
        rel_dir = os.path.relpath(dirpath, project).replace(os.sep, "/")
        top = rel_dir == "."
        kept = []
        for name in sorted(dirnames):
            rel = name if top else f"{rel_dir}/{name}"
            skipped = name in WALK_SKIPPED_DIRS or name.endswith(".egg-info") or \
                (top and (name in WALK_SKIPPED_TOP_DIRS or name in SITE_OWNED_DIRS))
            if skipped or any(Path(dirpath, name).is_relative_to(d) for d in excluded):
                continue
            if os.path.islink(os.path.join(dirpath, name)):
                notes.append(f"{rel}: skipped: a symlink (a bundle holds regular files only)")
                continue
            kept.append(name)
        dirnames[:] = kept
        files += [name if top else f"{rel_dir}/{name}" for name in filenames
                  if not name.endswith(WALK_SKIPPED_SUFFIXES)]
    return files, notes

