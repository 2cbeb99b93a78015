"""Strict reading of MANIFEST.json, with the standard library alone (the offline side runs `python3 -S`).

A manifest is hostile input until proven otherwise: it crossed an air gap, and anyone who
can edit the bundle can re-sign it (its digest is a checksum, not a signature; only
`--bundle-id`, given out of band, pins it). So the bytes are checked in this order, each
step before anything uses what it checks:

1. size (at most MAX_MANIFEST_BYTES), UTF-8 (the offset of the first bad byte is named),
   bracket nesting (at most MAX_DEPTH, counted without recursion, so a 100,000-deep JSON
   is refused instead of raising RecursionError);
2. JSON, with duplicate keys, NaN and Infinity refused;
3. format and digest (an edited manifest is named as such);
4. every field: exact key sets, types (a bool is not an integer), ranges, character sets;
   every path canonical (``path_problem``) and under the prefix its role demands
   (``role_path_problem``); each stack's model directories inside its models_dir;
5. across fields: no path listed twice or differing from another only by case or Unicode
   normalization, no file that is also a directory, each image_tar listed.

Every failure is a ManifestError naming the field, the value and the fix:
``MANIFEST.json: manifest files[3].size: expected an integer, got "10"; ...``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Optional, cast

from bundle.format.errors import ManifestError
from bundle.format.manifest_rules import (CREATED_RE, FIX, FORMAT_VERSION, IMAGE_RE, MANIFEST_NAME, MAX_DEPTH,
                                          MAX_FILES, MAX_MANIFEST_BYTES, MAX_SIZE, PYTHON_RE, ROLES, ROLE_PLACES,
                                          SHA256_RE, SIGNATURE_NAME, STACK_RE, UID_RE, absolute_path_problem, fail, fold,
                                          key, path_problem, render, role_path_problem, text_problem)


class _Refused(ValueError):
    """Raised from inside json.loads' hooks."""


# ---------------------------------------------------------------------------------------------
# bytes -> JSON, bounded


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIR = re.compile(r"\[\]|\{\}")


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH without recursing: strings out, then innermost pairs
    removed one level per pass. Valid JSON empties in as many passes as it is deep."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    passes = 0
    while brackets and passes < MAX_DEPTH:
        reduced = _PAIR.sub("", brackets)
        if reduced == brackets:
            break  # unbalanced: only safe to hand to json.loads when shallow whatever it holds
        brackets, passes = reduced, passes + 1
    if brackets and (passes >= MAX_DEPTH or passes + len(brackets) > 2 * MAX_DEPTH):
        raise ManifestError(f"{source}: JSON nested deeper than {MAX_DEPTH} levels (a bundle manifest nests 5), "
                            f"or its brackets do not match; {FIX}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _Refused(f"the key {render(name)} appears twice in one object (JSON readers disagree on "
                           "which one counts)")
        result[name] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _short_int(digits: str) -> int:
    if len(digits.lstrip("-")) > 40:  # a size fits in 19 digits
        raise _Refused(f"a number of {len(digits.lstrip('-'))} digits, more than any size")
    return int(digits)


def decode_json(data: bytes, source: str) -> Any:
    """UTF-8 JSON of bounded size and depth, duplicate keys and NaN/Infinity refused."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: {len(data)} bytes, more than any bundle manifest ({MAX_MANIFEST_BYTES} "
                            f"bytes); {FIX}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: byte {exc.start} (0x{data[exc.start]:02x}) is not UTF-8 (a manifest is "
                            f"UTF-8 JSON); {FIX}") from None
    _check_depth(text, source)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant,
                          parse_int=_short_int)
    except _Refused as exc:
        raise ManifestError(f"{source}: {exc}; {FIX}") from None
    except ValueError as exc:  # JSONDecodeError (with line and column), an integer of too many digits
        raise ManifestError(f"{source}: not valid JSON ({exc}); {FIX}") from None


def content_digest(data: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``data`` (the bundle id, when ``data`` is a manifest without its digest)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# fields


def _object(value: Any, source: str, field: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(source, field, "an object", value)
    unknown = [k for k in value if k not in keys and k not in optional]
    if unknown:
        raise fail(source, f"{field}{key(unknown[0])}", f"only the keys {', '.join(keys)}", unknown[0],
                   "an unknown key")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ManifestError(f"{source}: manifest {field}: the key {render(missing[0])} is missing; {FIX}")
    return value


def _text(value: Any, source: str, field: str, pattern: re.Pattern[str], expected: str, optional: bool = False
          ) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise fail(source, field, expected + (" or null" if optional else ""), value)
    if not pattern.fullmatch(value):
        raise fail(source, field, expected, value, text_problem(value) or "")
    return value


def _path(value: Any, source: str, field: str) -> str:
    if not isinstance(value, str):
        raise fail(source, field, "a path (a string)", value)
    problem = path_problem(value)
    if problem:
        raise fail(source, field, "a canonical relative path", value, problem)
    return value


def _size(value: Any, source: str, field: str) -> int:
    if type(value) is not int:  # noqa: E721 - a bool is an int to isinstance
        raise fail(source, field, "an integer", value)
    if not 0 <= value <= MAX_SIZE:
        raise fail(source, field, f"a size of 0 to {MAX_SIZE} bytes", value)
    return value


def _file(item: Any, source: str, field: str, stacks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    item = _object(item, source, field, ("path", "size", "sha256", "role", "model"))
    role = item["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise fail(source, f"{field}.role", f"one of {', '.join(ROLES)}", role)
    path = _path(item["path"], source, f"{field}.path")
    if role_path_problem(path, role, stacks):
        raise fail(source, f"{field}.path", f"a path at {ROLE_PLACES[role]} (its role is {role})", path)
    _size(item["size"], source, f"{field}.size")
    _text(item["sha256"], source, f"{field}.sha256", SHA256_RE, "a sha256 (64 lowercase hex digits)")
    if role == "model":
        _text(item["model"], source, f"{field}.model", UID_RE, "the model uid of a model file")
    elif item["model"] is not None:
        raise fail(source, f"{field}.model", f"null (only model files name a model; this one's role is {role})",
                   item["model"])
    return cast(dict[str, Any], item)


IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")


def _stack(name: Any, entry: Any, source: str) -> dict[str, Any]:
    field = f"stacks{key(name)}"
    if not STACK_RE.fullmatch(name):
        raise fail(source, field, "a stack name (letters, digits, `.`, `_`, `-`)", name, text_problem(name) or "")
    entry = _object(entry, source, field, ("image", "image_tar", "models_dir", "model_dirs", "models"),
                    optional=("image_id", "image_dir"))
    entry.setdefault("image_id", None)
    entry.setdefault("image_dir", None)
    for at in ("image_tar", "image_dir"):
        place = entry[at]
        if place is not None and (path_problem(place) or place.count("/") != 1 or role_path_problem(place, "image")):
            raise fail(source, f"{field}.{at}", "a path at images/NAME", place, path_problem(place) or "")
    if entry["image_tar"] is not None and entry["image_dir"] is not None:
        raise fail(source, f"{field}.image_dir", "null when image_tar names the image's tar (one form per image)",
                   entry["image_dir"])
    _text(entry["image_id"], source, f"{field}.image_id", IMAGE_ID_RE, "sha256:<64 hex> (the loaded image's id)",
          optional=True)
    _text(entry["image"], source, f"{field}.image", IMAGE_RE, "a docker image reference", optional=True)
    models_dir = entry["models_dir"]
    if models_dir is not None and absolute_path_problem(models_dir):
        raise fail(source, f"{field}.models_dir", "the stack's host model directory (a canonical absolute path)",
                   models_dir, absolute_path_problem(models_dir) or "")
    dirs = entry["model_dirs"]
    if not isinstance(dirs, dict):
        raise fail(source, f"{field}.model_dirs", "an object {\"models/DIR\": \"DIR\"}", dirs)
    for bundle_dir, host in dirs.items():
        at = f"{field}.model_dirs{key(bundle_dir)}"
        if path_problem(bundle_dir) or not bundle_dir.startswith("models/"):
            raise fail(source, at, "a bundle model directory models/DIR as key", bundle_dir,
                       path_problem(bundle_dir) or "not under models/")
        if not isinstance(host, str):
            raise fail(source, at, "the model's directory relative to models_dir (a string)", host)
        if absolute_path_problem(host) is None:
            raise fail(source, at, "a directory relative to models_dir", host,
                       "absolute: install writes model files only inside the models directory",
                       "give the model a path relative to models_dir in the stack file and rebuild the bundle")
        if path_problem(host):
            raise fail(source, at, "a canonical directory relative to models_dir", host, path_problem(host) or "")
        if bundle_dir != f"models/{host}":
            raise fail(source, at, f"{render('models/' + host)} as its key (a bundle directory mirrors its host "
                       "directory)", bundle_dir)
    models = entry["models"]
    if not isinstance(models, dict):
        raise fail(source, f"{field}.models", "an object {\"UID\": [\"models/DIR\", ...]}", models)
    for uid, uses in models.items():
        at = f"{field}.models{key(uid)}"
        _text(uid, source, at, UID_RE, "a model uid as key (letters, digits, `.`, `_`, `-`)")
        if not isinstance(uses, list) or not uses:
            raise fail(source, at, "a non-empty list of the model's bundle directories", uses)
        for index, used in enumerate(uses):
            if not isinstance(used, str) or used not in dirs:
                raise fail(source, f"{at}[{index}]", "one of this stack's model_dirs", used)
    return cast(dict[str, Any], entry)


def _base(base: Any, files: list[dict[str, Any]], source: str) -> None:
    """A delta's base: a bundle id, and sorted distinct sha256s each of which some file of this bundle has."""
    _object(base, source, "base", ("bundle_id", "sha256"))
    _text(base["bundle_id"], source, "base.bundle_id", SHA256_RE, "the base bundle's id (64 lowercase hex digits)")
    shared = base["sha256"]
    if not isinstance(shared, list) or len(shared) > MAX_FILES:
        raise fail(source, "base.sha256", f"a list of at most {MAX_FILES} sha256s", shared)
    ours = {item["sha256"] for item in files}
    for index, digest in enumerate(shared):
        _text(digest, source, f"base.sha256[{index}]", SHA256_RE, "a sha256 (64 lowercase hex digits)")
        if digest not in ours:
            raise fail(source, f"base.sha256[{index}]", "the sha256 of a file this manifest lists", digest)
    if shared != sorted(set(shared)):
        raise fail(source, "base.sha256", "sorted, each sha256 once", shared)


def _cross_check(files: list[dict[str, Any]], stacks: dict[str, dict[str, Any]], source: str) -> None:
    seen: dict[str, int] = {fold(MANIFEST_NAME): -1, fold(SIGNATURE_NAME): -2}
    for index, item in enumerate(files):
        folded = fold(item["path"])
        if folded in seen:
            other = seen[folded]
            if other < 0:
                why = f"the manifest itself is {MANIFEST_NAME}" if other == -1 else f"its signature is {SIGNATURE_NAME}"
            elif files[other]["path"] == item["path"]:
                why = f"listed twice: also files[{other}]"
            else:
                why = (f"differs from files[{other}] {render(files[other]['path'])} only by case or Unicode "
                       "normalization: on a case-insensitive file system one overwrites the other")
            raise fail(source, f"files[{index}].path", "each path once", item["path"], why)
        seen[folded] = index
    for index, item in enumerate(files):
        parts = fold(item["path"]).split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen:
                raise fail(source, f"files[{index}].path", "a path whose parent directories are not files",
                           item["path"], f"files[{seen[parent]}] {render(files[seen[parent]]['path'])} is a file")
    images = {item["path"] for item in files if item["role"] == "image"}
    for name, entry in stacks.items():
        if entry["image_tar"] is not None and entry["image_tar"] not in images:
            raise fail(source, f"stacks{key(name)}.image_tar", "a file of role image this manifest lists",
                       entry["image_tar"])
        if entry["image_dir"] is not None and f"{entry['image_dir']}/manifest.json" not in images:
            raise fail(source, f"stacks{key(name)}.image_dir", "a directory whose manifest.json this manifest "
                       "lists (role image)", entry["image_dir"])


def check_manifest(data: bytes, source: str) -> dict[str, Any]:
    """The manifest's content with every field checked (a plain dict); ManifestError on the first bad field."""
    doc = decode_json(data, source)
    if not isinstance(doc, dict):
        raise fail(source, "(the document)", "an object", doc)
    version = doc.get("format")
    if type(version) is not int or version != FORMAT_VERSION:  # noqa: E721
        raise ManifestError(f"{source}: manifest format: expected {FORMAT_VERSION}, got {render(version)}: written "
                            "by another version of `bundle`; rebuild the bundle with this version of `bundle` (or "
                            "run the bundle tool of the archive's own program/)")
    stated = doc.pop("digest", None)
    if stated is None:
        raise ManifestError(f"{source}: has no digest; it was not written by `bundle build` (rebuild the bundle)")
    if not isinstance(stated, str) or not SHA256_RE.fullmatch(stated):
        raise fail(source, "digest", "a sha256 (64 lowercase hex digits)", stated)
    if stated != content_digest(doc):
        raise ManifestError(f"{source}: its content does not match its digest: the manifest was edited or damaged "
                            "after it was built; get the bundle again (or rebuild it)")
    _object(doc, source, "(top level)", ("format", "created", "python", "stacks", "files"), optional=("base",))
    _text(doc["created"], source, "created", CREATED_RE, "the build time (ISO 8601)")
    _text(doc["python"], source, "python", PYTHON_RE, "a Python version like 3.11", optional=True)
    stacks = doc["stacks"]
    if not isinstance(stacks, dict):
        raise fail(source, "stacks", "an object {\"STACK\": {...}}", stacks)
    if not stacks:
        raise fail(source, "stacks", "at least one stack", stacks)
    for name, entry in stacks.items():
        _stack(name, entry, source)
    files = doc["files"]
    if not isinstance(files, list):
        raise fail(source, "files", "a list of files", files)
    if len(files) > MAX_FILES:
        raise fail(source, "files", f"at most {MAX_FILES} files", files)
    for index, item in enumerate(files):
        _file(item, source, f"files[{index}]", stacks)
    _cross_check(files, stacks, source)
    if "base" in doc:
        _base(doc["base"], files, source)
    doc["digest"] = stated
    return doc
