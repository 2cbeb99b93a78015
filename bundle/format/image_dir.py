"""An image kept in the bundle as the members of its `docker save` tar, each an ordinary bundle file.

A layer is then a file with its own sha256, so a delta bundle (bundle/format/delta.py, by sha256)
carries only the layers the site lacks, and a label-only change only the config and manifests.

    images/NAME/manifest.json          the members of the tar, as `docker save` wrote them
    images/NAME/<id>/layer.tar         (classic layout), or
    images/NAME/blobs/sha256/<hex>     (the OCI layout of newer engines), ...

At load time the members are streamed back into `docker load` as one tar (``load``): the layers
first, ``manifest.json`` last. Each member is hashed while it is sent, and the last chunk of a
member is held back until its sha256 matched the bundle manifest's: a damaged member is never
sent whole, the stream is cut inside it (the loader is killed), and the image's manifest.json,
without which `docker load` loads nothing, is never sent. One read of each layer, no temporary
tar on either side (over ssh the stream goes straight into `ssh HOST docker load`).

The member list comes from the bundle's MANIFEST.json, and must give ``members_digest`` equal to
the digest the Pulumi program planned with (its load script names it): a manifest rewritten since
is refused before anything is sent.

Standard library only, and no import of the bundle package: the load script runs this file
with ``python3 -I FILE load ...`` on the site.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import posixpath
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

CHUNK = 1024 * 1024
BLOCK = 512
# Written last, in this order: `docker load` reads manifest.json (the containerd store also index.json)
# to know what to load, so nothing is loaded unless every member before them arrived intact.
LAST = ("repositories", "oci-layout", "index.json", "manifest.json")
DOCKER_MANIFEST = "manifest.json"
MANIFEST_NAME = "MANIFEST.json"  # the bundle's (bundle/format/manifest_rules.py)


class ImageDirError(Exception):
    """The image's members cannot be read, split or sent as asked (the message names the member and the fix)."""


@dataclass(frozen=True)
class Member:
    """One member of the image's `docker save` tar, as the bundle keeps it."""

    name: str  # its path inside the tar (``manifest.json``, ``<id>/layer.tar``, ``blobs/sha256/<hex>``)
    size: int
    sha256: str


def image_dir_of(tar_path: str) -> str:
    """The bundle directory that keeps the members of the image tar ``images/NAME.tar``: ``images/NAME``."""
    return tar_path.removesuffix(".tar")


def members_digest(members: list[Member]) -> str:
    """What names the image's content in the bundle (its reload trigger, as a tar's sha256 was): sha256 of
    the sorted ``name, size, sha256`` lines of its members."""
    digest = hashlib.sha256()
    for member in sorted(members, key=lambda m: m.name):
        digest.update(f"{member.name}\0{member.size}\0{member.sha256}\n".encode())
    return digest.hexdigest()


def stream_order(members: list[Member]) -> list[Member]:
    """The layers and configs by name, then the files that say what to load (LAST), manifest.json last."""
    return sorted(members, key=lambda m: (LAST.index(m.name) + 1 if m.name in LAST else 0, m.name))


def name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a plain relative member path (None when it is one)."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        return "not a plain relative path"
    if any(ord(c) < 0x20 for c in name):
        return "a control character"
    return None


# ---------------------------------------------------------------------------------------------
# build: a `docker save` tar -> its members as files


def split_tar(tar: Path, dest: Path, progress: Optional[Callable[[int], None]] = None) -> list[Member]:
    """Write each regular member of ``tar`` to ``dest/<name>``, hashed on the way. A symlink or hard link to
    another member (a classic `docker save` links a layer it already wrote) becomes a hard link to that file:
    `docker load` reads the same bytes. Directories are implied; any other kind of member is refused."""
    members: dict[str, Member] = {}
    links: list[tuple[str, str]] = []
    try:
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                name = info.name.removeprefix("./").rstrip("/")
                if info.isdir():
                    continue
                problem = name_problem(name)
                if problem:
                    raise ImageDirError(f"{tar}: member {name!r}: {problem}; not a `docker save` tar")
                if info.issym() or info.islnk():
                    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname)) \
                        if info.issym() else info.linkname.removeprefix("./")
                    links.append((name, target))
                    continue
                if not info.isreg() or name in members:
                    what = "listed twice" if name in members else "neither a file nor a link"
                    raise ImageDirError(f"{tar}: member {name} is {what}; not a `docker save` tar")
                source = archive.extractfile(info)
                assert source is not None  # a regular member
                members[name] = Member(name, info.size, _write(source, dest / name, progress))
    except (tarfile.TarError, EOFError) as exc:
        raise ImageDirError(f"{tar}: not a readable `docker save` tar ({exc})") from exc
    for name, target in links:
        if target not in members:
            raise ImageDirError(f"{tar}: member {name} links to {target}, which the tar does not hold as a file")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(dest / target, dest / name)
        members[name] = Member(name, members[target].size, members[target].sha256)
    if DOCKER_MANIFEST not in members:
        raise ImageDirError(f"{tar}: has no {DOCKER_MANIFEST}: not a `docker save` tar")
    return sorted(members.values(), key=lambda m: m.name)


def _write(source: IO[bytes], path: Path, progress: Optional[Callable[[int], None]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "xb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def split_tar_cached(tar: Path, cache: Path, progress: Optional[Callable[[int], None]] = None
                     ) -> tuple[Path, list[Member]]:
    """``split_tar`` into ``cache/<key>/``, keyed by the tar's path, size, mtime and inode: a rebuild with the
    same tar reads nothing. Written to a temp directory renamed when complete (members.json inside says so)."""
    st = tar.stat()
    key = hashlib.sha256(f"{tar.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()).hexdigest()[:24]
    done = cache / key
    try:
        listed = json.loads((done / "members.json").read_text())
        members = [Member(str(n), int(s), str(h)) for n, s, h in listed]
        if all((done / "members" / m.name).stat().st_size == m.size for m in members):
            return done / "members", members
    except (OSError, ValueError, TypeError):
        pass
    partial = cache / f".{key}.part-{os.getpid()}"
    _remove_tree(partial)
    members = split_tar(tar, partial / "members", progress)
    (partial / "members.json").write_text(json.dumps([[m.name, m.size, m.sha256] for m in members]))
    _remove_tree(done)
    os.replace(partial, done)
    return done / "members", members


def prune_cache(cache: Path, keep: set[Path]) -> None:
    """Remove the splits of tars this build did not use (the bundle's hard links keep what it carries)."""
    if cache.is_dir():
        for entry in cache.iterdir():
            if entry / "members" not in keep:
                _remove_tree(entry)


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        os.rmdir(path)


# ---------------------------------------------------------------------------------------------
# site: the members -> one tar, streamed into `docker load`


class MemberDamaged(ImageDirError):
    """A member's bytes are not the ones the bundle manifest lists."""


def bundle_members(bundle: Path, image_dir: str) -> list[Member]:
    """The members of ``image_dir`` as the bundle's MANIFEST.json lists them."""
    try:
        with open(bundle / MANIFEST_NAME, "rb") as handle:
            files = json.load(handle)["files"]
        prefix = image_dir.rstrip("/") + "/"
        members = [Member(f["path"][len(prefix):], int(f["size"]), str(f["sha256"]))
                   for f in files if str(f["path"]).startswith(prefix)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageDirError(f"{bundle / MANIFEST_NAME}: cannot read the bundle's list of files ({exc}); "
                            "unpack the bundle again and run `python3 -m bundle verify`") from exc
    bad = next((m.name for m in members if name_problem(m.name)), None)
    if bad is not None:
        raise ImageDirError(f"{bundle / MANIFEST_NAME}: image member {bad!r} is not a plain relative path")
    if not any(m.name == DOCKER_MANIFEST for m in members):
        raise ImageDirError(f"{bundle / MANIFEST_NAME}: lists no {image_dir}/{DOCKER_MANIFEST}: the bundle keeps "
                            f"no image at {image_dir}")
    return members


def member_problems(root: Path, members: list[Member]) -> list[str]:
    """One line per member missing under ``root`` or of another size than listed (cheap: no reading)."""
    problems = []
    for member in members:
        try:
            size = os.stat(root / member.name).st_size
        except OSError:
            problems.append(f"{root / member.name} is missing")
            continue
        if size != member.size:
            problems.append(f"{root / member.name} has {size} bytes, the bundle manifest lists {member.size}")
    return problems


def _header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 0
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def write_tar(root: Path, members: list[Member], out: IO[bytes], progress: Optional[Callable[[int], None]] = None
              ) -> None:
    """Write ``members`` (in the order given) of ``root`` to ``out`` as one tar; MemberDamaged as soon as a
    member's size or sha256 is not the listed one, before that member's last chunk is written."""
    made: set[str] = set()
    for member in members:
        parent = posixpath.dirname(member.name)
        missing = []
        while parent and parent not in made:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(missing):
            out.write(_header(directory + "/", 0, directory=True))
            made.add(directory)
        _write_member(root, member, out, progress)
    out.write(b"\0" * (2 * BLOCK))
    out.flush()


def _write_member(root: Path, member: Member, out: IO[bytes], progress: Optional[Callable[[int], None]]) -> None:
    path = root / member.name
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size != member.size:
            raise MemberDamaged(f"image member {path} is damaged: {size} bytes, the bundle manifest lists "
                                f"{member.size}")
        out.write(_header(member.name, member.size))
        digest, held, sent = hashlib.sha256(), b"", 0
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            sent += len(chunk)
            if held:
                out.write(held)
            held = chunk
            if progress:
                progress(len(chunk))
        if sent != member.size or digest.hexdigest() != member.sha256:
            raise MemberDamaged(f"image member {path} is damaged: its sha256 is {digest.hexdigest()}, the bundle "
                                f"manifest lists {member.sha256}")
        out.write(held + b"\0" * (-member.size % BLOCK))


def load(bundle: Path, image_dir: str, digest: str, loader: list[str]) -> int:
    """Stream the image kept at ``image_dir`` of ``bundle`` into ``loader`` (`docker load`, maybe over ssh);
    its exit status. ImageDirError, with the loader killed, for a member missing, damaged or not planned."""
    members = bundle_members(bundle, image_dir)
    if members_digest(members) != digest:
        raise ImageDirError(f"{bundle / MANIFEST_NAME} lists other members of {image_dir} than the program "
                            f"planned with (digest {members_digest(members)}, planned {digest}): the bundle changed "
                            "since the preview; run `pulumi preview` again. Nothing was sent")
    root = bundle / image_dir
    problems = member_problems(root, members)
    if problems:
        raise ImageDirError("the image's files in the bundle are incomplete: " + "; ".join(problems) +
                            ". Nothing was sent; unpack the bundle again and run `python3 -m bundle verify`")
    proc = subprocess.Popen(loader, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:  # a pipe of 1 MiB, not 64 KiB: a sixteenth of the wake-ups of writer and loader (Linux)
        fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    except OSError:
        pass  # above the system's pipe-max-size: the default pipe serves, more slowly
    try:
        write_tar(root, stream_order(members), proc.stdin)
        proc.stdin.close()
    except MemberDamaged as exc:
        proc.kill()  # the tar is cut inside the damaged member: `docker load` fails, loads nothing
        proc.wait()
        raise ImageDirError(f"{exc}; the stream was cut inside it, before the image's {DOCKER_MANIFEST}: nothing "
                            "was loaded. Unpack the bundle again and run `python3 -m bundle verify`") from None
    except BrokenPipeError:
        pass  # the loader stopped reading: its exit status and its own message say why
    return proc.wait()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="image_dir.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("load", "stream the image into LOADER (after --)"), ("stream", "write the image tar to stdout")):
        command = sub.add_parser(name, help=what)
        command.add_argument("--bundle", required=True, type=Path, help="the unpacked bundle directory")
        command.add_argument("--image", required=True, help="the image's bundle directory, images/NAME")
        command.add_argument("--digest", required=name == "load", help="the members digest the program planned with")
        if name == "load":
            command.add_argument("loader", nargs="+", help="`docker load`, or `ssh ... HOST docker load`")
    args = parser.parse_args(argv)
    try:
        if args.command == "load":
            return load(args.bundle, args.image, args.digest, args.loader)
        members = bundle_members(args.bundle, args.image)
        if args.digest and members_digest(members) != args.digest:
            raise ImageDirError(f"{args.image}: the bundle lists other members than digest {args.digest}")
        write_tar(args.bundle / args.image, stream_order(members), sys.stdout.buffer)
        return 0
    except ImageDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
