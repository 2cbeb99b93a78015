"""sbom.cdx.json: `bundle build` writes a CycloneDX 1.6 SBOM of everything the bundle carries.

Checked with the CycloneDX library's own 1.6 JSON schema validator, then read back by an independent
reader: plain JSON queries here, never the code that wrote it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from bundle.contents.stacks import Source
from bundle.format.manifest import FileEntry, load_manifest
from bundle.build.image_env import ImageEnv
from bundle.build.sbom import ImageFacts, ModelFacts, SbomInputs, sbom_json
from bundle.plan.sbom_summary import summary_lines
from tests.bundle_kit import IMAGE, build_args, make_image_tar, make_site, python_layer, run_cli
from tests.test_engine_wheels import CACHE as ENGINE_CACHE
from tests.test_engine_wheels import sense_voice_site

DPKG_STATUS = b"""Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u14

Package: python3.11-minimal
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u2

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
"""
IMAGE_DISTS = {"xinference": "4.1.0", "torch": "2.8.0", "numpy": "2.2.6", "sentence-transformers": "5.1.0"}


def components(doc: dict):
    """Every component, nested ones too: the reader's own walk."""
    stack = list(doc.get("components", []))
    while stack:
        component = stack.pop()
        yield component
        stack.extend(component.get("components", []))


def prop(component: dict, name: str):
    return next((p["value"] for p in component.get("properties", []) if p["name"] == name), None)


def sha256_of(component: dict):
    return next((h["content"] for h in component.get("hashes", []) if h["alg"] == "SHA-256"), None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    site = make_site(tmp_path_factory.mktemp("sbom-site"))
    # an image with a real Python layer and dpkg status (what bundle/build/image_env.py reads)
    make_image_tar(site.root / "image" / "xinference.tar",
                   layer=python_layer(IMAGE_DISTS, extra={"var/lib/dpkg/status": DPKG_STATUS}))
    code, _ = run_cli(*build_args(site))
    assert code == 0
    return site


def read_sbom(bundle) -> dict:
    return json.loads((bundle / "sbom.cdx.json").read_text())


def test_the_sbom_is_a_bundle_file_and_validates_as_cyclonedx_1_6(built):
    text = (built.out / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
    entry = load_manifest(built.out).by_path()["sbom.cdx.json"]  # hashed in the manifest: signed through it
    assert entry.role == "other" and entry.size == len(text.encode())


def test_an_independent_reader_finds_the_image_and_its_packages(built):
    doc = read_sbom(built.out)
    images = [c for c in doc["components"] if c["type"] == "container"]
    assert len(images) == 1
    image = images[0]
    manifest = load_manifest(built.out)
    # the image kept as the tar's members: its hash is its id, the sha256 of its config file (a bundle file)
    config = next(f for f in manifest.files if f.role == "image" and f.path.endswith(".json")
                  and not f.path.endswith("/manifest.json"))
    assert f'{image["name"]}:{image["version"]}' == IMAGE and sha256_of(image) == config.sha256
    assert prop(image, "xinference-offline:image-id") == manifest.stacks["t1"].image_id
    debs = [c for c in image["components"] if c["purl"].startswith("pkg:deb/debian/")]
    pythons = [c for c in image["components"] if c["purl"].startswith("pkg:pypi/")]
    assert sorted(c["name"] for c in debs) == ["base-files", "libc6", "python3.11-minimal"]  # not the deinstalled
    assert "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64" in {c["purl"] for c in debs}
    assert {c["name"]: c["version"] for c in pythons} == IMAGE_DISTS


def test_every_wheel_of_the_lock_and_every_model_file_is_there_with_its_sha256(built):
    doc = read_sbom(built.out)
    by_sha = {sha256_of(c): c for c in components(doc) if sha256_of(c)}
    locked = re.findall(r"^(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})$",
                        (built.out / "wheels" / "requirements.txt").read_text(), re.MULTILINE)
    assert locked
    for name, version, sha in locked:
        wheel = by_sha[sha]
        assert (wheel["name"], wheel["version"]) == (name, version) and wheel["purl"].startswith("pkg:pypi/")
    models = {c["name"]: c for c in doc["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"emb", "rr"}
    manifest = load_manifest(built.out)
    for uid, dirs in manifest.stacks["t1"].models.items():
        files = {c["name"]: sha256_of(c) for c in models[uid]["components"]}
        expected = {f.path: f.sha256 for f in manifest.files if f.role == "model" and f.path.startswith(
            tuple(d + "/" for d in dirs))}
        assert files == expected and len(files) >= 2
    assert prop(models["emb"], "xinference-offline:hub") == "local"
    kinds = {prop(c, "xinference-offline:kind") for c in doc["components"]}
    assert {"image", "site-wheel", "pulumi", "model", "program"} <= kinds
    pulumi = {c["name"] for c in doc["components"] if prop(c, "xinference-offline:kind") == "pulumi"}
    assert {"pulumi", "pulumi-language-python", "pulumi-resource-docker", "pulumi-resource-command"} <= pulumi


def test_changing_one_model_file_changes_exactly_that_models_hash(built, tmp_path):
    site = built
    before = read_sbom(site.out)
    id_before = load_manifest(site.out).bundle_id
    code, _ = run_cli(*build_args(site))  # nothing changed: the same document, the same bundle id
    assert code == 0 and read_sbom(site.out) == before and load_manifest(site.out).bundle_id == id_before
    (site.src("rr") / "weights.bin").write_bytes(b"retrained weights")
    try:
        assert run_cli(*build_args(site))[0] == 0
        after = read_sbom(site.out)
    finally:
        shutil.rmtree(site.out)  # later tests of this module rebuild from the changed source
    def hashes(doc):
        return {c["bom-ref"]: sha256_of(c) for c in components(doc)}
    old, new = hashes(before), hashes(after)
    changed = {ref for ref in old if old[ref] != new.get(ref)}
    assert changed == {"model:models/rr", "model:models/rr/file:models/rr/weights.bin"}


def test_plan_with_the_bundle_prints_the_sbom_summary(tmp_path):
    site = make_site(tmp_path)
    assert run_cli(*build_args(site))[0] == 0
    code, out = run_cli("plan", "--bundle", str(site.out), "--stacks-dir", str(site.stacks))
    assert code == 0, out
    assert re.search(r"SBOM \(sbom.cdx.json, CycloneDX 1.6\): 1 image, 1 site-wheel, 4 pulumi, 2 model, 1 program",
                     out), out
    assert re.search(r"  model emb  local copy \(.*src/emb\), 4 files", out), out


def test_engine_wheels_stand_ins_dependencies_and_an_unpinned_revision():
    """The pure half, with what a real build resolves for the image (tests/test_engine_wheels.py makes those)."""
    def entry(path, role="model", model="sv"):
        return FileEntry(path, 10, f"{abs(hash(path)):064x}"[:64], role, model if role == "model" else None)
    engine = "models/_engine_packages/wheels/"
    files = [entry(engine + "funasr-1.2.7-py3-none-any.whl"), entry(engine + "torch-2.8.0-0image-py3-none-any.whl"),
             entry("models/SenseVoiceSmall/model.pt"), entry("models/fsmn-vad/model.pt"),
             entry("models/bce/model.bin", model="bce"), entry("images/x.tar", "image")]
    inputs = SbomInputs(
        files=files,
        images=[ImageFacts(IMAGE, "images/x.tar", "sha256:" + "a" * 64,
                           ImageEnv("3.11", "x86_64", "2.36", {"torch": "2.8.0"}, [["libc6", "2.36-9", "amd64"]]))],
        models=[ModelFacts("sv", "SenseVoiceSmall", "audio",
                           ("models/SenseVoiceSmall", "models/fsmn-vad", "models/_engine_packages"),
                           (Source("modelscope", "iic/SenseVoiceSmall", None), Source("modelscope", "iic/fsmn-vad",
                                                                                      "v2.0.4"), None)),
                ModelFacts("bce", "bce-embedding-base_v1", "embedding", ("models/bce",),
                           (Source("huggingface", "maidalun1020/bce-embedding-base_v1", "f7e2c3a"),))],
        engine_records=[{"model": "sv", "wheels": ["funasr-1.2.7-py3-none-any.whl",
                                                   "torch-2.8.0-0image-py3-none-any.whl"]}],
        pulumi_versions={}, stacks=["gpu-node-1"])
    text = sbom_json(inputs)
    doc = json.loads(text)
    by_ref = {c["bom-ref"]: c for c in components(doc)}
    stand_in = by_ref[f"engine:{engine}torch-2.8.0-0image-py3-none-any.whl"]
    assert prop(stand_in, "xinference-offline:stand-in") == "true" and "no code" in stand_in["description"]
    assert prop(by_ref[f"engine:{engine}funasr-1.2.7-py3-none-any.whl"], "xinference-offline:kind") == "engine-wheel"
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert deps["model:models/SenseVoiceSmall"] == {f"engine:{engine}funasr-1.2.7-py3-none-any.whl",
                                                    f"engine:{engine}torch-2.8.0-0image-py3-none-any.whl"}
    sv = by_ref["model:models/SenseVoiceSmall"]
    assert sorted(c["name"] for c in sv["components"]) == ["models/SenseVoiceSmall/model.pt", "models/fsmn-vad/model.pt"]
    assert by_ref["model:models/bce"]["purl"] == "pkg:huggingface/maidalun1020/bce-embedding-base_v1@f7e2c3a"
    lines = summary_lines(doc)
    assert lines[0].startswith("SBOM (sbom.cdx.json, CycloneDX 1.6): 1 image, 1 debian-package, 1 image-python, "
                               "1 engine-wheel, 1 engine-stand-in, 2 model, 1 program")
    assert any("model sv " in line and "modelscope iic/SenseVoiceSmall, revision NOT PINNED" in line for line in lines)
    assert any("model bce" in line and "huggingface maidalun1020/bce-embedding-base_v1 @ f7e2c3a, 1 files" in line
               for line in lines)
    assert sbom_json(inputs) == text  # no time stamp, a serial number from the content


def test_a_real_engine_wheel_build_lists_each_wheel_per_model_and_marks_the_stand_ins(tmp_path):
    """SenseVoiceSmall against a stand-in image (tests/test_engine_wheels.py's site: funasr resolved by pip
    for the image's Python, the image's own distributions carried as metadata-only stand-ins)."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the stand-in image's Python is 3.11: engine packages resolve with the image's Python")
    site = sense_voice_site(tmp_path)
    code, out = run_cli(*build_args(site, "--cache-dir", str(ENGINE_CACHE / "test-engine-wheels")))
    assert code == 0, out
    record, = json.loads((site.out / "models/_engine_packages/packages.json").read_text())["models"]
    doc = read_sbom(site.out)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc)) is None
    entries = load_manifest(site.out).by_path()
    engine = {prop(c, "xinference-offline:bundle-path"): c for c in doc["components"]
              if prop(c, "xinference-offline:kind") in ("engine-wheel", "engine-stand-in")}
    paths = {f"models/_engine_packages/wheels/{name}" for name in record["wheels"]}
    assert set(engine) == paths and len(paths) > 40
    for path, component in engine.items():
        assert sha256_of(component) == entries[path].sha256
        stand_in = path.rsplit("/", 1)[1] in record["image_stand_ins"]
        assert (prop(component, "xinference-offline:kind") == "engine-stand-in") == stand_in, path
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert deps["model:models/SenseVoiceSmall"] == {c["bom-ref"] for c in engine.values()}
    model = next(c for c in doc["components"] if c["bom-ref"] == "model:models/SenseVoiceSmall")
    assert sorted(c["name"] for c in model["components"]) == [  # its files and its companion's, not the wheels
        "models/SenseVoiceSmall/config.yaml", "models/SenseVoiceSmall/model.pt", "models/fsmn-vad/model.pt"]
