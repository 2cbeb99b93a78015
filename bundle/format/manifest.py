"""MANIFEST.json of an offline bundle: one entry per file with size and sha256.

Layout of a bundle directory (paths in the manifest are relative to it, POSIX style):

    MANIFEST.json                   written last, atomically
    stack/Pulumi.<stack>.yaml       the stack file of each stack the bundle was built for
    images/<name>/...               each Xinference image: the members of its `docker save` tar, each
                                    layer a file (role "image"; bundle/format/image_dir.py)
    images/<name>.tar               or the whole tar (bundles built before, or --image-form tar)
    models/<model path>/...         each enabled model's files, once however many stacks use
                                    them                                    (role "model", model = uid)
    wheels/*.whl                    this program's Python dependencies       (role "wheel")
    pulumi/...                      the Pulumi CLI and plugins               (role "pulumi")
    program/...                     the project's files: Pulumi program, bundle tool (role "program")

One bundle may serve several stacks (one per server of a site): ``stacks`` says, per stack,
its image, its host model directory and which model directories are its own; the files a
stack shares with another are carried once. ``Manifest.for_stack(NAME)`` is that stack's view
(its files and facts), which is what install, plan and the Pulumi program use.

The per-model digest (what relaunches exactly the models whose weights changed) is the
sha256 of the sorted "relative path, sha256" lines of that model's files, so it does not
depend on where the bundle was unpacked.

MANIFEST.json carries its own ``digest`` (sha256 of its canonical JSON without that key):
an edit or a damaged byte in the manifest is found before any file is trusted. That digest
is also the *bundle id* `build` prints; `verify`/`unpack --bundle-id` pin it, which is what
stops a manifest rewritten consistently by someone else (give the id out of band).

Reading is strict (``parse_manifest``/``load_manifest``, rules in bundle/format/manifest_check.py and
bundle/format/manifest_rules.py): every field is checked before use, and a ManifestError names the
first bad one. What a loaded Manifest guarantees, for everything that turns it into writes:

- every ``FileEntry.path`` is a canonical relative POSIX path (``path_problem`` is None: no
  ``/`` at the start or end, no ``//``, ``.``, ``..``, backslash, NUL or other control
  character, lone surrogate; bounded length) and lies where its role's files lie
  (``role_path_problem``): ``images/NAME``, ``models/DIR/...``, ``wheels/NAME``,
  ``pulumi/bin/NAME`` or ``pulumi/plugins/DIR/...``, ``program/...``,
  ``stack/Pulumi.STACK.yaml`` of a listed stack; so stripping the role's prefix leaves a
  canonical relative path again;
- no two paths are equal after case folding and NFC (``fold``), none is also a parent
  directory of another, and none is MANIFEST.json;
- sizes are ints (never bools) in 0..2**63-1, sha256s 64 lowercase hex digits, a model
  file names a valid model uid and any other file none;
- per stack: a valid stack name; ``models_dir`` None or a canonical absolute path;
  each ``model_dirs`` item is ``"models/" + HOST: HOST`` with HOST a canonical *relative*
  path (inside models_dir; an absolute host directory is refused); each ``models`` uid
  lists only that stack's model_dirs; ``image_tar`` is a listed image file images/NAME, or
  ``image_dir`` an images/NAME whose manifest.json is listed (not both).

Symlinks on the disk being written are the writer's to check: a canonical path is
lexically inside its root, nothing more.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from bundle.format.errors import BundleError, ManifestError, UsageError
from bundle.format.image_dir import Member, members_digest
from bundle.format.manifest_check import check_manifest, content_digest
from bundle.format.manifest_rules import (FORMAT_VERSION, MANIFEST_NAME, MAX_MANIFEST_BYTES, ROLES,
                                          absolute_path_problem, bundle_id_arg, check_relative_path, parse_bundle_id,
                                          path_problem, role_path_problem)

__all__ = [  # what the rest of the bundle tool (and install's confinement) uses from here
    "BundleError", "ManifestError", "UsageError", "StackChoiceError", "FORMAT_VERSION", "MANIFEST_NAME", "ROLES",
    "CHUNK_SIZE", "MAX_MANIFEST_BYTES",
    "FileEntry", "StackEntry", "BaseRef", "Manifest", "StackManifest", "parse_manifest", "load_manifest",
    "read_manifest_bytes", "check_bundle_id",
    "bundle_id_arg", "parse_bundle_id", "path_problem", "absolute_path_problem", "role_path_problem",
    "check_relative_path", "content_digest", "files_digest", "sha256_file", "write_atomic", "fsync_directory",
]

CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle."""

    path: str
    size: int
    sha256: str
    role: str
    model: Optional[str] = None  # the model uid for role "model"


class StackChoiceError(BundleError):
    """The bundle's stacks and the one asked for do not match (a usage error)."""

    exit_code = 2


@dataclass
class StackEntry:
    """What one stack of the bundle uses besides the shared files (wheels, Pulumi, program)."""

    image: Optional[str] = None  # image reference inside the image tar
    image_tar: Optional[str] = None  # bundle path of that tar
    models_dir: Optional[str] = None  # the stack's host model directory (install's default target)
    # {bundle dir "models/X": host dir, relative to models_dir or absolute}: where install puts each
    model_dirs: dict[str, str] = field(default_factory=dict)
    models: dict[str, list[str]] = field(default_factory=dict)  # model uid -> its bundle dirs (with companions)
    # the id `docker load` of image_tar gives (sha256 of its config): an engine that has it needs no transfer.
    # Optional and left out of MANIFEST.json when unknown, so bundles built before it keep their ids.
    image_id: Optional[str] = None
    # the bundle directory images/NAME that keeps the image as the members of its `docker save` tar, each
    # a bundle file (bundle/format/image_dir.py; then image_tar is None). Left out when None, as image_id.
    image_dir: Optional[str] = None


@dataclass
class BaseRef:
    """A delta bundle's base: the bundle the site already holds, and the file contents (sha256) of this
    bundle that base has, which `pack` leaves out and `unpack --base DIR` takes from DIR
    (bundle/format/delta.py). Optional and left out of MANIFEST.json for a full bundle."""

    bundle_id: str
    sha256: list[str] = field(default_factory=list)


class _Files:
    """Lookups over ``self.files`` that a whole bundle and a stack's view share."""

    files: list[FileEntry]

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def role(self, role: str) -> list[FileEntry]:
        return [f for f in self.files if f.role == role]

    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Manifest(_Files):
    """The bundle's table of contents."""

    stacks: dict[str, StackEntry]
    files: list[FileEntry] = field(default_factory=list)
    format: int = FORMAT_VERSION
    created: str = ""
    python: Optional[str] = None  # "3.11": the Python the bundled wheels were downloaded for
    base: Optional[BaseRef] = None  # a delta: what the site's current bundle supplies

    @property
    def stack_names(self) -> str:
        """The stack names, comma-joined, for messages."""
        return ", ".join(sorted(self.stacks))

    def for_stack(self, name: Optional[str]) -> "StackManifest":
        """One stack's view; ``None`` picks the only stack (a bundle of several needs a name)."""
        if name is None:
            if len(self.stacks) != 1:
                raise StackChoiceError(f"the bundle carries {len(self.stacks)} stacks ({self.stack_names}): "
                                       "name one with --stack NAME")
            name = next(iter(self.stacks))
        entry = self.stacks.get(name)
        if entry is None:
            raise StackChoiceError(f"the bundle carries no stack {name!r} (it carries {self.stack_names}); "
                                   f"name one of those, or build a bundle with --stack {name}")
        own_dirs = tuple(d.rstrip("/") + "/" for d in entry.model_dirs)
        other_images = {e.image_tar for e in self.stacks.values()} - {entry.image_tar}
        other_dirs = tuple({e.image_dir + "/" for e in self.stacks.values() if e.image_dir}
                           - {f"{entry.image_dir}/"})
        stack_file = f"stack/Pulumi.{name}.yaml"

        def wanted(f: FileEntry) -> bool:
            if f.role == "model":
                return f.path.startswith(own_dirs)
            if f.role == "image":
                return f.path not in other_images and not f.path.startswith(other_dirs)
            if f.role == "stack":
                return f.path == stack_file
            return True

        return StackManifest(name, self.bundle_id, entry, [f for f in self.files if wanted(f)], self.python)

    def _data(self) -> dict[str, Any]:
        data = asdict(self)
        for entry in data["stacks"].values():
            for optional in ("image_id", "image_dir"):
                if entry.get(optional) is None:
                    entry.pop(optional, None)
        data["files"] = [asdict(f) for f in sorted(self.files, key=lambda f: f.path)]
        if data["base"] is None:
            data.pop("base")
        return data

    @property
    def bundle_id(self) -> str:
        """The bundle id: sha256 of the canonical JSON of the manifest (what `build` prints)."""
        return content_digest(self._data())

    def to_json(self) -> str:
        data = self._data()
        data["digest"] = content_digest(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_NAME) -> "Manifest":
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ManifestError(f"{source}: character {exc.start} is a lone surrogate, not UTF-8 text") from None
        return parse_manifest(data, source)

    def save(self, directory: Path) -> Path:
        """Write MANIFEST.json atomically (temp file + os.replace, mode 0644, directory fsynced), after
        checking it the way verify and install will read it: build never writes a manifest they refuse."""
        target = Path(directory) / MANIFEST_NAME
        data = self.to_json().encode()
        try:
            check_manifest(data, str(target))
        except ManifestError as exc:
            raise ManifestError(f"refusing to write a manifest that verify and install would refuse: {exc}") from None
        write_atomic(target, data)
        return target


@dataclass(frozen=True)
class StackManifest(_Files):
    """One stack's view of a bundle: the shared files, its image, its models, its stack file."""

    stack: str
    bundle_id: str
    entry: StackEntry
    files: list[FileEntry]
    python: Optional[str] = None

    @property
    def image(self) -> Optional[str]:
        return self.entry.image

    @property
    def models_dir(self) -> Optional[str]:
        return self.entry.models_dir

    @property
    def model_dirs(self) -> dict[str, str]:
        return self.entry.model_dirs

    @property
    def stack_names(self) -> str:
        """The stack's name, for messages (as Manifest.stack_names)."""
        return self.stack

    def image_sha256(self) -> Optional[str]:
        """What names the image's content: its tar's sha256, or for an image kept as its members
        (``image_dir``), their digest (bundle/format/image_dir.py members_digest)."""
        if self.entry.image_dir:
            members = self.image_members()
            return members_digest(members) if members else None
        images = [f for f in self.files if f.role == "image" and f.path == self.entry.image_tar]
        return images[0].sha256 if images else None

    def image_members(self) -> list[Member]:
        """The members of the image kept at ``image_dir`` (empty for an image kept as one tar)."""
        prefix = f"{self.entry.image_dir}/"
        return [Member(f.path[len(prefix):], f.size, f.sha256) for f in self.files
                if self.entry.image_dir and f.role == "image" and f.path.startswith(prefix)]

    def model_digests(self) -> dict[str, str]:
        """{model uid: digest of its files (its directory and its companions')}."""
        digests = {}
        for uid, dirs in self.entry.models.items():
            prefixes = tuple(d.rstrip("/") + "/" for d in dirs)
            entries = [f for f in self.files if f.role == "model" and f.path.startswith(prefixes)]
            if entries:
                digests[uid] = files_digest(entries)
        return digests


def parse_manifest(data: bytes, source: str = MANIFEST_NAME) -> Manifest:
    """The one typed object of a MANIFEST.json's bytes, every field checked first (bundle/format/manifest_check.py).

    ManifestError (a BundleError, exit 1) names the first bad field, its value and the fix. verify,
    unpack and install all read manifests through here, so they refuse exactly the same ones.
    """
    doc = check_manifest(data, source)
    files = [FileEntry(**item) for item in doc["files"]]
    stacks = {name: StackEntry(**entry) for name, entry in doc["stacks"].items()}
    base = BaseRef(**doc["base"]) if doc.get("base") is not None else None
    return Manifest(stacks=stacks, files=files, format=doc["format"], created=doc["created"], python=doc["python"],
                    base=base)


def check_bundle_id(manifest: Manifest, expected: Optional[str], source: str) -> None:
    """Fail unless the manifest is the one whose id was given out of band (None: no id given).

    An empty or malformed ``expected`` is a UsageError (exit 2) naming --bundle-id: "" is what an
    unset $BUNDLE_ID gives, and must never mean "no check".
    """
    wanted = parse_bundle_id(expected)
    if wanted is not None and manifest.bundle_id != wanted:
        raise ManifestError(f"{source}: bundle id is {manifest.bundle_id}, expected {wanted}: this is not the "
                            "bundle that was built (or its manifest was rewritten)")


def read_manifest_bytes(directory: Path) -> bytes:
    """The bytes of DIR/MANIFEST.json (bounded), unchecked: what a signature is checked against first."""
    path = Path(directory) / MANIFEST_NAME
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the bundle manifest ({exc.strerror}); "
                            "is this an unpacked bundle directory?") from exc


def load_manifest(directory: Path) -> Manifest:
    return parse_manifest(read_manifest_bytes(directory), str(Path(directory) / MANIFEST_NAME))


def files_digest(entries: Iterable[FileEntry], strip_prefix: bool = True) -> str:
    """Digest of a set of files, independent of where the set lives.

    With ``strip_prefix`` the common ``models/<dir>/`` prefix is removed, so the same model
    files give the same digest in a bundle and in the host model directory.
    """
    entries = sorted(entries, key=lambda e: e.path)
    paths = [e.path for e in entries]
    prefix = os.path.commonpath(paths) if strip_prefix and len(paths) > 1 else ""
    if strip_prefix and len(paths) == 1:
        prefix = os.path.dirname(paths[0])
    digest = hashlib.sha256()
    for entry in entries:
        rel = os.path.relpath(entry.path, prefix) if prefix else entry.path
        digest.update(f"{rel}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE, progress: Optional[Callable[[int], None]] = None) -> str:
    """Streamed sha256 (constant memory: one reused buffer; releases the GIL while reading and hashing)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            if progress:
                progress(count)
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename (or a new name) in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``target`` with ``data`` in one step: temp file beside it (``mode``: 0644, as a user
    expects, not mkstemp's 0600), fsync, os.replace, then fsync of the directory."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)
