"""The image entries of the cache (tools/xinference-image.sh, tools/xinference-image-slim.sh):
their image.json, and their prune, which also takes their images out of the Docker engine.

    python3 image_cache.py write ENTRY --kind base|variant --tag TAG --tar-sha256 HEX --started EPOCH
                                 --recipe HEX [--base ENTRY] [--breakdown FILE] [--lines KEY=FILE]
                                 [--label KEY=VALUE]...
        image.json of ENTRY (written by rename), from `docker image inspect TAG` and the tar;
        then a summary on stderr
    python3 image_cache.py field ENTRY KEY
        one field of ENTRY's image.json
    python3 image_cache.py load ENTRY
        the id of ENTRY's image, `docker load`ed from its tar first when the engine lacks it
    python3 image_cache.py prune CACHE --since EPOCH --keep-wheels DIR
        remove the image entries not used since EPOCH (see tools/xinference-image.sh --help)

An entry is a tools/cache_entry.py entry: <cache>/xinference-image-<digest12>/ (or
xinference-image-slim-<digest12>/) holding image.tar, image.json, .complete and last-used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cache_entry import Pruned, human, remove_entry, stale_entries, utc, write_atomic  # noqa: E402

PROG = "xinference-image"
IMAGE_ENTRIES = "xinference-image-*"  # the slim stand-in's entries (xinference-image-slim-*) too
WHEEL_ENTRIES = "xinference-wheels-*"


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def read_json(entry: Path) -> dict[str, Any]:
    """ENTRY's image.json; empty when a build was cut off before writing it."""
    try:
        doc: dict[str, Any] = json.loads((entry / "image.json").read_text())
        return doc
    except (OSError, ValueError):
        return {}


def breakdown_of(text: str) -> dict[str, dict[str, int]]:
    """install.sh's breakdown.txt ("KIND KIB PATH" lines): {kind: {path: KiB}} of what takes the space."""
    rows = [line.split(None, 2) for line in text.splitlines() if line.strip()]
    return {kind: {path: int(kib) for k, kib, path in rows if k == kind} for kind in ("total", "site", "nvidia", "torch")}


def inspect(ref: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, check=True).stdout
    doc: dict[str, Any] = json.loads(out)[0]
    return doc


def image_json(args: argparse.Namespace) -> dict[str, Any]:
    image = inspect(args.tag)
    tar = args.entry / "image.tar"
    doc: dict[str, Any] = {
        "tag": args.tag, "image_id": image["Id"], "image_size": image["Size"], "tar": str(tar),
        "tar_size": tar.stat().st_size, "tar_sha256": args.tar_sha256, "build_seconds": int(time.time() - args.started),
        "kind": args.kind, "recipe": args.recipe, "built_at": utc(time.time()),
        "labels": (image.get("Config") or {}).get("Labels") or {}}
    if args.base:
        base = read_json(args.base)
        doc["base"] = {"tar": base["tar"], "image_id": base["image_id"], "recipe": base["recipe"]}
        doc["size_over_base"] = image["Size"] - base["image_size"]
        doc["breakdown_kib"] = base.get("breakdown_kib")
    if args.label:
        doc["extra_labels"] = args.label
    if args.breakdown:
        doc["breakdown_kib"] = breakdown_of(args.breakdown.read_text())
    for key, path in (item.split("=", 1) for item in args.lines):
        doc[key] = Path(path).read_text().splitlines()
    return doc


def write(args: argparse.Namespace) -> None:
    doc = image_json(args)
    write_atomic(args.entry / "image.json", json.dumps(doc, indent=2) + "\n")
    log(f"image {doc['tag']} {doc['image_id']}: {human(doc['image_size'])} in the engine")
    log(f"tar {doc['tar']}: {human(doc['tar_size'])}, sha256 {doc['tar_sha256']}")
    log(f"built in {doc['build_seconds']} s")


def docker_rmi(image_id: str, tag: str | None, kept_ids: set[str]) -> None:
    """Take a removed entry's image out of the engine, unless a kept entry has it or a container
    holds it (no -f: docker then says which container). By its tag when the tag still names it (a
    tag-only variant shares its base's id: each entry drops its own tag, the last one the image)."""
    if image_id in kept_ids:
        log(f"prune: its image {image_id} stays in the engine: a kept entry has it too")
        return
    if not in_engine(image_id):
        return
    ref = tag if tag and in_engine(tag) == image_id else image_id
    done = subprocess.run(["docker", "rmi", ref], capture_output=True, text=True)
    if done.returncode != 0:
        log(f"prune: its image {image_id} stays in the engine: {' '.join(done.stderr.split())}")
    elif in_engine(image_id):
        log(f"prune: untagged {ref}; its image {image_id} stays in the engine under its other tags")
    else:
        log(f"prune: removed its image {image_id} from the engine")


def in_engine(ref: str) -> str | None:
    """The id of the image REF in the engine; None when it is not there or no engine answers."""
    try:
        done = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True)
    except FileNotFoundError:
        return None  # no docker here
    return done.stdout.strip() if done.returncode == 0 else None


def prune(cache: Path, since: int, keep_wheels: Path) -> Pruned:
    """The image entries not used since SINCE go (variants first: docker refuses to remove a base
    while an image built on it is there), each with its image; and every wheel dir but KEEP_WHEELS."""
    stale, kept = stale_entries(cache, IMAGE_ENTRIES, since)
    kept_ids = {read_json(e).get("image_id") or "" for e in kept}
    stale.sort(key=lambda e: read_json(e).get("kind") != "variant")
    result = Pruned(kept=kept)
    for entry in stale:
        image = read_json(entry)  # empty when a build was cut off before it
        if not remove_entry(entry, result):
            log(f"prune: {entry} is held by a run that is building it: kept")
            continue
        _path, size, used = result.removed[-1]
        log(f"prune: removed {entry} ({human(size)}, last used {utc(used)})")
        if image.get("image_id"):
            docker_rmi(image["image_id"], image.get("tag"), kept_ids)
    wheels, _ = stale_entries(cache, WHEEL_ENTRIES, float("inf"), keep=[keep_wheels])
    for entry in wheels:
        if remove_entry(entry, result):
            log(f"prune: removed {entry} ({human(result.removed[-1][1])}: the wheels of other recipe files)")
    log(f"prune: {human(result.freed)} freed; {len(kept) + len(result.held)} image entries used since {utc(since)} kept")
    return result


def load(entry: Path) -> str:
    """ENTRY's image in the engine (loaded from its tar when missing): its id."""
    image_id: str = read_json(entry)["image_id"]
    if not in_engine(image_id):
        started = time.time()
        log(f"the image {image_id} is not in the engine: docker load -i {entry}/image.tar")
        done = subprocess.run(["docker", "load", "-q", "-i", str(entry / "image.tar")], stdout=sys.stderr)
        if done.returncode != 0 or not in_engine(image_id):
            raise SystemExit(f"{PROG}: docker load of {entry}/image.tar failed (its output above)")
        log(f"loaded in {int(time.time() - started)} s")
    return image_id


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="image_cache.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("entry", type=Path)
    w.add_argument("--kind", choices=("base", "variant"), required=True)
    w.add_argument("--tag", required=True)
    w.add_argument("--tar-sha256", required=True)
    w.add_argument("--started", type=float, required=True)
    w.add_argument("--recipe", required=True)
    w.add_argument("--base", type=Path)
    w.add_argument("--breakdown", type=Path)
    w.add_argument("--lines", action="append", default=[])
    w.add_argument("--label", action="append", default=[])
    f = sub.add_parser("field")
    f.add_argument("entry", type=Path)
    f.add_argument("key")
    ld = sub.add_parser("load")
    ld.add_argument("entry", type=Path)
    p = sub.add_parser("prune")
    p.add_argument("cache", type=Path)
    p.add_argument("--since", type=int, required=True)
    p.add_argument("--keep-wheels", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args)
    elif args.command == "field":
        value = read_json(args.entry).get(args.key)
        if value is None:
            print(f"{PROG}: {args.entry}/image.json has no {args.key}", file=sys.stderr)
            return 1
        print(value)
    elif args.command == "load":
        print(load(args.entry))
    else:
        if not args.cache.is_dir():
            log(f"prune: no cache at {args.cache}: nothing to do")
            return 0
        prune(args.cache, args.since, args.keep_wheels)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
