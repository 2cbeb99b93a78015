"""The rules a bundle's names obey, standard library only: paths, roles, ids, and how messages show values.

Public, for every part of the bundle tool that turns a manifest's words into places on disk
(verify, unpack, install's confinement):

- ``path_problem(value)``: why a value is not a canonical relative POSIX path (None when it
  is one). A canonical path joined to a directory names a place inside it, in one spelling.
- ``absolute_path_problem(value)``: the same for an absolute path (a stack's models_dir).
- ``role_path_problem(path, role, stacks)``: why a canonical path may not carry that role.
- ``check_relative_path(value, what)``: the value, or ManifestError naming ``what``.
- ``fold(path)``: the spelling a case-insensitive, normalizing file system sees.
- ``parse_bundle_id`` / ``bundle_id_arg``: --bundle-id, where "" and a malformed id are errors.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from typing import Any, Iterable, Optional

from bundle.format.errors import ManifestError, UsageError
from stackspec.xinference import MODEL_UID_RE

FORMAT_VERSION = 2
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = MANIFEST_NAME + ".sig"  # its SSH signature beside it (bundle/format/signature.py)
ROLES = ("image", "model", "wheel", "pulumi", "program", "stack", "other")
# role -> (where its files lie, for messages). The layout bundle/contents/items.py lays out.
ROLE_PLACES = {"image": "images/NAME (a tar) or images/NAME/... (its members)", "model": "models/DIR/...",
               "wheel": "wheels/NAME",
               "pulumi": "pulumi/bin/NAME or pulumi/plugins/DIR/...", "program": "program/...",
               "stack": "stack/Pulumi.STACK.yaml of a stack it lists",
               "other": "a path outside images/, models/, wheels/, pulumi/, program/, stack/"}
RESERVED_TOP = ("images", "models", "wheels", "pulumi", "program", "stack")

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_DEPTH = 8  # a manifest nests 5 deep: {stacks: {NAME: {models: {UID: [DIR]}}}}
MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255  # NAME_MAX of Linux file systems
MAX_SEGMENTS = 32
MAX_SIZE = 2 ** 63 - 1  # what a file system and a tar header can hold
MAX_FILES = 10_000_000

SHA256_RE = re.compile(r"[0-9a-f]{64}")
BUNDLE_ID_RE = re.compile(r"[0-9a-fA-F]{64}")
STACK_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # Pulumi stack names; also a file name part
UID_RE = MODEL_UID_RE  # the model uid as Xinference takes it (stackspec/xinference.py, standard library only)
IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")  # a docker image reference
PYTHON_RE = re.compile(r"[0-9]{1,2}\.[0-9]{1,3}")
CREATED_RE = re.compile(r"[0-9A-Za-z:+.-]{0,64}")  # an ISO 8601 time, or empty

FIX = "a manifest written by `bundle build` never says this: get the bundle again, or rebuild it"


# ---------------------------------------------------------------------------------------------
# values in messages


def render(value: Any) -> str:
    """A value as a message shows it: JSON-like, short, one line, printable whatever it holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 120 else value[:120] + "..."
        # control characters come out escaped (\n, \u0000), lone surrogates as \udXXX
        return json.dumps(shown, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys" if value else "an empty object"
    return type(value).__name__


def key(name: Any) -> str:
    """``stacks["t1"]``: a key inside a field name."""
    return f"[{render(name)}]"


def fail(source: str, field: str, expected: str, value: Any, why: str = "", fix: str = FIX) -> ManifestError:
    because = f" ({why})" if why else ""
    return ManifestError(f"{source}: manifest {field}: expected {expected}, got {render(value)}{because}; {fix}")


# ---------------------------------------------------------------------------------------------
# paths: the public rules install relies on too


def text_problem(value: str) -> Optional[str]:
    """Why a string is not clean text for a name or path (lone surrogate, control character)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start}: not UTF-8 text"
    for index, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            what = "a NUL byte" if char == "\0" else f"the control character U+{ord(char):04X}"
            return f"{what} at character {index}"
    return None


def path_problem(value: Any) -> Optional[str]:
    """Why ``value`` is not a canonical relative POSIX path (None: it is one).

    Canonical: a non-empty string of clean UTF-8 text, no backslash, not absolute, no empty
    segment (``//``), no ``.`` or ``..`` segment, no trailing ``/``, at most MAX_SEGMENTS
    segments of MAX_SEGMENT_BYTES and MAX_PATH_BYTES in all. Such a path joined to a
    directory names a place inside that directory (symlinks aside), in exactly one spelling.
    """
    if not isinstance(value, str):
        return "not a string"
    if not value:
        return "empty"
    problem = text_problem(value)
    if problem:
        return problem
    if "\\" in value:
        return "a backslash: bundle paths separate with /"
    if value.startswith("/"):
        return "absolute: bundle paths are relative"
    if value.endswith("/"):
        return "a trailing /"
    parts = value.split("/")
    if "" in parts:
        return "an empty segment (//)"
    if "." in parts or ".." in parts:
        return f"a `{'..' if '..' in parts else '.'}` segment"
    if len(parts) > MAX_SEGMENTS:
        return f"{len(parts)} segments, more than {MAX_SEGMENTS}"
    if len(value.encode()) > MAX_PATH_BYTES:
        return f"{len(value.encode())} bytes, more than {MAX_PATH_BYTES}"
    long = next((p for p in parts if len(p.encode()) > MAX_SEGMENT_BYTES), None)
    if long is not None:
        return f"a segment of {len(long.encode())} bytes, more than {MAX_SEGMENT_BYTES}"
    return None


def absolute_path_problem(value: Any) -> Optional[str]:
    """Why ``value`` is not a canonical absolute POSIX path (``/`` itself is one)."""
    if not isinstance(value, str):
        return "not a string"
    if not value.startswith("/"):
        return "not absolute"
    return None if value == "/" else path_problem(value[1:])


def role_path_problem(path: str, role: str, stacks: Iterable[str] = ()) -> Optional[str]:
    """Why a canonical ``path`` may not carry ``role`` (None: it lies where that role's files lie)."""
    parts = path.split("/")
    top, depth = parts[0], len(parts)
    fits = {
        "image": top == "images" and depth >= 2,
        "model": top == "models" and depth >= 3,
        "wheel": top == "wheels" and depth == 2,
        "pulumi": top == "pulumi" and depth >= 3 and (parts[1] == "bin" and depth == 3
                                                        or parts[1] == "plugins" and depth >= 4),
        "program": top == "program" and depth >= 2,
        "stack": depth == 2 and top == "stack" and parts[1] in {f"Pulumi.{name}.yaml" for name in stacks},
        "other": top not in RESERVED_TOP and path not in (MANIFEST_NAME, SIGNATURE_NAME),
    }
    if role not in fits:
        return f"unknown role {render(role)}"
    return None if fits[role] else f"role {render(role)} files lie at {ROLE_PLACES[role]}"


def check_relative_path(value: Any, what: str) -> str:
    """``value`` when it is a canonical relative path, else ManifestError naming ``what``."""
    problem = path_problem(value)
    if problem:
        raise ManifestError(f"{what}: expected a canonical relative path, got {render(value)} ({problem}); {FIX}")
    return str(value)


def fold(path: str) -> str:
    """The spelling a case-insensitive, normalizing file system (a USB stick, macOS) sees."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


# ---------------------------------------------------------------------------------------------
# the bundle id (--bundle-id)


def bundle_id_problem(text: Any) -> Optional[str]:
    if not isinstance(text, str) or not text.strip():
        return ("empty (what an unset $BUNDLE_ID gives): give the 64-hex-digit bundle id `build` and `pack` "
                "printed, or leave the option out")
    stripped = text.strip()
    if not BUNDLE_ID_RE.fullmatch(stripped):
        bad = next((c for c in stripped if c not in "0123456789abcdefABCDEF"), None)
        why = f"{render(bad)} is not a hex digit" if bad is not None else f"{len(stripped)} hex digits, not 64"
        return (f"not a bundle id ({why}): give the 64-hex-digit bundle id `build` and `pack` printed "
                "(sha256 of the manifest)")
    return None


def parse_bundle_id(text: Optional[str], flag: str = "--bundle-id") -> Optional[str]:
    """None for no id; else the id in lowercase; UsageError (exit 2) naming ``flag`` for "" or a malformed one."""
    if text is None:
        return None
    problem = bundle_id_problem(text)
    if problem:
        raise UsageError(f"{flag} {render(text)}: {problem}")
    return text.strip().lower()


def bundle_id_arg(text: str) -> str:
    """argparse ``type=`` of --bundle-id: argparse then says ``argument --bundle-id: ...`` and exits 2."""
    problem = bundle_id_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{render(text)}: {problem}")
    return text.strip().lower()


