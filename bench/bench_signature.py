"""Benchmark signing and checking a bundle of 10,000 files (figures printed, nothing asserted).

    venv/bin/python bench/bench_signature.py [--files 10000] [--repeat 5]

One run, one bundle (small real files and their MANIFEST.json in a temp dir, deleted at the end),
one Ed25519 key made by ssh-keygen for the run:

- `bundle sign DIR --key KEY` (sign_bundle: the manifest read and checked, ssh-keygen -Y sign, the
  signature checked against the manifest, written atomically);
- the site's signature check alone (what unpack/verify/install --allowed-signers add: ssh-keygen
  -Y check-novalidate, find-principals and verify on MANIFEST.json);
- the floor: one bare `ssh-keygen -Y verify` of the same manifest;
- against the baseline of the same run: `bundle verify DIR` without a signature (every file hashed),
  and the whole `verify DIR --allowed-signers` (the ratio shows what the signature adds).

Expected: milliseconds, whatever the number of files, since only MANIFEST.json is signed.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundle.cli import main  # noqa: E402
from bundle.format.manifest import (MANIFEST_NAME, FileEntry, Manifest, StackEntry, load_manifest,  # noqa: E402
                                    sha256_file)
from bundle.format.manifest_rules import SIGNATURE_NAME  # noqa: E402
from bundle.format.signature import NAMESPACE, SignerPolicy, check_bundle_signature  # noqa: E402
from bundle.build.sign import sign_bundle  # noqa: E402


def make_bundle(root: Path, count: int) -> None:
    """``count`` small files under models/m<k>/ and the manifest that lists them."""
    entries = []
    for i in range(count):
        rel = f"models/m{i % 10}/shard-{i:05d}.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(256))
        entries.append(FileEntry(rel, 256, sha256_file(path), "model", f"m{i % 10}"))
    dirs = {f"models/m{k}": f"m{k}" for k in range(10)}
    stack = StackEntry(models_dir="/data/docker_models", model_dirs=dirs,
                       models={f"m{k}": [f"models/m{k}"] for k in range(10)})
    Manifest(stacks={"bench": stack}, files=entries, created="2026-01-01T00:00:00+00:00", python="3.11").save(root)


def timed(function, repeat: int) -> float:
    """The median of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def quiet_main(*argv: str) -> int:
    err, out = io.StringIO(), io.StringIO()
    saved, sys.stderr = sys.stderr, err
    try:
        code = main(list(argv), out=out)
    finally:
        sys.stderr = saved
    if code != 0:
        raise SystemExit(f"{argv}: exit {code}: {err.getvalue()}")
    return code


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-signature-"))
    try:
        bundle, key = work / "bundle", work / "builder"
        bundle.mkdir()
        started = time.perf_counter()
        make_bundle(bundle, args.files)
        made = time.perf_counter() - started
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)], check=True)
        allowed = work / "allowed_signers"
        allowed.write_text(f"builder@bench {(work / 'builder.pub').read_text()}")
        manifest_size = (bundle / MANIFEST_NAME).stat().st_size
        print(f"bundle: {args.files} files, MANIFEST.json {manifest_size / 1024:.0f} KiB (made in {made:.1f} s); "
              f"median of {args.repeat} runs each; "
              f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")

        sign = timed(lambda: sign_bundle(bundle, key), args.repeat)
        parse = timed(lambda: load_manifest(bundle), args.repeat)
        data = (bundle / MANIFEST_NAME).read_bytes()
        signature = (bundle / SIGNATURE_NAME).read_bytes()
        policy = SignerPolicy(allowed, "builder@bench")
        check = timed(lambda: check_bundle_signature(data, signature, policy, "bench"), args.repeat)

        def bare_ssh_keygen() -> None:
            with open(bundle / MANIFEST_NAME, "rb") as manifest:
                subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "builder@bench", "-n",
                                NAMESPACE, "-s", str(bundle / SIGNATURE_NAME)], stdin=manifest, check=True,
                               capture_output=True)
        floor = timed(bare_ssh_keygen, args.repeat)
        bundle_id = Manifest.from_json(data.decode()).bundle_id
        aside = work / SIGNATURE_NAME

        def unsigned(*anchor: str):
            def job() -> None:  # the same files, unsigned
                os.rename(bundle / SIGNATURE_NAME, aside)
                try:
                    quiet_main("verify", str(bundle), "--quiet", *anchor)
                finally:
                    os.rename(aside, bundle / SIGNATURE_NAME)
            return job

        plain, by_id = unsigned(), unsigned("--bundle-id", bundle_id)

        def signed() -> None:
            quiet_main("verify", str(bundle), "--quiet", "--allowed-signers", str(allowed), "--signer", "builder@bench")

        times: dict = {plain: [], by_id: [], signed: []}
        for run in range(args.repeat):  # interleaved, the order turned each time: noise slows them alike
            jobs = [plain, by_id, signed]
            for job in jobs[run % 3:] + jobs[:run % 3]:
                times[job].append(timed(job, 1))
        verify_plain, verify_id, verify_signed = (statistics.median(times[j]) for j in (plain, by_id, signed))
        print(f"  bundle sign DIR --key KEY             {sign * 1000:8.1f} ms   "
              f"(of which the strict manifest read, as verify does it: {parse * 1000:.1f} ms)")
        print(f"  signature check (--allowed-signers)   {check * 1000:8.1f} ms   "
              f"({check / floor:.1f}x one bare ssh-keygen -Y verify from the shell: {floor * 1000:.1f} ms)")
        print(f"  verify DIR (baseline: no anchor)      {verify_plain * 1000:8.1f} ms   (hashes every file)")
        print(f"  verify DIR --bundle-id                {verify_id * 1000:8.1f} ms   "
              f"({verify_id / verify_plain:.2f}x the baseline: the manifest's canonical digest)")
        print(f"  verify DIR --allowed-signers          {verify_signed * 1000:8.1f} ms   "
              f"({verify_signed / verify_plain:.2f}x the baseline; the signature is "
              f"{check / verify_signed:.0%} of it)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main_bench()
