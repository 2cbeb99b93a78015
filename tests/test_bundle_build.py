"""`bundle build` from local sources: the layout `plan` lists, incremental rebuilds, clear errors,
and the real ModelScope / Hugging Face / Pulumi download code run against local layouts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bundle.contents.items import bundle_items
from bundle.contents.stacks import Source
from bundle.build.fetch import hub_cache_dir
from bundle.format.image_dir import image_dir_of
from bundle.format.manifest import MANIFEST_NAME, load_manifest
from bundle.build.pulumi_release import pulumi_versions
from stackspec.stack_file import from_stack_file
from tests.bundle_kit import (IMAGE, build_args, cli, image_id_of_tar, make_image_tar, make_mirror, make_pulumi_dir,
                              make_site, make_wheel, run_cli, write_stack)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)


def build(site, *extra: str) -> str:
    code, out, err = cli(*build_args(site, *extra))
    assert code == 0, err
    return out


def fetched(summary: str) -> dict[str, str]:
    """{item path: FETCHED NOW column} from the build summary."""
    rows = {}
    for line in summary.splitlines()[2:]:
        if not line.startswith("  "):
            continue
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0] != "total":
            rows[parts[0]] = parts[3].split("  ")[-1].strip() if "reused" not in parts[3] else "reused"
    return rows


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_build_produces_exactly_what_plan_lists(site):
    summary = build(site)
    whole = load_manifest(site.out)
    assert list(whole.stacks) == ["t1"]
    manifest = whole.for_stack(None)  # the only stack
    cfg = from_stack_file(site.stacks / "Pulumi.t1.yaml")
    items = bundle_items(cfg, "t1")
    paths = [f.path for f in manifest.files]
    # the image item images/NAME.tar is kept as the tar's members, images/NAME/... (bundle/format/image_dir.py)
    places = [image_dir_of(i.path) + "/" if i.role == "image" else i.path for i in items]
    for place in places:
        if place.endswith("/"):
            assert any(p.startswith(place) for p in paths), place
        else:
            assert place in paths, place
    assert all(any(p == i or (i.endswith("/") and p.startswith(i)) for i in places) for p in paths)
    on_disk = sorted(str(p.relative_to(site.out)) for p in site.out.rglob("*") if p.is_file())
    assert on_disk == sorted(paths + [MANIFEST_NAME])
    by_path = manifest.by_path()
    assert by_path["images/xprobe_xinference_v4.1.0/manifest.json"].role == "image" and manifest.image == IMAGE
    assert by_path["models/vad/vad.onnx"].model == "emb"  # a companion counts for its model
    assert by_path["models/rr/weights.bin"].model == "rr"
    assert by_path["wheels/requirements.txt"].role == "wheel"
    assert by_path["pulumi/bin/pulumi-resource-docker"].role == "pulumi"
    assert by_path["stack/Pulumi.t1.yaml"].role == "stack"
    assert {p for p in paths if p.startswith("program/")} == {"program/Pulumi.yaml", "program/__main__.py",
                                                             "program/tools/deploy.sh"}
    assert by_path["program/Pulumi.yaml"].role == "program" and os.access(site.out / "program/tools/deploy.sh", os.X_OK)
    assert manifest.model_dirs == {"models/emb": "emb", "models/vad": "vad", "models/rr": "rr"}
    assert manifest.models_dir == str(site.host_models)
    assert manifest.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert set(manifest.model_digests()) == {"emb", "rr"}
    assert "total" in summary and f"bundle id {whole.bundle_id}" in summary and manifest.bundle_id == whole.bundle_id
    code, plan_out = run_cli("plan", "--stack", "t1", "--stacks-dir", str(site.stacks), "--bundle", str(site.out))
    assert code == 0 and "MISSING" not in plan_out


def test_the_manifest_names_the_image_id_the_tar_loads_as(site):
    """An engine that already has this id needs no transfer (components/image.py skips the load)."""
    assert cli(*build_args(site))[0] == 0
    manifest = load_manifest(site.out)
    [entry] = manifest.stacks.values()
    assert entry.image_id == image_id_of_tar(site.root / "image" / "xinference.tar")
    assert entry.image_dir == "images/xprobe_xinference_v4.1.0" and entry.image_tar is None
    assert entry.image_id.startswith("sha256:") and len(entry.image_id) == 71


def test_the_image_tar_given_is_hard_linked_not_copied_and_pack_refuses_it_rewritten_in_place(site, tmp_path):
    """A 5 GB image is not copied when a link serves; a tar the operator rewrites in place afterwards
    (`docker save IMAGE > file` truncates the same inode) changes the bundle's too, and pack says so.
    (The tar form: bundles before the image was kept as files, and --image-form tar.)"""
    assert cli(*build_args(site, "--image-form", "tar"))[0] == 0
    [entry] = load_manifest(site.out).stacks.values()
    source = site.root / "image" / "xinference.tar"
    assert (site.out / entry.image_tar).stat().st_ino == source.stat().st_ino
    with open(source, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    code, _, err = cli("pack", str(site.out), "-o", str(tmp_path / "site.tar"))
    assert code == 1 and "does not match its manifest; nothing was packed" in err, err
    assert f"{entry.image_tar}: sha256 mismatch" in err, err
    assert not (tmp_path / "site.tar").exists()


def test_a_rebuild_with_no_change_touches_nothing_and_keeps_the_bundle_id(site):
    build(site)
    before_id = load_manifest(site.out).bundle_id
    files = {p: identity(p) for p in site.out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    summary = build(site)
    assert set(fetched(summary).values()) == {"reused"}
    assert "0 files, 0 B (20 reused)" in summary  # 19 (the image is 3 files) + sbom.cdx.json
    assert {p: identity(p) for p in files} == files
    assert load_manifest(site.out).bundle_id == before_id


def test_an_incremental_rebuild_touches_only_the_changed_model(site):
    build(site)
    old = load_manifest(site.out).for_stack("t1")
    untouched = {p: identity(p) for p in site.out.rglob("*")
                 if p.is_file() and p.name not in (MANIFEST_NAME, "sbom.cdx.json") and "models/rr/" not in str(p)}
    (site.src("rr") / "weights.bin").write_bytes(os.urandom(32 * 1024))
    summary = build(site)
    rows = fetched(summary)
    assert rows.pop("models/rr/") == "1 file, 32.0 KiB"
    assert rows.pop("sbom.cdx.json").startswith("1 file, ")  # it lists the new file's sha256
    assert set(rows.values()) == {"reused"}
    assert {p: identity(p) for p in untouched} == untouched
    new = load_manifest(site.out).for_stack("t1")
    changed = {uid for uid, digest in new.model_digests().items() if old.model_digests()[uid] != digest}
    assert changed == {"rr"}
    assert new.image_sha256() == old.image_sha256()
    assert cli("verify", str(site.out), "--quiet")[0] == 0


def test_files_no_longer_wanted_are_removed(site):
    build(site)
    (site.src("emb") / "tokenizer" / "vocab.txt").unlink()
    write_stack(site, ["emb"], companion=None)  # rr and the vad companion leave the stack
    build(site)
    manifest = load_manifest(site.out).for_stack("t1")
    assert not (site.out / "models" / "rr").exists() and not (site.out / "models" / "vad").exists()
    assert not (site.out / "models" / "emb" / "tokenizer").exists()
    assert set(manifest.model_digests()) == {"emb"}
    assert cli("verify", str(site.out), "--quiet")[0] == 0


def test_a_failed_rebuild_leaves_no_manifest_and_the_next_one_carries_on(site):
    build(site)
    moved = site.root / "rr-elsewhere"
    site.src("rr").rename(moved)
    code, _, err = cli(*build_args(site))
    assert code == 2 and f"source.path = '{site.src('rr')}': no such directory" in err
    assert not (site.out / MANIFEST_NAME).exists()  # nothing vouches for a half-refreshed bundle
    assert cli("verify", str(site.out), "--quiet")[0] == 1
    moved.rename(site.src("rr"))
    summary = build(site)
    assert set(fetched(summary).values()) == {"reused"}


def test_full_copies_everything_again(site):
    build(site)
    summary = build(site, "--full")
    assert "(0 reused)" in summary


def test_a_bad_stack_is_a_usage_error_naming_the_key(site):
    path = site.stacks / "Pulumi.t1.yaml"
    data = yaml.safe_load(path.read_text())
    data["config"]["xinference-offline:models"][0]["typ"] = "embedding"
    path.write_text(yaml.safe_dump(data))
    code, _, err = cli(*build_args(site))
    assert code == 2 and "models[0].typ" in err and "unknown key" in err
    assert not site.out.exists()


def test_a_missing_stack_file_is_a_usage_error(site):
    code, _, err = cli("build", "--stack", "nowhere", "--stacks-dir", str(site.stacks), "--out", str(site.out))
    assert code == 2 and "Pulumi.nowhere.yaml" in err


def test_the_image_tar_must_hold_the_configured_image(site):
    other = make_image_tar(site.root / "other.tar", image="someone/else:latest")
    args = build_args(site)
    args[args.index("--image-tar") + 1] = str(other)
    code, _, err = cli(*args)
    assert code == 2 and f"holds someone/else:latest, not image.name '{IMAGE}'" in err
    (site.root / "plain.tar").write_bytes(b"\0" * 10240)
    args[args.index("--image-tar") + 1] = str(site.root / "plain.tar")
    code, _, err = cli(*args)
    assert code == 2 and "not a readable `docker save` archive" in err or "has no manifest.json" in err
    args[args.index("--image-tar") + 1] = str(site.root / "absent.tar")
    code, _, err = cli(*args)
    assert code == 2 and "--image-tar" in err and "absent.tar: no such file" in err


def test_without_a_tar_build_uses_docker_save_and_says_what_to_do_when_it_cannot(site, monkeypatch):
    args = build_args(site)
    i = args.index("--image-tar")
    del args[i:i + 2]
    monkeypatch.setenv("PATH", str(site.root / "no-docker-here"))
    code, _, err = cli(*args)
    assert code == 2
    assert f"`docker` is not installed here to `docker save {IMAGE}`; pass --image-tar FILE" in err


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI on this machine")
def test_docker_save_failure_is_reported_with_dockers_message(site, monkeypatch):
    # Without an engine, or with one that lacks the image, `docker save` fails with its own message.
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30).returncode == 0:
        pytest.skip(f"the Docker engine here holds {IMAGE}: docker save would succeed")
    args = build_args(site)
    i = args.index("--image-tar")
    del args[i:i + 2]
    code, _, err = cli(*args)
    assert code == 1 and f"docker save {IMAGE} failed:" in err and "--image-tar FILE" in err


def test_a_toolchain_without_a_plugin_is_refused_naming_it(site):
    bin_dir = make_pulumi_dir(site.root / "partial-toolchain", plugins=("command",))
    args = build_args(site)
    args[args.index("--pulumi-dir") + 1] = str(bin_dir)
    code, _, err = cli(*args)
    assert code == 2 and "lacks pulumi-resource-docker" in err and "tools/pulumi_toolchain.py" in err


def test_the_toolchain_dir_may_be_its_parent_with_a_plugins_dir(site):
    toolchain = site.root / "toolchain"
    (toolchain / "bin" / "pulumi-resource-docker").unlink()
    plugin = toolchain / "plugins" / "resource-docker-v5.1.0" / "pulumi-resource-docker"
    plugin.parent.mkdir(parents=True)
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    (toolchain / "plugins" / "resource-docker-v5.1.0.lock").write_text("")
    args = build_args(site)
    args[args.index("--pulumi-dir") + 1] = str(toolchain)
    build_out = cli(*args)
    assert build_out[0] == 0, build_out[2]
    paths = load_manifest(site.out).by_path()
    assert "pulumi/plugins/resource-docker-v5.1.0/pulumi-resource-docker" in paths
    assert not any(p.endswith(".lock") for p in paths)


def test_incomplete_wheels_are_refused_before_the_air_gap(site, monkeypatch):
    (site.root / "requirements.txt").write_text("xoffline_probe==1.0\nxoffline-not-there==2.0\n")
    # a wheel this machine's pip settings could find must not count: the offline server lacks it
    make_wheel(site.root / "machine-wheels", "xoffline_not_there", "2.0")
    monkeypatch.setenv("PIP_FIND_LINKS", str(site.root / "machine-wheels"))
    code, _, err = cli(*build_args(site))
    assert code == 2 and "cannot satisfy" in err and "xoffline-not-there" in err


def test_an_unrelated_output_directory_is_never_cleaned(site):
    site.out.mkdir(parents=True)
    (site.out / "thesis.tex").write_text("years of work")
    code, _, err = cli(*build_args(site))
    assert code == 2 and "is not empty and is not a bundle built here" in err
    assert (site.out / "thesis.tex").read_text() == "years of work"


# -- the hub download code, run for real against the download cache ----------------------------


HUB_STACK_MODELS = [
    {"uid": "bce-embedding-base_v1", "type": "embedding", "path": "bce-embedding-base_v1",
     "source": {"hub": "modelscope", "id": "maidalun/bce-embedding-base_v1", "revision": "master"}},
    {"uid": "bge-small", "name": "bge-small-en-v1.5", "type": "embedding", "path": "bge-small",
     "source": {"hub": "huggingface", "id": "BAAI/bge-small-en-v1.5", "revision": "main"}},
]


def write_hub_stack(site) -> None:
    path = site.stacks / f"Pulumi.{site.stack}.yaml"
    data = yaml.safe_load(path.read_text())
    data["config"]["xinference-offline:models"] = HUB_STACK_MODELS
    path.write_text(yaml.safe_dump(data))


def test_hub_models_come_through_the_real_libraries_without_their_bookkeeping(site):
    """modelscope.snapshot_download and huggingface_hub.snapshot_download run for real with
    local_files_only (--hub-offline) on a download cache laid out as they leave it."""
    pytest.importorskip("modelscope", reason="modelscope is not installed (pip install modelscope)")
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install huggingface_hub)")
    write_hub_stack(site)
    cache = site.out.parent / f".{site.out.name}.build-cache"
    ms = hub_cache_dir(cache, Source("modelscope", "maidalun/bce-embedding-base_v1", "master"))
    hf = hub_cache_dir(cache, Source("huggingface", "BAAI/bge-small-en-v1.5", "main"))
    for root, bookkeeping in ((ms, [".msc", ".mv", "._____temp/part"]),
                              (hf, [".cache/huggingface/download/model.safetensors.metadata"])):
        (root / "1_Pooling").mkdir(parents=True)
        (root / "config.json").write_text('{"hidden_size": 384}')
        (root / "model.safetensors").write_bytes(os.urandom(4096))
        (root / "1_Pooling" / "config.json").write_text("{}")
        for rel in bookkeeping:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("library state")
    summary = build(site, "--hub-offline")
    manifest = load_manifest(site.out)
    for model in ("bce-embedding-base_v1", "bge-small"):
        files = sorted(f.path for f in manifest.files if f.model == model)
        assert files == [f"models/{model}/1_Pooling/config.json", f"models/{model}/config.json",
                         f"models/{model}/model.safetensors"], files
    # hard links from the download cache: no second copy of the weights on disk
    assert (site.out / "models/bge-small/model.safetensors").stat().st_ino == (hf / "model.safetensors").stat().st_ino
    assert "models/bge-small/" in summary


def test_a_hub_model_absent_from_the_cache_is_a_clear_failure_with_hub_offline(site):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install huggingface_hub)")
    path = site.stacks / f"Pulumi.{site.stack}.yaml"
    data = yaml.safe_load(path.read_text())
    data["config"]["xinference-offline:models"] = HUB_STACK_MODELS[1:]
    path.write_text(yaml.safe_dump(data))
    shutil.rmtree(site.out.parent, ignore_errors=True)
    code, _, err = cli(*build_args(site, "--hub-offline"))
    assert code == 1
    assert "huggingface BAAI/bge-small-en-v1.5@main: download failed" in err
    assert "not in the download cache yet" in err


def test_a_missing_hub_library_names_the_package_to_install(site):
    write_hub_stack(site)
    script = ("import sys; sys.modules['modelscope'] = None\n"  # as if `pip install modelscope` never ran
              "from bundle.cli import main\n"
              f"sys.exit(main({build_args(site, '--hub-offline')!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "needs the `modelscope` package on this online machine: venv/bin/pip install modelscope" in proc.stderr


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("www.modelscope.cn", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not os.environ.get("BUNDLE_TEST_HUB_NETWORK") or not _hub_reachable(),
                    reason="the network download path needs hub access (this machine reaches only package "
                           "registries); run with BUNDLE_TEST_HUB_NETWORK=1 on an online machine")
def test_a_real_modelscope_download(site):  # pragma: no cover - needs the network
    path = site.stacks / f"Pulumi.{site.stack}.yaml"
    data = yaml.safe_load(path.read_text())
    data["config"]["xinference-offline:models"] = HUB_STACK_MODELS[:1]
    path.write_text(yaml.safe_dump(data))
    build(site)
    assert any(f.path.endswith("config.json") for f in load_manifest(site.out).files)


# -- the Pulumi release download code, against a file:// mirror in get.pulumi.com's layout -----


def test_without_pulumi_dir_the_release_archives_are_downloaded_from_the_mirror(site):
    mirror = make_mirror(site.root / "mirror")
    args = build_args(site, "--pulumi-url", f"file://{mirror}")
    i = args.index("--pulumi-dir")
    del args[i:i + 2]
    code, _, err = cli(*args)
    assert code == 0, err
    paths = load_manifest(site.out).by_path()
    docker = pulumi_versions()["docker"]
    assert {"pulumi/bin/pulumi", "pulumi/bin/pulumi-language-python",
            f"pulumi/plugins/resource-docker-v{docker}/pulumi-resource-docker"} <= set(paths)
    assert os.access(site.out / "pulumi/bin/pulumi", os.X_OK)
    # cached: a second build needs no mirror
    shutil.rmtree(mirror)
    assert cli(*args)[0] == 0


def test_an_unreachable_pulumi_mirror_says_what_to_pass(site):
    args = build_args(site, "--pulumi-url", f"file://{site.root}/no-mirror")
    i = args.index("--pulumi-dir")
    del args[i:i + 2]
    code, _, err = cli(*args)
    assert code == 1 and "cannot download" in err and "pass --pulumi-dir" in err


def test_build_help_exits_0(capsys):
    code, _ = run_cli("build", "--help")
    assert code == 0 and "--image-tar" in capsys.readouterr().out


def test_build_s_default_project_is_this_checkout():
    # the default of --project: the program a bundle carries (a module move once pointed it at bundle/)
    from bundle.build.command import PROJECT_ROOT

    assert (PROJECT_ROOT / "Pulumi.yaml").is_file() and (PROJECT_ROOT / "__main__.py").is_file(), PROJECT_ROOT
