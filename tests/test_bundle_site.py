"""One bundle for a whole site: several stacks (one per server) in one archive, shared files once.

Real files and archives: two stacks that share a model and the image, built into one
bundle, packed, unpacked, then installed per server with `install --stack`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bundle.manifest import load_manifest
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
    assert cli("unpack", str(archive), "--into", str(bundle), "--bundle-id", whole.digest(), "--quiet")[0] == 0
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
