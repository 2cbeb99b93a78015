"""`python -m bundle verify DIR|FILE`: prove a bundle complete and intact before anything is touched.

For an unpacked directory: every manifest entry is checked (missing, not a regular file,
size, sha256), every file the manifest does not list is reported, and all problems are
printed at once with the path and the expected and actual values; exit 1 on any.
Hashing streams each file through one reused 1 MiB buffer (memory does not grow with file
size) on a pool of threads, one per core: hashlib and file reads release the GIL, so
threads hash in parallel without the start-up and pickling costs of processes
(bench/bench_verify.py measures both). Largest files go first so the cores finish together.

For an archive (.tar or .tar.gz) the members are checked the way `unpack` checks them,
then every member is hashed as it streams by; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO, Union

from bundle.format.errors import FileProblem, VerifyFailed
from bundle.format.filecopy import kind_of
from bundle.format.manifest import MANIFEST_NAME, FileEntry, Manifest, StackManifest, bundle_id_arg, sha256_file
from bundle.format.manifest_rules import SIGNATURE_NAME
from bundle.format.parts import existing_parts, resolve_archive
from bundle.format.progress import Progress, bars_wanted, human
from bundle.format.signature import SignerPolicy, add_signer_arguments, load_trusted_manifest, site_policy
from bundle.format.tarscan import verify_archive

EXIT_FAILED = 1


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def hash_files(paths: Iterable[tuple[str, Path, int]], workers: Optional[int] = None,
               progress: Optional[Callable[[int], None]] = None) -> dict[str, str]:
    """{key: sha256} for (key, path, size) triples, hashed on ``workers`` threads, largest first.

    A file that cannot be read maps to "error: <reason>" instead of a digest.
    """
    jobs = sorted(paths, key=lambda job: -job[2])

    def one(job: tuple[str, Path, int]) -> tuple[str, str]:
        key, path, _size = job
        try:
            return key, sha256_file(path, progress=progress)
        except OSError as exc:
            return key, f"error: {exc.strerror or exc}"

    workers = max(1, workers or default_workers())
    if workers == 1 or len(jobs) <= 1:
        return dict(map(one, jobs))
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="sha256") as pool:
        return dict(pool.map(one, jobs))


def walk_files(root: Path) -> tuple[list[str], list[FileProblem]]:
    """Relative POSIX paths of the regular files below ``root``, and problems for anything else
    (symlinks, fifos, devices: a bundle holds regular files only). Never follows links."""
    files: list[str] = []
    problems: list[FileProblem] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    stack.append(rel)
                elif stat.S_ISREG(mode):
                    files.append(rel)
                else:
                    problems.append(FileProblem(rel, f"is a {kind_of(mode)}, not a regular file"))
    return files, problems


def check_directory(root: Path, manifest: Union[Manifest, StackManifest], workers: Optional[int] = None,
                    progress: Optional[Progress] = None, extras: bool = True, content: bool = True,
                    only: Optional[Iterable[FileEntry]] = None) -> list[FileProblem]:
    """Every problem of the unpacked bundle at ``root`` against ``manifest`` (empty list: intact).

    ``extras``: also report files the manifest does not list; ``content``: hash (else only
    presence, type and size); ``only``: check these entries instead of all.
    """
    problems: list[FileProblem] = []
    irregular: set[str] = set()  # already reported by the walk
    if extras:
        files, problems = walk_files(root)
        irregular = {p.path for p in problems}
        listed = {e.path for e in manifest.files} | {MANIFEST_NAME, SIGNATURE_NAME}
        problems += [FileProblem(rel, "extra file, not in the manifest (remove it, or rebuild the bundle)")
                     for rel in sorted(set(files) - listed)]
    jobs = []
    for entry in manifest.files if only is None else only:
        path = root / entry.path
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(FileProblem(entry.path, f"missing (expected {entry.size} bytes, sha256 {entry.sha256})"))
            continue
        except OSError as exc:
            problems.append(FileProblem(entry.path, f"cannot be read ({exc.strerror})"))
            continue
        if not stat.S_ISREG(st.st_mode):
            if entry.path not in irregular:
                problems.append(FileProblem(entry.path, f"is a {kind_of(st.st_mode)}, not a regular file"))
            continue
        if st.st_size != entry.size:
            problems.append(FileProblem(entry.path,
                                    f"size mismatch: expected {entry.size} bytes, actual {st.st_size} bytes"))
            if progress:
                progress.update(entry.size)
            continue
        jobs.append((entry.path, path, entry.size))
    if not content:
        jobs = []
    expected = {e.path: e.sha256 for e in manifest.files}
    for key, actual in hash_files(jobs, workers, progress.update if progress else None).items():
        if actual.startswith("error: "):
            problems.append(FileProblem(key, f"cannot be read ({actual[7:]})"))
        elif actual != expected[key]:
            problems.append(FileProblem(key, f"sha256 mismatch: expected {expected[key]}, actual {actual}"))
    return sorted(problems, key=lambda p: (p.path, p.message))


def verify_directory(root: Path, bundle_id: Optional[str] = None, workers: Optional[int] = None,
                     quiet: bool = False, policy: Optional[SignerPolicy] = None) -> Manifest:
    """Raise VerifyFailed listing every problem; returns the manifest when the bundle is intact (its
    signature checked first, against ``policy`` when given)."""
    manifest = load_trusted_manifest(root, bundle_id, policy)
    with Progress(manifest.total_size(), "verify", bars_wanted(quiet)) as progress:
        problems = check_directory(root, manifest, workers, progress)
    if problems:
        raise VerifyFailed(f"{root} does not match its manifest", problems)
    return manifest


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser("verify", help="check every file of a bundle (directory or archive)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, metavar="DIR|FILE", help="unpacked bundle directory, or .tar/.tar.gz")
    parser.add_argument("--bundle-id", metavar="SHA256", type=bundle_id_arg,
                        help="the id `build` printed (given out of band): refuse any other manifest; an empty or "
                             "malformed id is an error, not \"no id\"")
    add_signer_arguments(parser)
    parser.add_argument("--jobs", type=int, default=None, metavar="N", help="hashing threads (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    target: Path = args.target
    if args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs {args.jobs}: must be at least 1", file=sys.stderr)
        return 2
    if not (target.is_dir() or target.is_file() or existing_parts(target)):
        print(f"error: {target}: no such bundle directory or archive", file=sys.stderr)
        return 2
    policy = site_policy(args)
    started = time.monotonic()
    if target.is_dir():
        manifest = verify_directory(target, args.bundle_id, args.jobs, args.quiet, policy)
    else:
        manifest = verify_archive(resolve_archive([target]), args.bundle_id, args.quiet, policy)  # a file, or its parts
    elapsed = max(time.monotonic() - started, 1e-9)
    total = manifest.total_size()
    print(f"verify: OK: {target} (stack {manifest.stack_names}, bundle id {manifest.bundle_id}): "
          f"{len(manifest.files)} files, {human(total)}, sha256 of every file matches "
          f"({human(total / elapsed)}/s)" + (f"; signature allowed by {policy.allowed_signers}" if policy else ""),
          file=out)
    if manifest.base is not None and not target.is_dir():  # a delta archive lacks what its base supplies
        print(f"verify: a delta on bundle {manifest.base.bundle_id}: the files that bundle holds are not in the "
              "archive (unpack/install --base DIR takes them from it, checked)", file=out)
    return 0
