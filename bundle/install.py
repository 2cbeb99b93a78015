"""`python -m bundle install DIR [--stack NAME]`: on the offline server, put what `pulumi up` needs in place.

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
  venv        `python3 -m venv VENV` (default: PROJECT/venv), then `pip install --no-index --find-links DIR/wheels -r
              DIR/wheels/requirements.txt`: no package index is contacted. Skipped when the venv
              was already installed from these exact wheels (a stamp file in the venv).
  Pulumi      DIR/pulumi/bin/* -> PULUMI_HOME/bin, DIR/pulumi/plugins/* -> PULUMI_HOME/plugins.
  models      every model directory of the bundle -> the host model directory (--models-dir,
              default: the stack's models_dir), each file copied only when it differs, into a
              temp file that is checked against the manifest's sha256 and then renamed into
              place, so a model directory never holds a half-copied file under its real name.
              Checked first: the files must fit on their disk (bundle/space.py), else nothing
              is installed.
  stack file  copied to PROJECT/stacks/ when the project has none for this stack (a differing one is
              reported, never overwritten).

Each destination keeps a small JSON record of what was installed
(`.xinference-offline-installed.json`: per file size, mtime, inode and sha256, plus the bundle
id), so a re-run hashes only files that changed since; inside the bundle's model
directories, files an earlier install put there that the bundle no longer has are removed
(and directories that leaves empty); directories of models the stack dropped are kept and
named with their size on every run (weights are costly to carry again; another stack may
share them). A
second run changes nothing and says so. After a failure (disk full, a damaged bundle file)
fix the cause and run it again: it carries on.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from bundle.manifest import FileEntry, StackManifest, check_bundle_id, files_digest, load_manifest, sha256_file
from bundle.program import PROGRAM_DIR, PROJECT_MARKER, is_site_owned
from bundle.progress import Progress, bars_wanted, human, plural
from bundle.model_files import kept_model_dirs, model_file_pairs
from bundle.space import space_problems
from bundle.sync import CopyError, HashCache, copy_with_sha256, remove_partials
from bundle.verify import Problem, VerifyFailed, check_directory

STATE_NAME = ".xinference-offline-installed.json"
VENV_STAMP = ".xinference-offline-wheels"


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
    problems: list[Problem] = field(default_factory=list)
    note: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.copied or self.removed)

    def line(self) -> str:
        parts = [f"{plural(self.copied, 'file')} copied ({human(self.copied_bytes)})" if self.copied else "",
                 f"{plural(self.removed, 'stale file')} removed" if self.removed else "",
                 f"{self.unchanged} already in place" if self.unchanged else "", self.note]
        return f"  {self.name:<8} " + "; ".join(p for p in parts if p)


def sync_files(bundle: Path, root: Path, pairs: list[tuple[FileEntry, Path, str]], state: HashCache,
               scope: tuple[str, ...], result: StepResult, progress: Progress) -> None:
    """Make every dest hold its entry's content; remove files an earlier install left in ``scope``
    (and the directories under ``root`` that this leaves empty)."""
    wanted = {key for _entry, _dest, key in pairs}
    for entry, dest, key in pairs:
        try:
            st: Optional[os.stat_result] = dest.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            result.problems.append(Problem(str(dest), "is a directory where the bundle has a file; move it away"))
            continue
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
            known = state.lookup(key, st)
            if known is None:  # not installed by us, or changed since: look at the content
                known = sha256_file(dest, progress=progress.update)
                state.record(key, st, known)
            if known == entry.sha256:
                result.unchanged += 1
                continue
        try:
            copy_with_sha256(bundle / entry.path, dest, expect_sha256=entry.sha256, expect_size=entry.size,
                             progress=progress.update)
        except CopyError as exc:
            result.problems.append(Problem(entry.path, f"{exc}; the bundle is damaged: run `python -m bundle verify`"))
            continue
        except FileNotFoundError:
            result.problems.append(Problem(entry.path, "missing from the bundle: run `python -m bundle verify`"))
            continue
        state.record(key, dest.stat(), entry.sha256)
        result.copied += 1
        result.copied_bytes += entry.size
    for key in sorted(k for k in state.entries if k.startswith(scope) and k not in wanted):
        path = state.path.parent / key if not key.startswith("/") else Path(key)
        try:
            if state.lookup(key, path.lstat()) is not None:  # still what we put there: ours to remove
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


def check_model_space(manifest: StackManifest, models_dir: Path) -> None:
    """Refuse, before anything is written, an install whose model files do not fit on their disks."""
    targets = [(entry, dest) for _dir, _key, pairs in model_file_pairs(manifest, models_dir)
               for entry, dest, _key in pairs]
    problems = [Problem(str(where), message) for where, message in space_problems(targets)]
    if problems:
        raise InstallError("not enough disk space for the models; nothing was installed", problems)


def install_models(bundle: Path, manifest: StackManifest, models_dir: Path, progress: Progress) -> StepResult:
    result = StepResult("models")
    models_dir.mkdir(parents=True, exist_ok=True)
    state = HashCache(models_dir / STATE_NAME)
    per_model = manifest.model_digests()
    current_dirs: list[str] = []
    for host_dir, key_prefix, pairs in model_file_pairs(manifest, models_dir):
        current_dirs.append(key_prefix)
        host_dir.mkdir(parents=True, exist_ok=True)
        remove_partials(host_dir)
        sync_files(bundle, host_dir, pairs, state, (key_prefix + "/",), result, progress)
        state.save()  # per model directory: a failure later keeps this one's record
    kept = kept_model_dirs(state, models_dir, current_dirs)
    if kept:
        noun = "model directory" if len(kept) == 1 else "model directories"
        result.note = (f"kept {len(kept)} {noun} this bundle no longer lists: {', '.join(kept.values())}; "
                       "delete by hand once no stack needs it")
    # kept ones stay remembered, so every install names them until someone removes them
    state.set_meta(bundle=manifest.digest(), stack=manifest.stack, models=per_model,
                   dirs=sorted([*current_dirs, *kept]))
    state.save()
    return result


def install_program(bundle: Path, manifest: StackManifest, project: Path, progress: Progress) -> StepResult:
    result = StepResult("program")
    entries = manifest.role("program")
    if not entries:
        result.note = "the bundle carries no program"
        return result
    prefix = PROGRAM_DIR + "/"
    pairs = []
    for entry in entries:
        rel = entry.path[len(prefix):]
        if not entry.path.startswith(prefix) or is_site_owned(rel) or rel == STATE_NAME:
            result.problems.append(Problem(entry.path, "refused: the program never writes the site's own files "
                                                       "(venv/, .state/, stacks/)"))
            continue
        pairs.append((entry, project / rel, rel))
    project.mkdir(parents=True, exist_ok=True)
    for directory in {dest.parent for _entry, dest, _key in pairs}:
        remove_partials(directory, recursive=False)  # never walk into venv/ or .state/
    state = HashCache(project / STATE_NAME)
    sync_files(bundle, project, pairs, state, ("",), result, progress)
    state.set_meta(bundle=manifest.digest(), stack=manifest.stack)
    state.save()
    # Pulumi.yaml's file backend (file://./.state) must exist before `pulumi login`; the bundle
    # never carries it (it is the site's own), so a new site gets an empty, private one.
    (project / ".state").mkdir(mode=0o700, exist_ok=True)
    return result


def project_problem(project: Path) -> Optional[str]:
    """Why the program must not be installed into ``project`` (None: new, empty, or a checkout)."""
    if not project.exists():
        return None
    if not project.is_dir():
        return "exists and is not a directory"
    if (project / PROJECT_MARKER).is_file() or (project / STATE_NAME).is_file() or not any(project.iterdir()):
        return None
    return (f"is not empty and holds no {PROJECT_MARKER}: not the project checkout; pass --project DIR (the "
            "checkout, or a new directory), or --skip program")


def install_pulumi(bundle: Path, manifest: StackManifest, home: Path, progress: Progress) -> StepResult:
    result = StepResult("pulumi")
    entries = [e for e in manifest.role("pulumi")]
    if not entries:
        result.note = "the bundle carries no Pulumi CLI"
        return result
    home.mkdir(parents=True, exist_ok=True)
    state = HashCache(home / STATE_NAME)
    pairs = [(e, home / e.path[len("pulumi/"):], e.path[len("pulumi/"):]) for e in entries]
    for sub in {"bin", "plugins"}:
        if (home / sub).is_dir():
            remove_partials(home / sub)
    sync_files(bundle, home, pairs, state, ("bin/", "plugins/"), result, progress)
    state.set_meta(bundle=manifest.digest(), stack=manifest.stack)
    state.save()
    return result


def offline_pip_env() -> dict[str, str]:
    """The environment for a pip that must see the bundle's wheels and nothing else: no pip config
    file and no PIP_* settings (a PIP_FIND_LINKS or index on this machine would hide a wheel the
    bundle lacks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def python_version(python: str) -> str:
    proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError("venv", [Problem(python, f"cannot run this Python ({proc.stderr.strip()})")])
    return proc.stdout.strip()


def install_venv(bundle: Path, manifest: StackManifest, venv: Path, python: str, quiet: bool) -> StepResult:
    result = StepResult("venv")
    wheels = manifest.role("wheel")
    requirements = bundle / "wheels" / "requirements.txt"
    if not wheels or not any(e.path == "wheels/requirements.txt" for e in wheels):
        result.note = "the bundle carries no wheels/requirements.txt: venv skipped"
        return result
    stamp = venv / VENV_STAMP
    want = files_digest(wheels, strip_prefix=False)
    venv_python = venv / "bin" / "python"
    if venv_python.exists() and stamp.is_file() and stamp.read_text().strip() == want:
        result.unchanged = len(wheels)
        result.note = f"{venv} already installed from these {plural(len(wheels) - 1, 'wheel')}"
        return result
    problems = check_directory(bundle, manifest, only=wheels, extras=False)
    if problems:
        raise InstallError(f"{bundle}/wheels is damaged; run `python -m bundle verify {bundle}`", problems)
    if not venv_python.exists():
        version = python_version(python)
        if manifest.python and version != manifest.python:
            raise InstallError("venv", [Problem(python, f"is Python {version}, the bundled wheels are for Python "
                                                        f"{manifest.python}: run install with --python "
                                                        f"python{manifest.python}, or rebuild the bundle with "
                                                        f"--python-version {version}")])
        proc = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise InstallError("venv", [Problem(str(venv), f"`{python} -m venv` failed: {proc.stderr.strip()} "
                                                           "(Debian/Ubuntu: apt install python3-venv)")])
    cmd = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
           "--find-links", str(bundle / "wheels"), "-r", str(requirements)]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE, text=True,
                          env=offline_pip_env())
    if proc.returncode != 0:
        raise InstallError("venv", [Problem(str(venv), "pip install from the bundled wheels failed: "
                                                       f"{proc.stderr.strip()[-2000:]}")])
    stamp.write_text(want + "\n")
    result.copied = len(wheels) - 1
    result.copied_bytes = sum(e.size for e in wheels)
    result.note = f"{venv}: installed {plural(len(wheels) - 1, 'wheel')} with no index"
    return result


def install_stack_file(bundle: Path, manifest: StackManifest, project: Path) -> StepResult:
    result = StepResult("stack")
    stack_files = manifest.role("stack")
    if not stack_files:
        result.note = "the bundle carries no stack file"
        return result
    if not (project / "Pulumi.yaml").is_file():
        result.note = f"{project} is not the project checkout (no Pulumi.yaml): stack file not copied"
        return result
    source = bundle / stack_files[0].path
    target = project / "stacks" / Path(stack_files[0].path).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        result.copied, result.copied_bytes = 1, stack_files[0].size
        result.note = f"copied to {target}"
    elif filecmp.cmp(source, target, shallow=False):
        result.unchanged = 1
        result.note = f"{target} is the bundle's"
    else:
        result.note = f"{target} differs from the bundle's {stack_files[0].path}; left as it is (compare them)"
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("install", help="offline server: venv, Pulumi CLI and model files from a bundle",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, metavar="DIR", help="unpacked (and verified) bundle directory")
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
    parser.add_argument("--bundle-id", metavar="SHA256", help="refuse any bundle but this one")
    parser.add_argument("--skip", action="append", default=[], choices=["program", "venv", "pulumi", "models",
                                                                          "stack"],
                        help="leave a step out (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    bundle = args.bundle.absolute()
    whole = load_manifest(bundle)
    check_bundle_id(whole, args.bundle_id, str(bundle))
    manifest = whole.for_stack(args.stack)  # this server's files: the shared ones and its stack's
    models_dir = args.models_dir or (Path(manifest.models_dir) if manifest.models_dir else None)
    if models_dir is None and manifest.model_dirs and "models" not in args.skip:
        print("error: --models-dir: the bundle names no models_dir; give the host model directory", file=sys.stderr)
        return 2
    project = args.project.absolute()
    trouble = project_problem(project) if manifest.role("program") and "program" not in args.skip else None
    if trouble:
        print(f"error: --project {args.project}: {trouble}", file=sys.stderr)
        return 2
    venv = (args.venv or project / "venv").absolute()
    problems = check_directory(bundle, manifest, extras=False, content=False)  # cheap: presence and sizes
    if problems:
        raise InstallError(f"{bundle} is incomplete; nothing was installed (run `python -m bundle verify {bundle}`)",
                           problems)
    if "models" not in args.skip and models_dir is not None:
        check_model_space(manifest, models_dir.absolute())
    home = args.pulumi_home.expanduser().absolute()
    results: list[StepResult] = []
    with Progress(None, "install", bars_wanted(args.quiet)) as progress:
        steps = {
            "program": lambda: install_program(bundle, manifest, project, progress),
            "venv": lambda: install_venv(bundle, manifest, venv, args.python, args.quiet),
            "pulumi": lambda: install_pulumi(bundle, manifest, home, progress),
            "models": lambda: install_models(bundle, manifest, models_dir.absolute(), progress),
            "stack": lambda: install_stack_file(bundle, manifest, project),
        }
        for name, step in steps.items():
            if name not in args.skip:
                results.append(step())
    problems = [p for r in results for p in r.problems]
    print(f"install: bundle {bundle} (stack {manifest.stack})", file=out)
    for result in results:
        print(result.line(), file=out)
    if problems:
        raise InstallError("install incomplete; fix these and run install again (it carries on)", problems)
    if not any(r.changed for r in results):
        print("install: nothing to do: everything is already in place", file=out)
    env = f"export PATH={home}/bin:$PATH"
    if home != Path("~/.pulumi").expanduser().absolute():
        env += f" PULUMI_HOME={home}"
    cd = "" if project.resolve() == Path.cwd().resolve() else f"\n  cd {project}"
    print(f"next:{cd}\n  {env}\n  pulumi login file://$PWD/.state\n  pulumi stack select --create {manifest.stack}\n"
          f"  pulumi preview --stack {manifest.stack}   # then: pulumi up --stack {manifest.stack}", file=out)
    return 0
