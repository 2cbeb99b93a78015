"""`install` writes only inside its targets, never onto its own source, and durably (issue 12, classes 2, 3, 10).

- class 2, every write confined: the destinations of a bundle are checked inside their target
  (--project, --pulumi-home, --models-dir or the stack's models_dir, the venv) before the
  first byte is written, with their parents resolved through symlinks. The strict manifest
  parser (tests/test_hostile_manifest.py) is the first wall; the cases marked "forged" take it
  away (install is handed a Manifest object that no parser would return) to show the second
  wall holds on its own. The others are reachable with a valid or re-signed manifest and a
  symlink on the installing machine.
- class 3, overlaps: a target inside the bundle, the bundle inside the models directory, two
  targets in one directory: exit 2 before anything is touched, naming both paths.
- class 10, durability: modes 0644/0755 whatever the umask, the directory fsynced after each
  rename, the venv stamp written by rename.

Every case names its expected message and shows the victim untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

import pytest

import bundle.install.command
import bundle.format.manifest
import bundle.format.filecopy
from bundle.install.confinement import MAX_LISTED, Confinement, ConfinementError, Target
from bundle.format.layout import INSTALL_RECORD
from bundle.format.manifest import MANIFEST_NAME, Manifest, content_digest, load_manifest
from bundle.install.venv import VENV_STAMP, install_venv
from tests.bundle_kit import build_args, cli, make_site, tree

DOCKER_PLUGIN = "resource-docker-v5.1.0/pulumi-resource-docker"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One bundle of every role (a plugin too), built once; tests that change it copy it first."""
    root = tmp_path_factory.mktemp("hostile-install")
    site = make_site(root / "online")
    plugin = site.root / "toolchain" / "plugins" / DOCKER_PLUGIN
    plugin.parent.mkdir(parents=True)
    plugin.write_text("#!/bin/sh\necho docker plugin\n")
    plugin.chmod(0o755)
    code, _, err = cli(*build_args(site))
    assert code == 0, err
    return site


@pytest.fixture
def bundle_dir(built, tmp_path):
    """A private copy of the bundle (hard links would share inodes: a plain copy)."""
    copy = tmp_path / "bundle"
    shutil.copytree(built.out, copy)
    return copy


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    """Fresh targets, and a victim directory outside all of them that must stay as it is."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("never overwritten\n")
    return {"project": tmp_path / "project", "home": tmp_path / "pulumi-home", "models": tmp_path / "models",
            "victim": victim}


def install(bundle: Path, places: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    return cli("install", str(bundle), "--project", str(places["project"]), "--pulumi-home", str(places["home"]),
               "--models-dir", str(places["models"]), "--skip", "venv", "--quiet", *extra)


def untouched(places: dict[str, Path]) -> None:
    """Nothing was written: no target exists and the victim holds only what it held."""
    for name in ("project", "home", "models"):
        assert not places[name].exists(), f"{name}: install wrote before refusing"
    assert tree(places["victim"]) == {"precious.txt": b"never overwritten\n"}


def forge(monkeypatch, directory: Path, mutate: Callable[[Manifest], None]) -> Manifest:
    """Hand install a manifest no parser returns: the real one, changed in memory (the file stays valid)."""
    manifest = load_manifest(directory)
    mutate(manifest)
    monkeypatch.setattr(bundle.install.command, "load_trusted_manifest", lambda _directory, *_args: manifest)
    return manifest


def repath(manifest: Manifest, old: str, new: str) -> None:
    """The file ``old`` listed as ``new`` (its content placed there in the bundle directory too)."""
    index = next(i for i, f in enumerate(manifest.files) if f.path == old)
    manifest.files[index] = dataclasses.replace(manifest.files[index], path=new)


def resign(bundle: Path, extra_files: dict[str, tuple[bytes, str]]) -> None:
    """Add files to the bundle and its manifest, re-signed (what anyone who can edit the bundle can do)."""
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del data["digest"]
    for path, (content, role) in extra_files.items():
        (bundle / path).parent.mkdir(parents=True, exist_ok=True)
        (bundle / path).write_bytes(content)
        data["files"].append({"path": path, "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                              "role": role, "model": None})
    data["files"].sort(key=lambda f: f["path"])
    data["digest"] = content_digest(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


# -- class 2: forged manifests (the parser taken away) ---------------------------------------


def test_forged_a_pulumi_file_outside_pulumi_is_refused_naming_it(monkeypatch, bundle_dir, places):
    forge(monkeypatch, bundle_dir, lambda m: repath(m, "pulumi/bin/pulumi", "etc/cron.d/evil"))
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert ("etc/cron.d/evil: role pulumi, but not under pulumi/bin/ or pulumi/plugins/: it has no place in "
            f"--pulumi-home {places['home']}") in err
    assert "nothing was installed" in err
    untouched(places)


def test_forged_a_pulumi_file_beside_bin_and_plugins_is_refused(monkeypatch, bundle_dir, places):
    forge(monkeypatch, bundle_dir, lambda m: repath(m, "pulumi/bin/pulumi", "pulumi/.bashrc"))
    code, _, err = install(bundle_dir, places)
    assert code == 1 and "pulumi/.bashrc: role pulumi, but not under pulumi/bin/ or pulumi/plugins/" in err, err
    untouched(places)


def test_forged_program_double_slash_absolute_names_where_it_would_land(monkeypatch, bundle_dir, places):
    evil = places["victim"] / "precious.txt"
    forge(monkeypatch, bundle_dir, lambda m: repath(m, "program/__main__.py", f"program/{evil}"))
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert (f"program/{evil}: would land at {evil}, outside --project {places['project']}: not a canonical "
            "relative path (absolute: bundle paths are relative)") in err
    untouched(places)


def test_forged_model_dir_double_slash_absolute_names_where_it_would_land(monkeypatch, bundle_dir, places):
    evil = places["victim"] / "authorized_keys"
    forge(monkeypatch, bundle_dir, lambda m: repath(m, "models/rr/weights.bin", f"models/rr/{evil}"))
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert (f"models/rr/{evil}: would land at {evil}, outside --models-dir {places['models']}: not a canonical "
            "relative path (an empty segment (//))") in err
    untouched(places)


def test_forged_dotdot_in_a_program_path_is_refused(monkeypatch, bundle_dir, places):
    forge(monkeypatch, bundle_dir, lambda m: repath(m, "program/__main__.py", "program/../victim/precious.txt"))
    code, _, err = install(bundle_dir, places)
    landing = places["victim"] / "precious.txt"
    assert code == 1, err
    assert (f"program/../victim/precious.txt: would land at {landing}, outside --project {places['project']}: "
            "not a canonical relative path (a `..` segment)") in err
    untouched(places)


def test_forged_model_dirs_entry_outside_the_models_directory_is_refused(monkeypatch, bundle_dir, places):
    def elsewhere(manifest: Manifest) -> None:
        manifest.stacks["t1"].model_dirs["models/emb"] = str(places["victim"] / "emb")

    forge(monkeypatch, bundle_dir, elsewhere)
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert (f'stacks["t1"].model_dirs["models/emb"]: {places["victim"] / "emb"} is absolute and outside the stack\'s '
            "models_dir") in err
    assert "install writes model files only inside the models directory" in err
    assert f"(--models-dir {places['models']})" in err
    untouched(places)


def test_forged_absolute_model_dir_goes_under_the_models_dir_the_command_line_gives(monkeypatch, built, bundle_dir,
                                                                                     places):
    """--models-dir OTHER wins: an absolute model directory under the stack's models_dir is taken relative."""
    original = built.host_models

    def absolute(manifest: Manifest) -> None:
        manifest.stacks["t1"].model_dirs["models/emb"] = str(original / "emb")

    forge(monkeypatch, bundle_dir, absolute)
    before = tree(original) if original.exists() else {}
    code, out, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 0, err
    assert tree(places["models"] / "emb") == tree(bundle_dir / "models" / "emb")
    assert (tree(original) if original.exists() else {}) == before  # the stack's directory: not touched


def test_forged_a_stack_name_with_a_slash_has_no_place_in_stacks(monkeypatch, bundle_dir, places):
    name = "../../victim/x"

    def slash(manifest: Manifest) -> None:
        manifest.stacks = {name: manifest.stacks["t1"]}
        repath(manifest, "stack/Pulumi.t1.yaml", f"stack/Pulumi.{name}.yaml")

    forge(monkeypatch, bundle_dir, slash)
    code, _, err = install(bundle_dir, places, "--skip", "pulumi", "--skip", "models")
    assert code == 1, err
    assert (f"stack/Pulumi.{name}.yaml: the stack file of stack {name!r} is stack/Pulumi.{name}.yaml (one file), "
            "the manifest lists") in err and f"it has no place in --project {places['project']}/stacks" in err
    untouched(places)


def test_forged_a_path_with_a_nul_byte_is_refused_and_shown_escaped(monkeypatch, bundle_dir, places):
    forge(monkeypatch, bundle_dir, lambda m: repath(m, "program/__main__.py", "program/x\0y"))
    code, _, err = install(bundle_dir, places)
    assert code == 1 and '"program/x\\u0000y": would land at' in err and "(a NUL byte at character 1)" in err, err
    untouched(places)


def test_every_forged_path_is_listed_at_once(monkeypatch, bundle_dir, places):
    def two(manifest: Manifest) -> None:
        repath(manifest, "program/__main__.py", "program/../a")
        repath(manifest, "models/rr/weights.bin", "models/rr/../../b")

    forge(monkeypatch, bundle_dir, two)
    code, _, err = install(bundle_dir, places)
    assert code == 1 and "2 manifest paths would be written outside their targets" in err, err
    assert "program/../a: would land at" in err and "models/rr/../../b: would land at" in err
    untouched(places)


# -- class 2: reachable with a real manifest and a symlink on this machine --------------------


def test_a_symlinked_model_directory_is_not_written_through(bundle_dir, places):
    places["models"].mkdir()
    (places["models"] / "emb").symlink_to(places["victim"])
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert (f"models/emb/config.json: would land at {places['victim'] / 'config.json'}, outside --models-dir "
            f"{places['models']}: {places['models'] / 'emb'} is a symlink to {places['victim']}; install never "
            "writes through a symlink out of its target") in err
    assert tree(places["victim"]) == {"precious.txt": b"never overwritten\n"}
    assert not places["project"].exists() and not places["home"].exists()


def test_a_plugin_path_escaping_through_a_symlink_planted_in_pulumi_home_is_refused(bundle_dir, places):
    (places["home"] / "plugins").mkdir(parents=True)
    (places["home"] / "plugins" / "resource-docker-v5.1.0").symlink_to(places["victim"])
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert (f"pulumi/plugins/{DOCKER_PLUGIN}: would land at {places['victim'] / 'pulumi-resource-docker'}, outside "
            f"--pulumi-home {places['home']}") in err
    assert tree(places["victim"]) == {"precious.txt": b"never overwritten\n"}
    assert not (places["home"] / "bin").exists()  # nothing else was installed either


def test_a_symlinked_directory_in_the_project_is_not_written_through(bundle_dir, places):
    places["project"].mkdir()
    (places["project"] / "Pulumi.yaml").write_text("name: x\n")
    (places["project"] / "tools").symlink_to(places["victim"])
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert f"program/tools/deploy.sh: would land at {places['victim'] / 'deploy.sh'}, outside --project" in err
    assert tree(places["victim"]) == {"precious.txt": b"never overwritten\n"}
    assert (places["project"] / "Pulumi.yaml").read_text() == "name: x\n"


def test_a_bundle_file_reached_through_a_symlink_is_not_read(bundle_dir, places):
    """A symlinked directory in the bundle passes the presence check; its files are outside the bundle."""
    outside = places["victim"] / "tools"
    shutil.copytree(bundle_dir / "program" / "tools", outside)
    shutil.rmtree(bundle_dir / "program" / "tools")
    (bundle_dir / "program" / "tools").symlink_to(outside)
    code, _, err = install(bundle_dir, places)
    assert code == 1, err
    assert (f"program/tools/deploy.sh: would be read from {outside / 'deploy.sh'}, outside the bundle {bundle_dir} "
            "(through a symlink in the bundle") in err
    assert not places["project"].exists()


@pytest.mark.parametrize("rel", [".git/config", ".GIT/hooks/pre-commit", "venv/bin/python",
                                 ".xinference-offline.lock", INSTALL_RECORD])
def test_a_resigned_program_file_in_the_sites_own_places_is_refused(bundle_dir, places, rel):
    owned = b"#!/bin/sh\necho owned\n"
    resign(bundle_dir, {f"program/{rel}": (owned, "program")})
    code, _, err = install(bundle_dir, places, "--skip", "pulumi", "--skip", "models", "--skip", "stack")
    assert code == 1, err
    assert f"program/{rel}: refused: the program never writes the site's own files" in err
    written = places["project"] / rel
    assert not written.is_file() or written.read_bytes() != owned  # the record is install's own, not this
    assert (places["project"] / "__main__.py").is_file()  # the rest of the program is installed


def test_a_resigned_program_file_landing_on_the_bundle_inside_the_project_is_refused(built, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: x\n")
    bundle = project / "carried"
    shutil.copytree(built.out, bundle)
    resign(bundle, {"program/carried/wheels/requirements.txt": (b"evil==1\n", "program")})
    code, _, err = cli("install", str(bundle), "--project", str(project), "--skip", "venv", "--skip", "pulumi",
                       "--skip", "models", "--quiet")
    assert code == 1, err
    assert (f"program/carried/wheels/requirements.txt: would land at {bundle / 'wheels' / 'requirements.txt'}, "
            f"inside the bundle {bundle} it installs from") in err
    assert (bundle / "wheels" / "requirements.txt").read_bytes() != b"evil==1\n"


def test_a_dangling_stack_file_symlink_is_never_written_through(bundle_dir, places):
    (places["project"] / "stacks").mkdir(parents=True)
    (places["project"] / "Pulumi.yaml").write_text("name: x\n")
    (places["project"] / "stacks" / "Pulumi.t1.yaml").symlink_to(places["victim"] / "cron-job")
    code, out, err = install(bundle_dir, places, "--skip", "pulumi", "--skip", "models")
    assert code == 0, err
    assert f"{places['project'] / 'stacks' / 'Pulumi.t1.yaml'} is a symlink; left as it is" in out
    assert not (places["victim"] / "cron-job").exists()


def test_a_tampered_install_record_cannot_make_install_delete_outside(bundle_dir, places):
    code, _, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 0, err
    victim = places["victim"] / "precious.txt"
    (places["models"] / "emb" / "link").symlink_to(places["victim"])
    st = victim.stat()
    record_path = places["models"] / INSTALL_RECORD
    record = json.loads(record_path.read_text())
    signature = [st.st_size, st.st_mtime_ns, st.st_ino, hashlib.sha256(victim.read_bytes()).hexdigest()]
    for key in ("emb/../../victim/precious.txt", str(victim), "emb/link/precious.txt"):
        record["files"][key] = signature
    record_path.write_text(json.dumps(record))
    code, out, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 0, err
    assert victim.read_text() == "never overwritten\n" and "removed" not in out
    keys = json.loads(record_path.read_text())["files"]
    assert "emb/../../victim/precious.txt" not in keys and "emb/link/precious.txt" not in keys  # forgotten
    assert (places["models"] / "emb" / "link").is_symlink()  # and nothing of the site's removed


def test_a_lock_file_planted_as_a_symlink_is_refused_not_followed(bundle_dir, places):
    places["models"].mkdir()
    (places["models"] / ".xinference-offline.lock").symlink_to(places["victim"] / "created-by-install")
    code, _, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 1, err
    assert (f"{places['models'] / '.xinference-offline.lock'}: cannot be used as install's lock file: a symlink "
            "(install never follows one there); remove it") in err
    assert not (places["victim"] / "created-by-install").exists()
    assert not (places["models"] / "emb").exists()


# -- class 2/3: targets that are no place to install (exit 2, before anything is touched) ---------


def test_a_models_dir_that_is_a_symlink_into_etc_is_refused(bundle_dir, places):
    etc_target = Path("/etc/xinference-offline-test-never-created")
    assert not etc_target.exists()
    places["models"].symlink_to(etc_target)
    code, _, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 2, err
    assert (f"--models-dir {places['models']} (= {etc_target}): resolves to {etc_target}, inside /etc, a system "
            "directory: install never writes there") in err
    assert not etc_target.exists()


def test_the_stacks_models_dir_in_etc_is_refused_and_named_as_the_stacks(monkeypatch, bundle_dir, places):
    def etc(manifest: Manifest) -> None:
        manifest.stacks["t1"].models_dir = "/etc/xinference-offline-test-never-created"

    forge(monkeypatch, bundle_dir, etc)
    code, _, err = cli("install", str(bundle_dir), "--skip", "program", "--skip", "pulumi", "--skip", "stack",
                       "--skip", "venv", "--quiet")
    assert code == 2, err
    assert ("the stack's models_dir (from the bundle manifest; --models-dir DIR overrides it) "
            "/etc/xinference-offline-test-never-created: inside /etc, a system directory") in err
    assert not Path("/etc/xinference-offline-test-never-created").exists()


def test_install_project_at_the_root_of_the_file_system_is_refused(bundle_dir, places):
    code, _, err = cli("install", str(bundle_dir), "--project", "/", "--skip", "venv", "--skip", "pulumi",
                       "--skip", "models", "--quiet")
    assert code == 2, err
    assert "--project /: is /, the top of a directory tree: install fills a directory of its own" in err


def test_a_pulumi_home_in_a_system_directory_is_refused(bundle_dir, places):
    home = "/usr/lib/xinference-offline-test-never-created"
    code, _, err = install(bundle_dir, {**places, "home": Path(home)})
    assert code == 2 and f"--pulumi-home {home}: inside /usr/lib, a system directory" in err, err
    assert not Path(home).exists() and not places["project"].exists()


OVERLAPS = {  # name -> (which target, where relative to the bundle B, expected message after the target)
    "models dir = BUNDLE/models": ("models", "B/models", "lies inside the bundle {B} it installs from: install "
                                                         "would write onto its own source"),
    "models dir inside the bundle": ("models", "B/models/emb", "lies inside the bundle {B} it installs from"),
    "bundle inside the models dir": ("models", "B/..", "holds the bundle {B} it installs from: a model directory "
                                                       "could land on the bundle's files"),
    "project inside the bundle": ("project", "B/program", "lies inside the bundle {B} it installs from"),
    "pulumi home inside the bundle": ("home", "B/pulumi", "lies inside the bundle {B} it installs from"),
}


@pytest.mark.parametrize("case", OVERLAPS, ids=list(OVERLAPS))
def test_a_target_overlapping_the_bundle_is_refused_naming_both(bundle_dir, places, case):
    which, where, message = OVERLAPS[case]
    target = Path(os.path.normpath(where.replace("B", str(bundle_dir))))
    before = tree(bundle_dir)
    flag = {"models": "--models-dir", "project": "--project", "home": "--pulumi-home"}[which]
    code, _, err = install(bundle_dir, {**places, which: target})
    assert code == 2, err
    assert f"{flag} {target}: " + message.format(B=bundle_dir) in err
    assert tree(bundle_dir) == before


def test_a_models_dir_spelled_through_a_symlink_into_the_bundle_is_refused(bundle_dir, places, tmp_path):
    (tmp_path / "models-link").symlink_to(bundle_dir / "models")
    code, _, err = install(bundle_dir, {**places, "models": tmp_path / "models-link"})
    assert code == 2, err
    assert (f"--models-dir {tmp_path / 'models-link'} (= {bundle_dir / 'models'}): lies inside the bundle "
            f"{bundle_dir}") in err


def test_a_venv_inside_the_bundle_is_refused(bundle_dir, places):
    code, _, err = cli("install", str(bundle_dir), "--venv", str(bundle_dir / "venv"), "--skip", "program",
                       "--skip", "pulumi", "--skip", "models", "--skip", "stack", "--quiet")
    assert code == 2 and f"--venv {bundle_dir / 'venv'}: lies inside the bundle {bundle_dir}" in err, err
    assert not (bundle_dir / "venv").exists()


def test_two_targets_in_one_directory_are_refused_naming_both(bundle_dir, places):
    code, _, err = install(bundle_dir, {**places, "models": places["project"]})
    assert code == 2, err
    assert (f"--project {places['project']} and --models-dir {places['project']} are one directory: each target "
            "of install needs its own") in err
    untouched({**places, "models": places["victim"] / "absent"})


def test_a_model_landing_in_a_project_nested_in_the_models_dir_is_refused_naming_both(bundle_dir, places):
    project = places["models"] / "emb"
    code, _, err = install(bundle_dir, {**places, "project": project})
    assert code == 1, err
    assert (f"models/emb/config.json: would land at {project / 'config.json'}, inside --project {project}, another "
            f"target of this install that lies in --models-dir {places['models']}") in err
    assert not places["models"].exists()


# -- class 10: modes and durability of what install writes ---------------------------------------


def test_installed_files_get_0644_or_0755_whatever_the_umask(bundle_dir, places):
    old = os.umask(0o077)
    try:
        code, _, err = install(bundle_dir, places)
    finally:
        os.umask(old)
    assert code == 0, err

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(places["models"] / "emb" / "config.json") == 0o644
    assert mode(places["models"] / INSTALL_RECORD) == 0o644
    assert mode(places["project"] / "__main__.py") == 0o644
    assert mode(places["project"] / "tools" / "deploy.sh") == 0o755
    assert mode(places["project"] / "stacks" / "Pulumi.t1.yaml") == 0o644
    assert mode(places["home"] / "bin" / "pulumi") == 0o755
    assert mode(places["home"] / "plugins" / DOCKER_PLUGIN) == 0o755
    assert mode(places["project"] / ".state") == 0o700  # the site's Pulumi state: private


def test_every_rename_is_followed_by_an_fsync_of_its_directory(bundle_dir, places, monkeypatch):
    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, bundle.format.filecopy.fsync_directory

    def replace(src, dst, *args, **kwargs):
        events.append(("rename", str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def fsync_directory(directory):
        events.append(("fsync", str(directory)))
        return real_fsync(directory)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(bundle.format.filecopy, "fsync_directory", fsync_directory)  # model files
    monkeypatch.setattr(bundle.format.manifest, "fsync_directory", fsync_directory)  # the install record
    code, _, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 0, err
    renames = [(i, dst) for i, (kind, dst) in enumerate(events) if kind == "rename"]
    models = places["models"]
    assert {dst for _i, dst in renames} == {str(models / rel) for rel in tree(bundle_dir / "models")} | \
        {str(models / INSTALL_RECORD)}
    for index, dst in renames:
        assert events[index + 1] == ("fsync", str(Path(dst).parent)), events[index:index + 2]


def test_the_venv_stamp_is_written_by_rename_with_mode_0644(built, tmp_path, monkeypatch):
    """A venv whose python is a stand-in (pip's part is covered by the offline flow test)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv / "bin" / "python").chmod(0o755)
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        renamed.append(str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(bundle.format.manifest.os, "replace", replace)
    old = os.umask(0o077)
    try:
        result = install_venv(built.out, load_manifest(built.out).for_stack(None), venv, "python3", quiet=True)
    finally:
        os.umask(old)
    stamp = venv / VENV_STAMP
    assert "installed 1 wheel with no index" in result.note
    assert renamed == [str(stamp)] and stamp.read_text().strip()
    assert stat.S_IMODE(stamp.stat().st_mode) == 0o644
    assert not [p for p in venv.iterdir() if p.name.startswith(f".{VENV_STAMP}.")]  # no temp left


# -- the second wall at write time, and what a refusal lists -------------------------------------


def test_a_symlink_planted_after_the_plan_was_checked_stops_the_install_at_write_time(bundle_dir, places,
                                                                                       monkeypatch):
    real_space_check = bundle.install.command.check_model_space

    def plant_then_check(plan):  # runs after the plan was checked, before the first write
        real_space_check(plan)
        places["models"].mkdir()
        (places["models"] / "rr").symlink_to(places["victim"])

    monkeypatch.setattr(bundle.install.command, "check_model_space", plant_then_check)
    code, _, err = install(bundle_dir, places, "--skip", "program", "--skip", "pulumi", "--skip", "stack")
    assert code == 1, err
    assert "stopped: a destination changed while install ran (a symlink appeared)" in err
    assert (f"models/rr/config.json: would land at {places['victim'] / 'config.json'}, outside --models-dir "
            f"{places['models']}: {places['models'] / 'rr'} is a symlink to {places['victim']}") in err
    assert tree(places["victim"]) == {"precious.txt": b"never overwritten\n"}


def test_a_refusal_of_thousands_of_paths_lists_the_first_ones_and_counts_the_rest(tmp_path):
    target = Target("--models-dir", tmp_path / "models")
    confinement = Confinement(tmp_path / "bundle", [target])
    for index in range(MAX_LISTED + 7):
        confinement.place(target, f"emb/../../x{index}", f"models/emb/../../x{index}")
    with pytest.raises(ConfinementError) as caught:
        confinement.check()
    message = str(caught.value)
    assert message.startswith(f"refusing to install: {MAX_LISTED + 7} manifest paths would be written outside "
                              "their targets")
    assert message.count("would land at") == MAX_LISTED
    assert f"~ and 7 more: of the same kinds (the first {MAX_LISTED} are listed)" in message
