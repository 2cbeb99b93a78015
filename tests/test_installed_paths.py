"""`install` records where it put the bundle and the models; the program fills them in where the
stack file names none (bundle/format/site_record.py), and refuses at preview a stack whose image
must be loaded while its tar is missing (components/image_check.py).

Real files and a real `install` run with the bare python (`-S`); the engine question runs
against this machine's Docker engine when one answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from bundle.format.layout import SITE_RECORD, is_site_owned
from bundle.format.manifest import load_manifest
from bundle.format.site_record import BUNDLE_DIR_KEY, MODELS_DIR_KEY, read_record, with_installed_paths, write_record
from components.image_check import missing_tar_message, needs_load
from tests.bundle_kit import build_args, cli, make_site

ROOT = Path(__file__).resolve().parent.parent
BUILT = "/data/docker_models"  # what the bundle's own stack file says (the build machine's)


def never_asked(bundle_dir: str):
    raise AssertionError("the bundle's stack file needs no reading here")


def test_a_stack_that_names_no_directories_takes_the_installed_ones():
    config, notes = with_installed_paths({"xinference-offline:mode": "docker"},
                                         {"bundle_dir": "/site/bundle", "models_dir": "/srv/models"}, lambda d: BUILT)
    assert config[BUNDLE_DIR_KEY] == "/site/bundle" and config[MODELS_DIR_KEY] == "/srv/models"
    assert len(notes) == 2 and "bundle_dir: /site/bundle" in notes[0] and "models_dir: /srv/models" in notes[1]


def test_the_build_machine_s_models_dir_gives_way_to_where_install_put_the_models():
    raw = {MODELS_DIR_KEY: BUILT}
    config, notes = with_installed_paths(raw, {"bundle_dir": "/site/bundle", "models_dir": "/srv/models"},
                                         lambda d: BUILT if d == "/site/bundle" else None)
    assert config[MODELS_DIR_KEY] == "/srv/models"
    assert f"the stack file's {BUILT} is the build machine's" in notes[-1]
    assert raw == {MODELS_DIR_KEY: BUILT}  # the caller's mapping is left as it was


def test_what_the_site_wrote_in_its_stack_file_wins():
    raw = {BUNDLE_DIR_KEY: "/mine/bundle", MODELS_DIR_KEY: "/mine/models"}
    config, notes = with_installed_paths(raw, {"bundle_dir": "/site/bundle", "models_dir": "/srv/models"},
                                         lambda d: BUILT)
    assert config == raw and notes == []
    # the same directories as recorded: nothing to say
    same = {BUNDLE_DIR_KEY: "/site/bundle", MODELS_DIR_KEY: "/srv/models"}
    assert with_installed_paths(same, {"bundle_dir": "/site/bundle", "models_dir": "/srv/models"},
                                never_asked) == (same, [])


def test_no_record_changes_nothing():
    raw = {MODELS_DIR_KEY: BUILT}
    assert with_installed_paths(raw, {}, never_asked) == (raw, [])


def test_the_record_keeps_every_stack_and_is_a_site_file(tmp_path):
    assert write_record(tmp_path, "gpu-node-1", Path("/b"), Path("/m1"), "id1") is True
    assert write_record(tmp_path, "gpu-node-2", Path("/b"), None, "id1") is True
    assert write_record(tmp_path, "gpu-node-2", Path("/b"), None, "id1") is False  # unchanged: not rewritten
    assert read_record(tmp_path) == {"gpu-node-1": {"bundle_dir": "/b", "models_dir": "/m1", "bundle_id": "id1"},
                                     "gpu-node-2": {"bundle_dir": "/b", "bundle_id": "id1"}}
    assert is_site_owned(SITE_RECORD)  # a bundle's program can never carry (overwrite) it
    (tmp_path / SITE_RECORD).write_text("{not json")
    assert read_record(tmp_path) == {}


def test_install_records_the_bundle_and_the_models_directory_it_filled(tmp_path):
    site = make_site(tmp_path / "online")
    assert cli(*build_args(site))[0] == 0
    project, models = tmp_path / "project", tmp_path / "elsewhere" / "models"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: xinference-offline\nruntime: python\n")
    argv = [sys.executable, "-S", "-m", "bundle", "install", str(site.out), "--project", str(project),
            "--models-dir", str(models), "--skip", "venv", "--skip", "pulumi", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"recorded for pulumi in {project / SITE_RECORD}: bundle_dir {site.out}, models_dir {models}" in done.stdout
    record = json.loads((project / SITE_RECORD).read_text())
    assert record["stacks"][site.stack] == {"bundle_dir": str(site.out), "models_dir": str(models),
                                            "bundle_id": load_manifest(site.out).bundle_id}
    # the installed stack file still says the build machine's models_dir: it was not rewritten
    stack_file = (project / "stacks" / f"Pulumi.{site.stack}.yaml").read_text()
    assert str(site.host_models) in stack_file and str(models) not in stack_file
    # and what the program reads from it: the models where install put them
    config, _ = with_installed_paths({MODELS_DIR_KEY: str(site.host_models)}, read_record(project)[site.stack],
                                     lambda d: load_manifest(Path(d)).for_stack(site.stack).models_dir)
    assert config == {BUNDLE_DIR_KEY: str(site.out), MODELS_DIR_KEY: str(models)}
    again = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert "install: nothing to do" in again.stdout and "recorded" not in again.stdout


def test_the_shipped_stack_files_name_no_image_tar_a_bundle_never_writes():
    import yaml

    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        image = (yaml.safe_load(path.read_text())["config"].get("xinference-offline:image") or {})
        tar = image.get("tar") or ""
        assert "/bundle/" not in tar, f"{path.name}: image.tar {tar} (the bundle writes images/<image name>.tar)"


def test_an_image_is_loaded_when_the_engine_lacks_it_or_holds_another_id():
    assert needs_load(None, None) and needs_load(None, "sha256:" + "a" * 64)
    assert needs_load("sha256:" + "b" * 64, "sha256:" + "a" * 64)
    assert not needs_load("sha256:" + "a" * 64, "sha256:" + "a" * 64)
    assert not needs_load("sha256:" + "b" * 64, None)  # no id to compare: the name is there


def test_the_missing_tar_message_names_image_engine_and_both_paths():
    message = missing_tar_message("xprobe/xinference:v4.1.0", None, "unix:///var/run/docker.sock",
                                  "/opt/x/bundle/images/xinference.tar", "/opt/x/bundle/images/xprobe_xinference_v4.1.0.tar")
    for part in ("xprobe/xinference:v4.1.0", "unix:///var/run/docker.sock", "/opt/x/bundle/images/xinference.tar",
                 "/opt/x/bundle/images/xprobe_xinference_v4.1.0.tar", "nothing was changed", "never pulls"):
        assert part in message, part
    own = missing_tar_message("img", "sha256:" + "a" * 64, "ssh://ops@h", "/b/images/img.tar", "/b/images/img.tar")
    assert "the bundle's image tar /b/images/img.tar is missing" in own and "unpack the bundle again" in own
