"""Real inputs for the bundle tests, made on disk: a `docker save`-shaped image tar, model
directories, a pure-Python wheel pip can install, a Pulumi toolchain directory, a stack file,
a small project checkout (what the bundle carries as program/).
No hub and no Docker engine are needed; everything is small so the suite stays fast.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from bundle.cli import main

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "xprobe/xinference:v4.1.0"
WHEEL_NAME, WHEEL_VERSION = "xoffline_probe", "1.0"


def make_image_tar(path: Path, image: str = IMAGE, layer: bytes = b"layer bytes " * 1000,
                   more_layers: tuple[bytes, ...] = (), architecture: str = "amd64") -> Path:
    """A tar laid out like `docker save`: manifest.json with RepoTags, a config named by its sha256
    (the image id `docker load` gives: image_id_of_tar) and its layers (python_layer makes real ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = (layer, *more_layers)
    layer_names = [hashlib.sha256(data).hexdigest() + "/layer.tar" for data in layers]
    config = json.dumps({"architecture": architecture, "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]}})
    config_name = hashlib.sha256(config.encode()).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [image], "Layers": layer_names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in ((config_name, config.encode()), *zip(layer_names, layers, strict=True), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def python_layer(dists: dict[str, str], python: str = "3.11", glibc: str = "2.36",
                 site: str = "opt/xinference/lib/python{py}/site-packages", extra: Optional[dict[str, bytes]] = None
                 ) -> bytes:
    """A real image layer (a tar) holding a Python's site-packages: one ``<name>-<version>.dist-info``
    with its METADATA per distribution, and dpkg's record of libc6 (what bundle/build/image_env.py reads)."""
    files = {"var/lib/dpkg/status": f"Package: base-files\nVersion: 12.4\n\nPackage: libc6\nStatus: install ok "
                                     f"installed\nVersion: {glibc}-9+deb12u14\n\n".encode()}
    root = site.format(py=python)
    for name, version in dists.items():
        dist_info = f"{root}/{name.replace('-', '_')}-{version}.dist-info"
        files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        files[f"{dist_info}/RECORD"] = b""
    files.update(extra or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as layer:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            layer.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def image_id_of_tar(path: Path) -> str:
    """The id make_image_tar's tar loads as: sha256 of its config."""
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    return "sha256:" + manifest[0]["Config"].removesuffix(".json")


def make_model(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def make_wheel(directory: Path, name: str = WHEEL_NAME, version: str = WHEEL_VERSION) -> Path:
    """A real, installable pure-Python wheel (module + dist-info with a correct RECORD)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bundle-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for rel, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for rel, data in files.items():
            archive.writestr(rel, data)
    return wheel


def make_pulumi_dir(root: Path, plugins: tuple[str, ...] = ("docker", "command")) -> Path:
    """A toolchain bin dir as tools/pulumi_toolchain.py lays it out (small stand-in executables)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    names = ["pulumi", "pulumi-language-python"] + [f"pulumi-resource-{p}" for p in plugins]
    for name in names:
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho {name}\n")
        script.chmod(0o755)
    return bin_dir


def make_mirror(root: Path, machine: Optional[str] = None) -> Path:
    """A release mirror in get.pulumi.com's layout (small stand-in archives of the pinned
    versions), with the checksums files the releases publish (sdk/ and plugins/, sha256sum format)."""
    from bundle.build.pulumi_release import checksum_urls, pulumi_versions, release_urls

    base = f"file://{root}"
    versions = pulumi_versions()
    sums: dict[Path, list[str]] = {}
    for name, url in release_urls(versions, base, machine).items():
        archive = Path(url[len("file://"):])
        archive.parent.mkdir(parents=True, exist_ok=True)
        binaries = ["pulumi", "pulumi-language-python"] if name == "cli" else [f"pulumi-resource-{name}"]
        with tarfile.open(archive, "w:gz") as tar:
            for binary in binaries + ["LICENSE"]:
                data = f"#!/bin/sh\necho {binary}\n".encode()
                info = tarfile.TarInfo(f"pulumi/{binary}" if name == "cli" else binary)
                info.size, info.mode = len(data), 0o755 if binary != "LICENSE" else 0o644
                tar.addfile(info, io.BytesIO(data))
        sums_path = Path(checksum_urls(versions, base)[name][len("file://"):])
        sums.setdefault(sums_path, []).append(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}")
    for path, lines in sums.items():
        path.write_text("\n".join(lines) + "\n")
    return root


PROJECT_FILES = {
    "Pulumi.yaml": b"name: xinference-offline\nruntime:\n  name: python\n  options:\n    virtualenv: venv\n",
    "__main__.py": b"print('the Pulumi program')\n",
    "tools/deploy.sh": b"#!/bin/sh\necho deploy\n",
}


def make_project(root: Path, with_bundle_tool: bool = False) -> Path:
    """A project checkout: Pulumi.yaml, the program, an executable tool script; with
    ``with_bundle_tool`` also a copy of this checkout's bundle and spec packages (what runs offline:
    bundle/format/ reads the uid rule from stackspec/xinference.py)."""
    make_model(root, PROJECT_FILES)
    (root / "tools" / "deploy.sh").chmod(0o755)
    if with_bundle_tool:
        for package in ("bundle", "stackspec"):
            for source in sorted((ROOT / package).rglob("*.py")):
                dest = root / source.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)
    return root


@dataclass
class Site:
    """The online machine of a test: sources, stack file, and the paths build writes to."""

    root: Path
    stack: str = "t1"

    @property
    def stacks(self) -> Path:
        return self.root / "stacks"

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def out(self) -> Path:
        return self.root / "out" / "bundle"

    @property
    def host_models(self) -> Path:
        return self.root / "host-models"

    def src(self, name: str) -> Path:
        return self.root / "src" / name


def make_site(root: Path, models: Optional[dict[str, dict[str, bytes]]] = None, stack: str = "t1") -> Site:
    """Sources for a docker-mode stack: an image tar, local model dirs (emb with a companion), wheels, Pulumi."""
    site = Site(root, stack)
    models = models or {
        "emb": {"config.json": b'{"dim": 384}', "model.safetensors": os.urandom(64 * 1024),
                "tokenizer/vocab.txt": b"a\nb\nc\n"},
        "rr": {"config.json": b'{"rerank": true}', "weights.bin": os.urandom(32 * 1024)},
        "vad": {"vad.onnx": os.urandom(8 * 1024)},
    }
    for name, files in models.items():
        make_model(site.src(name), files)
    make_image_tar(root / "image" / "xinference.tar")
    make_wheel(root / "wheels")
    (root / "requirements.txt").write_text(f"{WHEEL_NAME}=={WHEEL_VERSION}\n")
    make_pulumi_dir(root / "toolchain")
    make_project(site.project)
    write_stack(site, [name for name in models if name != "vad"], companion="vad" if "vad" in models else None)
    return site


# Built-in names of the pinned catalog for the stand-in models (plan checks every name against it).
CATALOG_NAMES = {"embedding": "bge-small-en-v1.5", "rerank": "bce-reranker-base_v1"}


def write_stack(site: Site, uids: list[str], companion: Optional[str] = None) -> Path:
    entries = []
    for i, uid in enumerate(uids):
        model_type = "embedding" if i % 2 == 0 else "rerank"
        entry = {"uid": uid, "name": CATALOG_NAMES[model_type], "type": model_type, "path": uid,
                 "source": {"hub": "local", "path": str(site.src(uid))}}
        if companion and i == 0:
            entry["companions"] = [{"path": companion, "source": {"hub": "local", "path": str(site.src(companion))}}]
        entries.append(entry)
    config = {
        "xinference-offline:mode": "docker",
        "xinference-offline:image": {"name": IMAGE},
        # the stand-in image stands for one with its engines baked in (as the CPU image has
        # sentence-transformers): its built-in embedding and rerank models install nothing
        "xinference-offline:container": {"env": {"XINFERENCE_ENABLE_VIRTUAL_ENV": "0"}},
        "xinference-offline:models_dir": str(site.host_models),
        "xinference-offline:models": entries,
    }
    site.stacks.mkdir(parents=True, exist_ok=True)
    path = site.stacks / f"Pulumi.{site.stack}.yaml"
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    return path


def build_args(site: Site, *extra: str) -> list[str]:
    return ["build", "--stack", site.stack, "--stacks-dir", str(site.stacks), "--out", str(site.out),
            "--project", str(site.project),
            "--image-tar", str(site.root / "image" / "xinference.tar"),
            "--pulumi-dir", str(site.root / "toolchain" / "bin"), "--wheels-from", str(site.root / "wheels"),
            "--requirements", str(site.root / "requirements.txt"), "--quiet", *extra]


def site_python(*argv: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python3 -S -m bundle ARGV` as the site runs it: the bare python3 of a fresh server (no site-packages),
    with this checkout's bundle tool; the caller checks the exit code."""
    return subprocess.run([sys.executable, "-S", "-m", "bundle", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def cli(*argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, out = run_cli(*argv)
    return code, out, err.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    """{relative path: content} of every file below root (what a test compares before/after)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
