"""Benchmark day-two updates: what a delta archive carries and what applying it costs (figures
printed, nothing asserted; every figure from one run, ratios against baselines of the same run).

    venv/bin/python bench/bench_delta.py [--gb 0.4]

  A  one model changed in a bundle of image + 4 models: the delta archive's size over the full
     archive's, and the site's apply time (`unpack --base`) against a full `unpack`, and against
     its target: 1.2 x (extracting the delta archive alone + hashing the reused files once).
  B  a new image built on top of the test image (`docker build`, one layer added): bytes the
     delta carries against the full image tar, and the new layers' bytes (`bundle diff`); the
     image is kept as the tar's members (bundle/format/image_dir.py), so the base layer stays.
  C  a label-only image change (`docker build` with a LABEL): bytes the delta carries (target
     <= 1 MiB: the new config and manifest.json, not the layers).

The test image is the small busybox image the remote-engine tests build by hand (no registry);
B and C need the Docker engine (tools/docker-engine.sh) and are skipped, saying so, without one.
The models are real files in a temp dir (deleted at the end).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_build import MiB, write_random  # noqa: E402
from bundle.install.unpack import unpack  # noqa: E402
from bundle.cli import main  # noqa: E402
from bundle.plan.diff import diff  # noqa: E402
from bundle.format import tarscan  # noqa: E402
from bundle.format.delta import carried as carried_files  # noqa: E402
from bundle.format.delta import from_base  # noqa: E402
from bundle.format.manifest import load_manifest, sha256_file  # noqa: E402
from bundle.format.progress import Progress, human  # noqa: E402
from tests.bundle_kit import build_args, make_site, write_stack  # noqa: E402
from tests.remote_engine import busybox_image  # noqa: E402

NAMES = ["bce-embedding", "bce-reranker", "cosyvoice", "sensevoice"]


def cli(*argv: str) -> str:
    out = io.StringIO()
    if main(list(argv), out=out) != 0:
        raise SystemExit(f"bundle {argv[0]} failed")
    return out.getvalue()


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def extract_alone(archive: Path, into: Path) -> None:
    """What unpack does with the members of an archive (write, hash and fsync each), with no base to take from."""
    into.mkdir()

    def write(tar, member, entry):
        dest = into / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as handle:
            problem = tarscan.copy_member(tar, member, entry, handle, Progress(None, "", False))
            handle.flush()
            os.fsync(handle.fileno())  # as unpack does: the figure compares like with like
            return problem

    tarscan.scan_archive(archive, write)


def release(old: Path, site, work: Path, name: str) -> tuple[Path, Path]:
    """Build the site's stack again with --base OLD, pack it: (bundle dir copy, delta archive)."""
    cli(*build_args(site), "--base", str(old))
    bundle = work / name
    shutil.copytree(site.out, bundle)
    cli("pack", str(bundle), "-o", str(work / f"{name}.tar"), "--quiet")
    return bundle, work / f"{name}.tar"


def full_archive(bundle: Path, copy: Path) -> Path:
    """The full archive of ``bundle``: the same files, its manifest without the base (so pack carries all)."""
    shutil.copytree(bundle, copy)
    manifest = load_manifest(copy)
    manifest.base = None
    manifest.save(copy)
    cli("pack", str(copy), "-o", str(copy.with_suffix(".tar")), "--quiet")
    return copy.with_suffix(".tar")


def update_a(site, work: Path, per_model: int) -> None:
    old = work / "v1"
    cli(*build_args(site))
    shutil.copytree(site.out, old)
    cli("pack", str(old), "-o", str(work / "v1.tar"), "--quiet")
    on_site = work / "site-v1"
    unpack(work / "v1.tar", on_site, quiet=True)
    write_random(site.src("cosyvoice") / "model.safetensors", per_model)
    new, delta_tar = release(on_site, site, work, "v2")
    full_tar = full_archive(new, work / "v2-full")
    full_s = timed(lambda: unpack(full_tar, work / "full-unpacked", quiet=True))
    shutil.rmtree(work / "full-unpacked")
    apply_s = timed(lambda: unpack(delta_tar, work / "site-v2", quiet=True, base_dir=on_site))
    alone_s = timed(lambda: extract_alone(delta_tar, work / "delta-alone"))
    reused = [on_site / f.path for f in from_base(load_manifest(new))]
    hash_s = timed(lambda: [sha256_file(path) for path in reused])
    changed = per_model
    delta_size, full_size = delta_tar.stat().st_size, full_tar.stat().st_size
    print(f"A  one model of 4 changed ({human(changed)} of weights), image + 4 models, "
          f"{human(load_manifest(new).total_size())} in all")
    print(f"   delta archive {human(delta_size)} / full archive {human(full_size)} = {delta_size / full_size:.3f}; "
          f"over the changed model: {human(delta_size - changed)} (target <= 1 MiB)")
    print(f"   apply (unpack --base) {apply_s:.2f} s vs full unpack {full_s:.2f} s ({full_s / apply_s:.1f}x faster); "
          f"extract the delta alone {alone_s:.2f} s + hash the {len(reused)} reused files once {hash_s:.2f} s: "
          f"apply = {apply_s / (alone_s + hash_s):.2f}x of that (target <= 1.2x)")


def docker(*argv: str, stdin: bytes = b"") -> str:
    proc = subprocess.run(["docker", *argv], input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(argv)}: {proc.stderr.decode().strip()}")
    return proc.stdout.decode().strip()


def built_image(base_ref: str, tag: str, dockerfile: str, context: Path, out: Path) -> Path:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {base_ref}\n{dockerfile}")
    docker("build", "-q", "-t", tag, str(context))
    docker("save", "-o", str(out), tag)
    return out


def update_image(site, work: Path, label: str, image_tar: Path, old_dir: Path, name: str) -> int:
    """Build and pack the update on ``old_dir``; print and return the bytes its delta archive carries."""
    shutil.copy(image_tar, site.root / "image" / "xinference.tar")
    new, delta_tar = release(old_dir, site, work, name)
    report = diff(old_dir, new)
    (stack,) = report["stacks"]
    image = stack["image"]
    carried = delta_tar.stat().st_size
    images = [f for f in carried_files(load_manifest(new)) if f.role == "image"]
    print(f"{label}  delta archive {human(carried)} vs the full image tar {human(image_tar.stat().st_size)} "
          f"({carried / image_tar.stat().st_size:.3f}); of it image files {len(images)}, "
          f"{human(sum(f.size for f in images))}; `bundle diff`: new layers {image.get('new_layers')} of "
          f"{image.get('layers')}, {human(image.get('new_layer_bytes', 0))}")
    return carried


def updates_b_and_c(work: Path) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        print("B, C skipped: no Docker engine here (bash tools/docker-engine.sh starts one)")
        return
    base = busybox_image()
    docker("load", "-i", str(base.path))  # FROM needs it in the engine
    tags = [f"xo-bench-delta:b-{time.time_ns()}", f"xo-bench-delta:c-{time.time_ns()}"]
    try:
        site = make_site(work / "img", models={"emb": {"config.json": b"{}", "weights.bin": b"w" * 4096}})
        shutil.copy(base.path, site.root / "image" / "xinference.tar")
        retag(site, base.ref)
        cli(*build_args(site))
        old = work / "img-v1"
        shutil.copytree(site.out, old)
        payload = work / "ctx-b" / "payload.bin"
        write_random(payload, 8 * MiB)
        tar_b = built_image(base.ref, tags[0], "COPY payload.bin /data/payload.bin\n", work / "ctx-b", work / "b.tar")
        retag(site, tags[0])
        update_image(site, work, "B", tar_b, old, "img-b")
        print(f"   target: the new layer ({human(8 * MiB)} of payload) + small files, not the base layer")
        tar_c = built_image(base.ref, tags[1], 'LABEL org.example.release="2"\n', work / "ctx-c", work / "c.tar")
        retag(site, tags[1])
        carried_c = update_image(site, work, "C", tar_c, old, "img-c")
        print(f"   target <= 1 MiB carried: {'met' if carried_c <= MiB else 'NOT met'}")
    finally:
        for tag in tags:
            subprocess.run(["docker", "rmi", tag], capture_output=True)  # only the images this run built


def retag(site, ref: str) -> None:
    """Point the stack file's image.name at ``ref`` (the tar it names must hold it)."""
    path = site.stacks / f"Pulumi.{site.stack}.yaml"
    config = yaml.safe_load(path.read_text())
    config["config"]["xinference-offline:image"] = {"name": ref}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=0.4, help="total model size across the four models (update A)")
    args = parser.parse_args()
    per_model = int(args.gb * 1024 * MiB) // 4
    work = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    try:
        models = {name: {"config.json": b"{}", "tokenizer.json": b"t" * 4096} for name in NAMES}
        site = make_site(work / "online", models=models)
        for name in NAMES:
            write_random(site.src(name) / "model.safetensors", per_model)
        write_stack(site, NAMES)
        update_a(site, work, per_model)
        updates_b_and_c(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
