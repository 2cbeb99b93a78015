"""Model files reaching an ssh:// Docker host: copy + verify resources in the graph, and the
verify script run for real against real files (it is what the server runs)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Optional

from bundle.format.manifest import FileEntry, Manifest, StackEntry, StackManifest
from components.remote_sync import directory_copies, verify_script
from tests.stack_configs import docker_stack, reference_models
from tests.test_program import CONTAINER, run_program


def make_bundle(root: Path, files: dict[str, bytes], image_tar: Optional[FileEntry] = None) -> StackManifest:
    """A bundle for the stack the program runs as under the mocks (gpu-node-1): its view."""
    entries = []
    models: dict[str, list[str]] = {}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        model = rel.split("/")[1]
        if model == "_engine_packages":  # the carried wheel folder: a directory of the first model (emb)
            models.setdefault("emb", []).append("models/_engine_packages")
            model = "emb"
        else:
            models.setdefault(model, []).insert(0, f"models/{model}")
        entries.append(FileEntry(rel, len(data), hashlib.sha256(data).hexdigest(), "model", model))
    stack = StackEntry(models_dir="/data/m", model_dirs={d: d.split("/", 1)[1] for dirs in models.values() for d in dirs},
                       models=models)
    if image_tar is not None:
        entries.append(image_tar)  # listed, not written: the program only reads its path and sha256
        stack.image, stack.image_tar = "xprobe/xinference:v4.1.0", image_tar.path
    manifest = Manifest(stacks={"gpu-node-1": stack}, files=entries)
    manifest.save(root)
    return manifest.for_stack("gpu-node-1")


FILES = {
    "models/emb/config.json": b'{"dim": 384}',
    "models/emb/weights/model.safetensors": b"\x00weights" * 100,
    "models/rerank/config.json": b"{}",
}


def test_verify_script_accepts_intact_files_and_names_a_damaged_one(tmp_path):
    bundle = tmp_path / "bundle"
    manifest = make_bundle(bundle, FILES)
    copy, = directory_copies(manifest, {"models/emb/": str(bundle / "models" / "emb")})
    assert copy.files == (("config.json", hashlib.sha256(FILES["models/emb/config.json"]).hexdigest()),
                          ("weights/model.safetensors",
                           hashlib.sha256(FILES["models/emb/weights/model.safetensors"]).hexdigest()))
    ok = subprocess.run(["bash", "-c", verify_script(copy)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (bundle / "models" / "emb" / "weights" / "model.safetensors").write_bytes(b"\x01weights" * 100)
    bad = subprocess.run(["bash", "-c", verify_script(copy)], capture_output=True, text=True)
    assert bad.returncode != 0 and "weights/model.safetensors: FAILED" in bad.stdout + bad.stderr


def test_ssh_host_gets_copy_and_verify_before_the_container(tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, FILES)
    models = [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [0], "path": "emb"},
              {"uid": "rerank", "name": "bce-reranker-base_v1", "type": "rerank", "gpus": [0], "path": "rerank",
               "enabled": False}]
    mocks, _ = run_program(docker_stack(models=models, gpus=[0], bundle_dir=str(bundle), models_dir="/data/m",
                                        docker={"host": "ssh://ops@gpu-node-2:2222"}))
    copies = mocks.of_type("command:remote:CopyToRemote")
    assert [c.inputs["remotePath"] for c in copies] == ["/data/m"]  # only the enabled model
    connection = copies[0].inputs["connection"]
    connection = connection.get("value", connection)  # pulumi-command marks the connection secret
    assert (connection["host"], connection["user"], connection["port"]) == ("gpu-node-2", "ops", 2222)
    verify = mocks.resources["xinference-sync-emb-verify"].inputs
    assert "cd /data/m/emb" in verify["create"] and "sha256sum -c" in verify["create"]
    assert verify["triggers"] == copies[0].inputs["triggers"]  # new weights: copy and verify again
    assert len(mocks.of_type(CONTAINER)) == 1


def test_the_carried_engine_wheels_go_to_the_ssh_host_with_the_model_that_installs_them(tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, {**FILES, "models/_engine_packages/wheels/inflect-7.6.0-py3-none-any.whl": b"PK wheel",
                         "models/_engine_packages/pip.conf": b"[global]\n"})
    custom = {"dimensions": 384, "max_tokens": 256, "language": ["en"], "virtualenv": {"packages": ["inflect==7.6.0"]}}
    models = [{"uid": "emb", "name": "my-minilm", "type": "embedding", "path": "emb", "custom": custom}]
    mocks, _ = run_program(docker_stack(models=models, gpus=[], bundle_dir=str(bundle), models_dir="/data/m",
                                        docker={"host": "ssh://ops@gpu-node-2:2222"}))
    scripts = " ".join(r.inputs["create"] for name, r in mocks.resources.items() if name.endswith("-verify"))
    assert "cd /data/m/emb" in scripts and "cd /data/m/_engine_packages" in scripts
    assert "wheels/inflect-7.6.0-py3-none-any.whl" in scripts


def test_local_host_copies_nothing(tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, FILES)
    models = reference_models()[:1]
    models[0]["path"] = "emb"
    mocks, _ = run_program(docker_stack(models=models, bundle_dir=str(bundle)))
    assert not mocks.of_type("command:remote:CopyToRemote")


def test_image_tar_comes_from_the_bundle_when_the_stack_names_one(tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, FILES, image_tar=FileEntry("images/xprobe_xinference_v4.1.0.tar", 10, "c" * 64, "image"))
    models = [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [0], "path": "emb"}]
    stack = docker_stack(models=models, bundle_dir=str(bundle))
    del stack["image"]["tar_sha256"]
    mocks, _ = run_program(stack)
    load = mocks.resources["xinference-image-load"].inputs
    assert f"docker load -i {bundle}/images/xprobe_xinference_v4.1.0.tar" in load["create"]
    assert load["triggers"] == ["c" * 64]  # the manifest's sha256: a new image reloads
