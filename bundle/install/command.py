"""`python -m bundle install DIR|ARCHIVE [--stack NAME]`: on the offline server, put what `pulumi up` needs in place.

Given the archive (or its parts) instead of a directory, install first unpacks it into --into
(bundle/install/from_archive.py: one read of the archive, every file hashed as it is extracted).

A bundle built for several stacks (one per server of a site) installs one of them: the
shared files, that stack's models and its stack file; `--stack` names it (required when
the bundle carries more than one).

Runs with the system python3 (standard library only), from the project checkout (or from
`program/` taken out of the archive with tar: the bundle carries this tool):

  program     DIR/program/* -> the project checkout (--project, default: .), each file copied
              only when it differs, atomically (temp file checked against the manifest's
              sha256, then renamed into place). venv/, .state/, stacks/ and every file the
              bundle does not list are never touched; a file an earlier install put there that
              the bundle no longer lists is removed. An empty, private .state/ (the file
              backend Pulumi.yaml names) is created when the project has none.
  venv        `python3 -m venv VENV` (default: PROJECT/venv), then `pip install --no-index
              --require-hashes --find-links DIR/wheels -r DIR/wheels/requirements.txt`: no
              package index is contacted, and pip checks each wheel's sha256. Skipped when the venv
              was already installed from these exact wheels (a stamp file in the venv).
  Pulumi      DIR/pulumi/bin/* -> PULUMI_HOME/bin, DIR/pulumi/plugins/* -> PULUMI_HOME/plugins.
  models      every model directory of the bundle -> the host model directory (--models-dir,
              default: the stack's models_dir), each file copied only when it differs, into a
              temp file that is checked against the manifest's sha256 and then renamed into
              place, so a model directory never holds a half-copied file under its real name.
              Checked first: the files must fit on their disk (bundle/install/space.py), else nothing
              is installed.
  stack file  copied to PROJECT/stacks/ when the project has none for this stack (a differing one is
              reported, never overwritten).
  record      PROJECT/.xinference-offline-site.json: per stack, the bundle and model directories, so
              `pulumi preview/up` find them when the stack file names none (bundle/format/site_record.py).

With --allowed-signers FILE the bundle's signature (MANIFEST.json.sig) is checked with this machine's
ssh-keygen before anything else of it is read (bundle/format/signature.py); without it or --bundle-id,
install says once that nothing ties the bundle to its builder.

Each destination keeps a small JSON record of what was installed
(`.xinference-offline-installed.json`: per file size, mtime, inode and sha256, plus the bundle
id), so a re-run hashes only files that changed since; inside the bundle's model
directories, files an earlier install put there that the bundle no longer has are removed
(and directories that leaves empty); directories of models the stack dropped are kept and
named with their size on every run (weights are costly to carry again; another stack may
share them). A
second run changes nothing and says so. After a failure (disk full, a damaged bundle file)
fix the cause and run it again: it carries on.

Every write is confined: every destination is checked before the first byte (bundle/install/confinement.py,
bundle/install/destinations.py): bad targets are refused naming both paths (exit 2), destinations
outside their target, also through a symlink, naming the manifest path, where it would land
and the target (exit 1). A second install into the same directories waits for the first,
naming it (an flock per directory, bundle/install/lock.py).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import stat
import sys
from pathlib import Path
from typing import Callable, Optional, TextIO

from bundle.install.confinement import Confinement, Target
from bundle.format.errors import FileProblem
from bundle.format.filecopy import CopyError, HashCache, copy_with_sha256, remove_partials
from bundle.format.layout import INSTALL_RECORD
from bundle.format.manifest import StackManifest, bundle_id_arg, sha256_file
from bundle.format.progress import Progress, bars_wanted
from bundle.format.signature import add_signer_arguments, load_trusted_manifest, site_policy
from bundle.format.verify import check_directory
from bundle.install.lock import LOCK_NAME, InstallLocks
from bundle.install.from_archive import add_bundle_arguments, bundle_directory
from bundle.install.destinations import (STEPS, Destinations, InstallError, StepResult, find_destinations,
                                         project_problem, resolve_targets)
from bundle.install.venv import check_venv_python, install_venv
from bundle.format.site_record import record_path, write_record
from bundle.install.model_files import FilePair, kept_model_dirs
from bundle.install.space import space_problems

__all__ = ["InstallError", "StepResult", "register", "run"]


def copy_files(bundle: Path, root: Path, pairs: list[FilePair], state: HashCache, scope: tuple[str, ...],
               result: StepResult, progress: Progress, confinement: Confinement, target: Target) -> None:
    """Make every dest hold its entry's content; remove files an earlier install left in ``scope``
    (and the directories under ``root`` that this leaves empty). Each write is checked inside
    ``target`` again right before it happens; each removal too."""
    wanted = {key for _entry, _dest, key in pairs}
    for entry, dest, key in pairs:
        try:
            st: Optional[os.stat_result] = dest.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            result.problems.append(FileProblem(str(dest), "is a directory where the bundle has a file; move it away"))
            continue
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
            known = state.lookup(key, st)
            if known is None:  # not installed by us, or changed since: look at the content
                known = sha256_file(dest, progress=progress.update)
                state.record(key, st, known)
            if known == entry.sha256:
                result.unchanged += 1
                continue
        confinement.recheck(target, dest, entry.path)
        try:
            copy_with_sha256(bundle / entry.path, dest, expect_sha256=entry.sha256, expect_size=entry.size,
                             progress=progress.update)
        except CopyError as exc:
            result.problems.append(FileProblem(entry.path, f"{exc}; the bundle is damaged: run `python -m bundle verify`"))
            continue
        except FileNotFoundError:
            result.problems.append(FileProblem(entry.path, "missing from the bundle: run `python -m bundle verify`"))
            continue
        state.record(key, dest.stat(), entry.sha256)
        result.copied += 1
        result.copied_bytes += entry.size
    for key in sorted(k for k in state.entries if k.startswith(scope) and k not in wanted):
        path = confinement.removable(target, key)  # None: a record key that names no place of ours
        try:
            if path is not None and state.lookup(key, path.lstat()) is not None:  # still ours to remove
                path.unlink()
                result.removed += 1
                _prune_empty_dirs(path.parent, root)
        except FileNotFoundError:
            pass
        state.forget(key)


def _prune_empty_dirs(directory: Path, root: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, stopping at ``root``."""
    root = root.absolute()
    directory = directory.absolute()
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty (a foreign file, another model's files), or already gone
            return
        directory = directory.parent


def check_model_space(dests: Destinations) -> None:
    """Refuse, before anything is written, an install whose model files do not fit on their disks."""
    targets = [(entry, dest) for _dir, _key, pairs in dests.models for entry, dest, _key in pairs]
    problems = [FileProblem(str(where), message) for where, message in space_problems(targets)]
    if problems:
        raise InstallError("not enough disk space for the models; nothing was installed", problems)


def install_models(bundle: Path, manifest: StackManifest, dests: Destinations, target: Optional[Target],
                   confinement: Confinement, progress: Progress) -> StepResult:
    result = StepResult("models")
    if target is None:
        result.note = "the bundle carries no models and names no models_dir"
        return result
    models_dir = target.path
    models_dir.mkdir(parents=True, exist_ok=True)
    state = HashCache(models_dir / INSTALL_RECORD)
    per_model = manifest.model_digests()
    current_dirs: list[str] = []
    for host_dir, key_prefix, pairs in dests.models:
        current_dirs.append(key_prefix)
        host_dir.mkdir(parents=True, exist_ok=True)
        remove_partials(host_dir)
        copy_files(bundle, host_dir, pairs, state, (key_prefix + "/",), result, progress, confinement, target)
        state.save()  # per model directory: a failure later keeps this one's record
    kept = kept_model_dirs(state, models_dir, current_dirs)
    if kept:
        noun = "model directory" if len(kept) == 1 else "model directories"
        result.note = (f"kept {len(kept)} {noun} this bundle no longer lists: {', '.join(kept.values())}; "
                       "delete by hand once no stack needs it")
    # kept ones stay remembered, so every install names them until someone removes them
    state.set_meta(bundle=manifest.bundle_id, stack=manifest.stack, models=per_model,
                   dirs=sorted([*current_dirs, *kept]))
    state.save()
    return result


def install_program(bundle: Path, manifest: StackManifest, dests: Destinations, target: Target,
                    confinement: Confinement, progress: Progress) -> StepResult:
    def clear_partials(project: Path) -> None:
        for directory in {dest.parent for _entry, dest, _key in dests.program}:
            remove_partials(directory, recursive=False)  # never walk into venv/ or .state/

    result = copy_step("program", "the bundle carries no program", dests.program, dests.program_refused, ("",),
                       clear_partials, bundle, manifest, target, confinement, progress)
    if manifest.role("program"):
        # Pulumi.yaml's file backend (file://./.state) must exist before `pulumi login`; the bundle
        # never carries it (it is the site's own), so a new site gets an empty, private one.
        (target.path / ".state").mkdir(mode=0o700, exist_ok=True)
    return result


def install_pulumi(bundle: Path, manifest: StackManifest, dests: Destinations, target: Target,
                   confinement: Confinement, progress: Progress) -> StepResult:
    def clear_partials(home: Path) -> None:
        for sub in ("bin", "plugins"):
            if (home / sub).is_dir() and not (home / sub).is_symlink():
                remove_partials(home / sub)

    return copy_step("pulumi", "the bundle carries no Pulumi CLI", dests.pulumi, [], ("bin/", "plugins/"),
                     clear_partials, bundle, manifest, target, confinement, progress)


def copy_step(role: str, absent: str, pairs: list[FilePair], refused: list[FileProblem], scope: tuple[str, ...],
              clear_partials: Callable[[Path], None], bundle: Path, manifest: StackManifest, target: Target,
              confinement: Confinement, progress: Progress) -> StepResult:
    """The step that copies the bundle's ``role`` files into ``target`` (made if missing): an earlier
    run's partial files cleared, then copy_files against the install record kept there, which then
    names this bundle and stack. ``absent``: the step's note when the bundle carries none."""
    result = StepResult(role)
    if not manifest.role(role):
        result.note = absent
        return result
    result.problems += refused
    root = target.path
    root.mkdir(parents=True, exist_ok=True)
    clear_partials(root)
    state = HashCache(root / INSTALL_RECORD)
    copy_files(bundle, root, pairs, state, scope, result, progress, confinement, target)
    state.set_meta(bundle=manifest.bundle_id, stack=manifest.stack)
    state.save()
    return result


def install_stack_file(bundle: Path, dests: Destinations, project: Path) -> StepResult:
    result = StepResult("stack")
    if dests.stack is None:
        result.note = "the bundle carries no stack file"
        return result
    if not (project / "Pulumi.yaml").is_file():
        result.note = f"{project} is not the project checkout (no Pulumi.yaml): stack file not copied"
        return result
    entry, target = dests.stack
    carried = bundle / entry.path
    if target.is_symlink():  # never written through, whatever it points at
        result.note = f"{target} is a symlink; left as it is (the bundle's is {entry.path})"
    elif not target.exists():
        copy_with_sha256(carried, target, expect_sha256=entry.sha256, expect_size=entry.size)  # atomic, 0644
        result.copied, result.copied_bytes = 1, entry.size
        result.note = f"copied to {target}"
    elif filecmp.cmp(carried, target, shallow=False):
        result.unchanged = 1
        result.note = f"{target} is the bundle's"
    else:
        result.note = f"{target} differs from the bundle's {entry.path}; left as it is (compare them)"
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("install", help="offline server: venv, Pulumi CLI and model files from a bundle",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_arguments(parser)
    parser.add_argument("--stack", metavar="NAME",
                        help="the stack of this server (needed when the bundle carries several)")
    parser.add_argument("--models-dir", type=Path, metavar="PATH",
                        help="host model directory (default: the stack's models_dir from the bundle)")
    parser.add_argument("--venv", type=Path, metavar="PATH",
                        help="virtualenv to create or update (default: PROJECT/venv, the one Pulumi.yaml names)")
    parser.add_argument("--pulumi-home", type=Path, default=Path("~/.pulumi"), metavar="PATH",
                        help="gets bin/ (the CLI) and plugins/ (default: ~/.pulumi, Pulumi's own default)")
    parser.add_argument("--python", default=sys.executable, metavar="PATH",
                        help="Python that creates the venv (default: this one)")
    parser.add_argument("--project", type=Path, default=Path("."), metavar="DIR",
                        help="project checkout that receives the program and stacks/Pulumi.STACK.yaml (default: .)")
    parser.add_argument("--bundle-id", metavar="SHA256", type=bundle_id_arg,
                        help="refuse any bundle but this one (an empty or malformed id is an error, not \"no id\")")
    add_signer_arguments(parser)
    parser.add_argument("--skip", action="append", default=[], choices=list(STEPS),
                        help="leave a step out (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    policy = site_policy(args)
    bundle = bundle_directory(args, out, policy)  # an archive is unpacked (its signature, then every file, checked)
    whole = load_trusted_manifest(bundle, args.bundle_id, policy)  # the signature first, then the manifest
    manifest = whole.for_stack(args.stack)  # this server's files: the shared ones and its stack's
    steps = [name for name in STEPS if name not in args.skip]
    targets = resolve_targets(args, manifest, steps)
    project = targets.project.path if targets.project else args.project.absolute()
    dests, confinement = find_destinations(bundle, manifest, targets)  # every one checked: exit 2 or 1
    trouble = project_problem(project, (LOCK_NAME,)) if manifest.role("program") and "program" in steps else None
    if trouble:
        print(f"error: --project {args.project}: {trouble}", file=sys.stderr)
        return 2
    problems = check_directory(bundle, manifest, extras=False, content=False)  # cheap: presence and sizes
    if problems:
        raise InstallError(f"{bundle} is incomplete; nothing was installed (run `python -m bundle verify {bundle}`)",
                           problems)
    check_model_space(dests)
    if targets.venv is not None:
        check_venv_python(manifest, targets.venv.path, args.python)
    home = args.pulumi_home.expanduser().absolute()
    venv = targets.venv.path if targets.venv else (args.venv or project / "venv").absolute()
    results: list[StepResult] = []
    with InstallLocks(targets.lock_dirs(steps), sys.stderr), \
            Progress(None, "install", bars_wanted(args.quiet)) as progress:
        run_step = {
            "program": lambda: install_program(bundle, manifest, dests, targets.project, confinement, progress),
            "venv": lambda: install_venv(bundle, manifest, venv, args.python, args.quiet),
            "pulumi": lambda: install_pulumi(bundle, manifest, dests, targets.pulumi, confinement, progress),
            "models": lambda: install_models(bundle, manifest, dests, targets.models, confinement, progress),
            "stack": lambda: install_stack_file(bundle, dests, project),
        }
        for name in steps:
            results.append(run_step[name]())
    problems = [p for r in results for p in r.problems]
    print(f"install: bundle {bundle} (stack {manifest.stack})", file=out)
    for result in results:
        print(result.line(), file=out)
    if problems:
        raise InstallError("install incomplete; fix these and run install again (it carries on)", problems)
    # the program finds the bundle and the models here when the stack file names none (no hand edit);
    # only an install that serves the project (its program or its stack file) writes there
    models_dir = targets.models.path if targets.models else None
    bundle_dir = bundle.resolve()
    recorded = bool({"program", "stack"} & set(steps)) and (project / "Pulumi.yaml").is_file() and write_record(
        project, manifest.stack, bundle_dir, models_dir, manifest.bundle_id)
    if recorded:
        print(f"install: recorded for pulumi in {record_path(project)}: bundle_dir {bundle_dir}"
              + (f", models_dir {models_dir}" if models_dir else ""), file=out)
    if not recorded and not any(r.changed for r in results):
        print("install: nothing to do: everything is already in place", file=out)
    env = f"export PATH={home}/bin:$PATH"
    if home != Path("~/.pulumi").expanduser().absolute():
        env += f" PULUMI_HOME={home}"
    cd = "" if project.resolve() == Path.cwd().resolve() else f"\n  cd {project}"
    print(f"next:{cd}\n  {env}\n  pulumi login file://$PWD/.state\n  pulumi stack select --create {manifest.stack}\n"
          f"  pulumi preview --stack {manifest.stack}   # then: pulumi up --stack {manifest.stack}", file=out)
    return 0
