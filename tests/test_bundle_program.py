"""The bundle carries the program itself (`program/`): which files build takes, and the offline
bootstrap exactly as docs/bundle.md writes it (sha256sum, the real `tar` taking out only
`program/`, then `python3 -m bundle unpack/verify/install` run from the extracted code with a
bare Python), plus install's rules for the program: no-op re-runs, stale files removed, the
site's own files (venv/, .state/, stacks/, anything unlisted) never touched."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.format.layout import INSTALL_RECORD
from bundle.format.manifest import MANIFEST_NAME, content_digest, load_manifest
from bundle.build.program import program_files
from tests.bundle_kit import PROJECT_FILES, build_args, cli, make_project, make_site, tree

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "bundle.md").read_text()
README = (ROOT / "README.md").read_text()
CARRIED = {"Pulumi.yaml", "__main__.py", "tools/deploy.sh", "components/a.py"}


LEFTOVERS = ("venv/bin/python", ".venv/lib/x.py", ".state/.pulumi/stacks/t1.json", "stacks/Pulumi.other.yaml",
             "build/t1/MANIFEST.json", "__pycache__/__main__.cpython-311.pyc", "components/__pycache__/a.pyc",
             "components/b.pyc", INSTALL_RECORD)


def add_files(project: Path, paths: tuple[str, ...]) -> None:
    for rel in paths:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(f"leftover {rel}\n")


@pytest.fixture
def project(tmp_path) -> Path:
    """A checkout with what a working one holds besides its files (none of it may travel),
    including a bundle output directory and its build cache inside the project."""
    root = make_project(tmp_path / "project")
    (root / "components").mkdir()
    (root / "components" / "a.py").write_text("A = 1\n")
    add_files(root, LEFTOVERS + ("mybundle/MANIFEST.json", ".mybundle.build-cache/hashes.json"))
    (root / "link.yaml").symlink_to(root / "Pulumi.yaml")
    (root / "linked-dir").symlink_to(root / "components")
    return root


def selected(project: Path) -> tuple[set[str], list[str]]:
    files, notes = program_files(project, excluded_dirs=[project / "mybundle", project / ".mybundle.build-cache"],
                                 excluded_names=[INSTALL_RECORD])
    return {rel for rel, _path in files}, notes


def test_without_git_the_walk_leaves_out_venv_state_build_output_stacks_and_caches(project, monkeypatch):
    monkeypatch.setenv("PATH", str(project / "no-git-here"))
    files, notes = selected(project)
    assert files == CARRIED
    assert sorted(notes) == ["link.yaml: skipped: a symlink (a bundle holds regular files only)",
                             "linked-dir: skipped: a symlink (a bundle holds regular files only)"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_in_a_git_work_tree_tracked_and_untracked_unignored_files_travel(project):
    (project / ".gitignore").write_text("venv/\n.venv/\n__pycache__/\n*.pyc\n/build/\nignored.log\n")
    (project / "ignored.log").write_text("ignored by git\n")
    (project / "components" / "deleted.py").write_text("tracked, then deleted here\n")
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    # tracked: even .state/ and stacks/ files that someone committed stay behind
    subprocess.run([*git, "add", "Pulumi.yaml", "components/a.py", "components/deleted.py", ".gitignore",
                    ".state/.pulumi/stacks/t1.json", "stacks/Pulumi.other.yaml"], cwd=project, check=True)
    (project / "components" / "deleted.py").unlink()
    files, notes = selected(project)
    # __main__.py and tools/deploy.sh are untracked and not ignored: local work travels;
    # mybundle/ (the output) is not ignored but is never carried
    assert files == CARRIED | {".gitignore"}
    assert len(notes) == 2 and all("skipped: a symlink" in note for note in notes)


def test_build_with_its_output_inside_the_project_does_not_carry_itself(tmp_path):
    site = make_site(tmp_path)
    args = build_args(site)
    args[args.index("--out") + 1] = str(site.project / "mybundle")
    for _ in range(2):
        code, _, err = cli(*args)
        assert code == 0, err
    paths = {f.path for f in load_manifest(site.project / "mybundle").files if f.role == "program"}
    assert paths == {f"program/{rel}" for rel in PROJECT_FILES}


@pytest.mark.parametrize("with_git", [True, False], ids=["git work tree", "no git"])
def test_a_stray_wheel_or_archive_in_the_work_tree_never_rides_along(tmp_path, monkeypatch, with_git):
    """issue 13, item 5: a build artefact left in the checkout (tracked or not) is not a program file."""
    if with_git and shutil.which("git") is None:
        pytest.skip("git is not installed")
    site = make_site(tmp_path)
    strays = ["pyflakes-4.1.0-py2.py3-none-any.whl", "xinference-cpu.tar", "tools/old-bundle.tar.gz", "x.ZIP"]
    for rel in strays:
        (site.project / rel).parent.mkdir(parents=True, exist_ok=True)
        (site.project / rel).write_bytes(b"artefact")
    if with_git:
        subprocess.run(["git", "-c", "init.defaultBranch=main", "init", "-q"], cwd=site.project, check=True)
        subprocess.run(["git", "add", strays[0]], cwd=site.project, check=True)  # even one committed by mistake
    else:
        monkeypatch.setenv("PATH", str(site.project / "no-git-here"))
    code, _, err = cli(*build_args(site))
    assert code == 0, err
    paths = {f.path for f in load_manifest(site.out).files if f.role == "program"}
    assert paths == {f"program/{rel}" for rel in PROJECT_FILES}
    files, notes = program_files(site.project)
    assert sorted(n for n in notes if "artefact" in n) == sorted(
        f"{rel}: skipped: a build artefact (wheels and archives are never program files)" for rel in strays)


def test_a_project_without_pulumi_yaml_is_a_usage_error(tmp_path):
    site = make_site(tmp_path)
    (site.project / "Pulumi.yaml").unlink()
    code, _, err = cli(*build_args(site))
    assert code == 2 and f"--project {site.project}: has no Pulumi.yaml: not the project checkout" in err


# -- the documented offline bootstrap, run as written ------------------------------------------


def documented_offline_block() -> str:
    """The bash block of docs/bundle.md section 4 (the one that takes program/ out with tar)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS, re.S)
    return next(block for block in blocks if "tar -xf" in block)


def bare_env() -> dict[str, str]:
    """No PYTHONPATH: the bundle code must come from the extracted program/ directory."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def offline_python(program: Path, *argv: str) -> subprocess.CompletedProcess:
    """`python3 -m bundle ...` as the operator runs it: bare Python (-S), cwd the extracted program."""
    return subprocess.run([sys.executable, "-S", "-m", "bundle", *argv], cwd=program, env=bare_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site_flow(tmp_path_factory):
    """Online: build (the project holds a copy of this checkout's bundle package) and pack.
    Offline: the block of docs/bundle.md section 4, with its paths pointed at a temp dir."""
    root = tmp_path_factory.mktemp("program-flow")
    site = make_site(root / "online")
    shutil.rmtree(site.project)
    make_project(site.project, with_bundle_tool=True)
    add_files(site.project, LEFTOVERS)
    assert cli(*build_args(site))[0] == 0
    bundle_id = load_manifest(site.out).bundle_id
    offline = root / "offline"
    offline.mkdir()
    code, _, err = cli("pack", str(site.out), "-o", str(offline / "t1.tar"), "--quiet")
    assert code == 0, err
    script = documented_offline_block().replace("/opt/xinference-offline", str(offline))
    script = script.replace("gpu-node-1", "t1").replace("python3 -m bundle", f"{sys.executable} -S -m bundle")
    script = re.sub(r"^BUNDLE_ID=\S+", f"BUNDLE_ID={bundle_id}", script, flags=re.M)
    if shutil.which("sha256sum") is None:  # pragma: no cover - coreutils is everywhere the docs aim at
        script = script.replace("sha256sum -c", "true")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=bare_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return {"site": site, "offline": offline, "program": offline / "program", "bundle": offline / "bundle",
            "id": bundle_id, "output": proc.stdout}


def test_the_documented_bootstrap_runs_from_the_extracted_program(site_flow):
    program, bundle, site = site_flow["program"], site_flow["bundle"], site_flow["site"]
    out = site_flow["output"]
    assert "t1.tar: OK" in out or shutil.which("sha256sum") is None
    assert "every member checked and every sha256 matched" in out and "verify: OK" in out
    proc = subprocess.run([sys.executable, "-S", "-c", "import bundle; print(bundle.__file__)"], cwd=program,
                          env=bare_env(), capture_output=True, text=True)
    assert Path(proc.stdout.strip()).parent == program / "bundle"  # the extracted code ran, not this checkout's
    # the project's files arrived byte for byte, the tool script executable
    carried = {f.path[len("program/"):] for f in load_manifest(bundle).role("program")}
    tool = {p.relative_to(ROOT).as_posix() for package in ("bundle", "stackspec") for p in (ROOT / package).rglob("*.py")}
    assert carried == set(PROJECT_FILES) | tool
    for rel in carried:
        assert (program / rel).read_bytes() == (site.project / rel).read_bytes(), rel
    assert os.access(program / "tools" / "deploy.sh", os.X_OK)
    # nothing of the online checkout's venv/, .state/, build output or other stacks came along
    for rel in LEFTOVERS:
        assert not (program / rel).is_file() or (program / rel).read_text(errors="replace") != f"leftover {rel}\n", rel
    # the rest of install: the venv from the bundled wheel, the stack file, the models
    assert (program / "venv" / "bin" / "python").exists()
    assert (program / ".state").is_dir()  # the file backend Pulumi.yaml names: `pulumi login` needs it
    assert (program / "stacks" / "Pulumi.t1.yaml").read_bytes() == (bundle / "stack" / "Pulumi.t1.yaml").read_bytes()
    assert tree(site.host_models / "rr") == tree(bundle / "models" / "rr")
    assert "cd " not in out.split("next:")[1]  # installed into ., the directory it ran from


def test_a_second_install_from_the_program_dir_has_nothing_to_do_and_keeps_a_site_edited_stack(site_flow):
    program, offline = site_flow["program"], site_flow["offline"]
    args = ["install", "../bundle", "--project", ".", "--pulumi-home", str(offline / "pulumi"), "--quiet"]
    proc = offline_python(program, *args)
    assert proc.returncode == 0, proc.stderr
    assert "install: nothing to do: everything is already in place" in proc.stdout
    stack_file = program / "stacks" / "Pulumi.t1.yaml"
    edited = stack_file.read_text() + "# site edit: another GPU\n"
    stack_file.write_text(edited)
    proc = offline_python(program, *args)
    assert proc.returncode == 0, proc.stderr
    assert stack_file.read_text() == edited
    assert "differs from the bundle's stack/Pulumi.t1.yaml; left as it is" in proc.stdout


def test_verify_reports_a_damaged_program_file_with_the_others(site_flow, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(site_flow["bundle"], bundle)
    cli_py = bundle / "program" / "bundle" / "cli.py"
    cli_py.write_text(cli_py.read_text().replace("return 130", "return 131"))
    with open(bundle / "models" / "rr" / "weights.bin", "r+b") as handle:
        handle.write(b"\0\0\0\0")
    proc = offline_python(site_flow["program"], "verify", str(bundle), "--bundle-id", site_flow["id"], "--quiet")
    assert proc.returncode == 1
    assert "2 problems" in proc.stderr
    assert "program/bundle/cli.py: sha256 mismatch" in proc.stderr and "models/rr/weights.bin: sha256 mismatch" in \
        proc.stderr


def test_the_readme_gives_the_same_bootstrap_commands():
    for line in documented_offline_block().splitlines():
        command = line.split("  #")[0].strip()
        # the README installs from the archive in one command; the docs show the separate verbs it folds
        if command.startswith(("cd ", "sha256sum", "tar ")):
            assert command in README, command


# -- install's rules for the program -----------------------------------------------------------


def install_program(bundle: Path, project: Path, *extra: str) -> tuple[int, str, str]:
    return cli("install", str(bundle), "--project", str(project), "--skip", "venv", "--skip", "pulumi",
               "--skip", "models", "--quiet", *extra)


def test_install_removes_only_what_it_put_there_and_never_touches_the_sites_files(tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    target = tmp_path / "offline-project"
    site_files = {"venv/bin/python": "site venv", ".state/.pulumi/meta.yaml": "site state",
                  "stacks/Pulumi.t1.yaml": "site stack", "operator-notes.txt": "not ours"}
    for rel, text in site_files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)
    (target / "Pulumi.yaml").write_text("an older Pulumi.yaml\n")
    code, out, err = install_program(site.out, target)
    assert code == 0, err
    assert "program  3 files copied" in out and f"cd {target}" in out
    assert (target / "Pulumi.yaml").read_bytes() == PROJECT_FILES["Pulumi.yaml"]
    # the project drops a file: the next bundle's install removes it, and only it
    (site.project / "tools" / "deploy.sh").unlink()
    (site.project / "README.txt").write_text("new\n")
    assert cli(*build_args(site))[0] == 0
    code, out, err = install_program(site.out, target)
    assert code == 0, err
    assert "1 file copied" in out and "1 stale file removed" in out and "2 already in place" in out
    assert not (target / "tools" / "deploy.sh").exists() and (target / "README.txt").read_text() == "new\n"
    for rel, text in site_files.items():
        assert (target / rel).read_text() == text, rel
    assert "nothing to do" in install_program(site.out, target)[1]


def test_install_refuses_to_fill_a_directory_that_is_not_the_project(tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine\n")
    code, _, err = install_program(site.out, home)
    assert code == 2 and "holds no Pulumi.yaml: not the project checkout" in err and "--skip program" in err
    assert tree(home) == {".bashrc": b"mine\n"}


def test_a_bundle_listing_site_owned_program_files_is_refused_for_them(tmp_path):
    """Even a manifest rewritten consistently cannot make install write stacks/ or venv/."""
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    bundle = site.out
    hostile = {"program/stacks/Pulumi.t1.yaml": b"config: {}\n", "program/venv/bin/python": b"#!/bin/sh\n"}
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del data["digest"]
    for rel, content in hostile.items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_bytes(content)
        data["files"].append({"path": rel, "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                              "role": "program", "model": None})
    data["digest"] = content_digest(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    target = tmp_path / "offline-project"
    code, _, err = install_program(bundle, target, "--skip", "stack")
    assert code == 1 and err.count("refused: the program never writes the site's own files") == 2
    assert not (target / "stacks").exists() and not (target / "venv").exists()
    assert (target / "Pulumi.yaml").is_file()  # the rest of the program is installed
