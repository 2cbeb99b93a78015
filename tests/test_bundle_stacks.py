"""One bundle for a whole site: several stacks (one per server) in one archive, shared files once.

Real files and archives: two stacks that share a model and the image, built into one
bundle, packed, unpacked, then installed per server with `install --stack`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bundle.format.errors import SetupError
from bundle.format.manifest import load_manifest
from bundle.contents.stacks import LoadedStack, merge_stacks, stack_clashes
from stackspec.load import load_stack_config
from tests.stack_configs import docker_stack, namespaced
from tests.bundle_kit import Site, build_args, cli, make_model, make_site, write_stack


def second_stack(site: Site, uids: list[str], models_dir: Path) -> Site:
    """Another server of the same site: stack t2, its own host model directory (emb keeps its vad companion)."""
    other = Site(site.root, "t2")
    path = write_stack(other, uids, companion="vad")
    data = yaml.safe_load(path.read_text())
    data["config"]["xinference-offline:models_dir"] = str(models_dir)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return other


def site_build_args(site: Site, *stacks: str) -> list[str]:
    args = build_args(site)
    for name in stacks:
        args[args.index("--out"):args.index("--out")] = ["--stack", name]
    return args


def test_one_bundle_serves_two_stacks_and_carries_what_they_share_once(tmp_path):
    site = make_site(tmp_path / "online")  # t1: emb (+ vad companion), rr
    node2_models = tmp_path / "node-2-models"
    second_stack(site, ["emb"], node2_models)  # t2: emb only, the same source
    code, out, err = cli(*site_build_args(site, "t2"))
    assert code == 0, err
    assert "for stacks t1, t2" in out
    whole = load_manifest(site.out)
    assert sorted(whole.stacks) == ["t1", "t2"]
    shared = [f for f in whole.files if f.path.startswith(("models/emb/", "models/vad/"))]
    assert len(shared) == 4  # once, not once per stack
    t1, t2 = whole.for_stack("t1"), whole.for_stack("t2")
    assert set(t1.model_digests()) == {"emb", "rr"} and set(t2.model_digests()) == {"emb"}
    assert t1.model_digests()["emb"] == t2.model_digests()["emb"]  # same weights, same digest
    assert t2.models_dir == str(node2_models) and "models/rr" not in t2.model_dirs
    assert {f.path for f in t2.role("stack")} == {"stack/Pulumi.t2.yaml"}
    assert t1.image_sha256() == t2.image_sha256() is not None  # one image tar for both
    assert not [f for f in t2.files if f.path.startswith("models/rr/")]

    archive = tmp_path / "carry" / "site.tar"
    assert cli("pack", str(site.out), "-o", str(archive), "--quiet")[0] == 0
    bundle = tmp_path / "offline" / "bundle"
    assert cli("unpack", str(archive), "--into", str(bundle), "--bundle-id", whole.bundle_id, "--quiet")[0] == 0
    assert cli("verify", str(bundle), "--quiet")[0] == 0

    skip = ["--skip", "venv", "--skip", "pulumi", "--skip", "program", "--skip", "stack", "--quiet"]
    code, _, err = cli("install", str(bundle), *skip)
    assert code == 2 and "carries 2 stacks (t1, t2)" in err and "--stack NAME" in err
    assert not node2_models.exists()  # nothing was installed
    code, out, err = cli("install", str(bundle), "--stack", "t2", *skip)
    assert code == 0, err
    assert "(stack t2)" in out and "pulumi up --stack t2" in out
    installed = sorted(str(p.relative_to(node2_models)) for p in node2_models.rglob("*") if p.is_file()
                       and not p.name.startswith("."))
    assert installed == ["emb/config.json", "emb/model.safetensors", "emb/tokenizer/vocab.txt", "vad/vad.onnx"]
    code, _, err = cli("install", str(bundle), "--stack", "t9", *skip)
    assert code == 2 and "no stack 't9'" in err and "t1, t2" in err

    for stack in ("t1", "t2"):
        code, _, err = cli("plan", "--stack", stack, "--stacks-dir", str(site.stacks), "--bundle", str(bundle))
        assert code == 0, err

    # on site before install (no stacks/ yet): the whole site from the bundle's own stack files
    no_stacks = tmp_path / "offline" / "stacks"
    code, out, err = cli("plan", "--bundle", str(bundle), "--stacks-dir", str(no_stacks))
    assert code == 0, err
    assert out.count("Stack t1 (") == 1 and out.count("Stack t2 (") == 1 and "MISSING" not in out
    assert f"Site: {bundle} carries 2 stacks (bundle id {whole.bundle_id})" in out
    table = {line.split()[0]: line.split() for line in out.split("Site: ")[1].splitlines()[2:]}
    assert table["t1"][-2:] == [str(bundle / "stack" / "Pulumi.t1.yaml"), "ok"] and table["t1"][4] == "2"
    assert table["t2"][-2:] == [str(bundle / "stack" / "Pulumi.t2.yaml"), "ok"] and table["t2"][4] == "1"
    code, out, _ = cli("plan", "--stack", "t2", "--stacks-dir", str(no_stacks), "--bundle", str(bundle))
    assert code == 0 and f"Stack t2 ({bundle / 'stack' / 'Pulumi.t2.yaml'})" in out

    # a stack file edited on site to run a model its part of the bundle lacks: the site plan says which
    edited = Site(tmp_path / "offline" / "edited", "t2")
    write_stack(edited, ["emb", "rr"])  # rr is in the bundle for t1 only
    code, out, _ = cli("plan", "--bundle", str(bundle), "--stacks-dir", str(edited.stacks))
    assert code == 1
    assert "models/rr/" in out.split("Stack t2 (")[1] and "MISSING" in out
    table = {line.split()[0]: line.split() for line in out.split("Site: ")[1].splitlines()[2:]}
    assert table["t2"][-3:] == [str(edited.stacks / "Pulumi.t2.yaml"), "1", "MISSING"] and table["t1"][-1] == "ok"

def test_two_stacks_that_fill_one_model_directory_differently_are_refused(tmp_path):
    site = make_site(tmp_path / "online")
    other = second_stack(site, ["emb"], tmp_path / "node-2-models")
    path = other.stacks / "Pulumi.t2.yaml"
    data = yaml.safe_load(path.read_text())
    elsewhere = make_model(tmp_path / "elsewhere" / "emb", {"config.json": b'{"dim": 768}'})
    data["config"]["xinference-offline:models"][0]["source"]["path"] = str(elsewhere)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, _, err = cli(*site_build_args(site, "t2"))
    assert code == 2
    assert "models/emb/" in err and "stack t1" in err and "stack t2" in err and str(elsewhere) in err
    assert not (site.out / "MANIFEST.json").exists()


def remote_stack(name: str, host: str, **overrides) -> LoadedStack:
    cfg = load_stack_config(namespaced(docker_stack(docker={"host": host}, **overrides)))
    return LoadedStack(name, cfg, Path(f"Pulumi.{name}.yaml"))


def test_two_stacks_that_take_one_remote_container_port_or_gpu_clash():
    # gpu-node-2's file copied from gpu-node-1 with docker.host left as it was
    node1 = remote_stack("gpu-node-1", "ssh://ops@10.0.0.11")
    node2 = remote_stack("gpu-node-2", "ssh://root@10.0.0.11", gpus=[{"id": 1, "vram_gb": 24}],
                         models=[{"uid": "e", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [1], "path": "e"}])
    clashes = [str(c) for c in stack_clashes([node1, node2])]
    assert len(clashes) == 3 and all(c.startswith("10.0.0.11: ") for c in clashes)
    assert any("container xinference is taken by stacks gpu-node-1, gpu-node-2" in c and
               "distinct container.name" in c for c in clashes)
    assert any("port 9997 is taken" in c for c in clashes) and any("GPU 1 is taken" in c for c in clashes)
    assert not any("GPU 0" in c for c in clashes)
    with pytest.raises(SetupError) as refused:
        merge_stacks([node1, node2])
    assert "collide on a shared docker host" in str(refused.value) and "fix: give each stack its own" in str(refused.value)

    # its own host, or the local socket (each server runs its own stack): no clash
    assert stack_clashes([node1, remote_stack("gpu-node-2", "ssh://ops@10.0.0.12")]) == []
    assert stack_clashes([remote_stack("a", "unix:///var/run/docker.sock"),
                         remote_stack("b", "unix:///var/run/docker.sock")]) == []
    # one host, two containers side by side on distinct names, ports and GPUs
    side = remote_stack("b", "ssh://ops@10.0.0.11", container={"name": "xinference-b", "port": 9998},
                        gpus=[{"id": 2, "vram_gb": 24}],
                        models=[{"uid": "e", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [2], "path": "e"}])
    assert stack_clashes([node1, side]) == []

