"""Hostile MANIFEST.json (issue 12, classes 2 and 6): every bad manifest is refused by name.

A re-signed manifest (anyone who can edit the bundle can make one; only --bundle-id pins it)
is refused by the one strict parser that verify, unpack and install share, naming the field,
the value and the fix: wrong types, ranges and character sets (class 6), paths that would
make install write outside its targets (class 2), and our own cases along both classes
(--bundle-id, class 5, is in test_hostile_archive.py beside the commands that take it).
A property-based test feeds the parser mutated manifests and bytes: the only outcomes are a
valid Manifest or the bundle's error type.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import unicodedata
from pathlib import Path
from typing import Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle.format.manifest import (MANIFEST_NAME, BundleError, Manifest, ManifestError, content_digest,
                                    parse_manifest, path_problem, role_path_problem)
from tests.bundle_kit import cli

IMAGE = "xprobe/xinference:v4.1.0"
LAYOUT = [  # (path, role, model): one bundle of every role, as bundle/contents/items.py lays it out
    ("images/xprobe_xinference_v4.1.0.tar", "image", None),
    ("models/emb/config.json", "model", "emb"),
    ("models/emb/tokenizer/vocab.txt", "model", "emb"),
    ("models/vad/vad.onnx", "model", "emb"),
    ("wheels/requirements.txt", "wheel", None),
    ("wheels/probe-1.0-py3-none-any.whl", "wheel", None),
    ("pulumi/bin/pulumi", "pulumi", None),
    ("pulumi/plugins/resource-docker-v5.1.0/pulumi-resource-docker", "pulumi", None),
    ("program/Pulumi.yaml", "program", None),
    ("program/bundle/cli.py", "program", None),
    ("stack/Pulumi.t1.yaml", "stack", None),
]
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def valid_doc() -> dict:
    """A manifest (without its digest) as `bundle build` writes it; each file's content is its path."""
    files = [{"path": path, "size": len(path.encode()), "sha256": sha(path.encode()), "role": role, "model": model}
             for path, role, model in sorted(LAYOUT)]
    return {"format": 2, "created": "2026-01-02T03:04:05+00:00", "python": "3.11",
            "stacks": {"t1": {"image": IMAGE, "image_tar": LAYOUT[0][0], "models_dir": "/data/docker_models",
                              "model_dirs": {"models/emb": "emb", "models/vad": "vad"},
                              "models": {"emb": ["models/emb", "models/vad"]}}},
            "files": files}


def signed(doc: dict) -> bytes:
    """The manifest re-signed: its digest made to match, as an attacker (or a careless script) would."""
    doc = json.loads(json.dumps(doc))  # what a reader sees: two lone surrogates in a row read back as one pair
    doc.pop("digest", None)
    doc["digest"] = content_digest(doc)
    return json.dumps(doc, indent=2).encode()


def at(doc: dict, path: str) -> int:
    return next(i for i, f in enumerate(doc["files"]) if f["path"] == path)


def hostile(mutate: Callable[[dict], object]) -> bytes:
    doc = valid_doc()
    mutate(doc)
    return signed(doc)


def refusal(data: bytes) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, MANIFEST_NAME)
    return str(caught.value)


def make_bundle(root: Path, data: bytes = b"") -> Path:
    """A bundle directory on disk: every LAYOUT file and a MANIFEST.json (``data``, else the valid one)."""
    for path, _role, _model in LAYOUT:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(path.encode())
    (root / MANIFEST_NAME).write_bytes(data or signed(valid_doc()))
    return root


def test_the_valid_manifest_parses_into_one_typed_object():
    manifest = parse_manifest(signed(valid_doc()))
    assert isinstance(manifest, Manifest) and manifest.bundle_id == content_digest(valid_doc())
    assert manifest.stacks["t1"].model_dirs == {"models/emb": "emb", "models/vad": "vad"}
    assert [f.size for f in manifest.files] == [len(p.encode()) for p, _, _ in sorted(LAYOUT)]
    assert parse_manifest(manifest.to_json().encode()) == manifest


# -- class 6: the manifest is trusted for its types ----------------------------------------------


def file_(where: str, /, **changes) -> Callable[[dict], None]:
    """A mutation: the file at path ``where`` gets these fields."""
    return lambda d: d["files"][at(d, where)].update(**changes)


def stack(**changes) -> Callable[[dict], None]:
    """A mutation: stack t1 gets these fields."""
    return lambda d: d["stacks"]["t1"].update(**changes)


CONFIG = "models/emb/config.json"
C = at(valid_doc(), CONFIG)
T1 = 'manifest stacks["t1"]'
CANON = "expected a canonical relative path, got"
TYPES = {
    "size as a string": (file_(CONFIG, size="10"), f'manifest files[{C}].size: expected an integer, got "10"'),
    "size as a boolean": (file_(CONFIG, size=True), f"manifest files[{C}].size: expected an integer, got true"),
    "size as a float": (file_(CONFIG, size=22.0), f"manifest files[{C}].size: expected an integer, got 22.0"),
    "negative size": (file_(CONFIG, size=-1), f"files[{C}].size: expected a size of 0 to {2 ** 63 - 1} bytes, got -1"),
    "sha256 as a number": (file_(CONFIG, sha256=12345),
                           f"files[{C}].sha256: expected a sha256 (64 lowercase hex digits), got 12345"),
    "sha256 in capitals": (file_(CONFIG, sha256="AB" * 32), 'expected a sha256 (64 lowercase hex digits), got "ABAB'),
    "path as a number": (file_(CONFIG, path=7), f"manifest files[{C}].path: expected a path (a string), got 7"),
    "path with a NUL byte": (file_(CONFIG, path="models/emb/a\0b"),
                             f'files[{C}].path: {CANON} "models/emb/a\\u0000b" (a NUL byte at character 12)'),
    "path with a lone surrogate": (file_(CONFIG, path="models/emb/\ud800x"),
                                   f'files[{C}].path: {CANON} "models/emb/\\ud800x" (a lone surrogate U+D800 at '
                                   "character 11: not UTF-8 text)"),
    "model_dirs as a list": (stack(model_dirs=["models/emb"]),
                             f'{T1}.model_dirs: expected an object {{"models/DIR": "DIR"}}, got a list of 1'),
    "models_dir (the host) as a number": (stack(models_dir=9), f"{T1}.models_dir: expected the stack's host model "
                                          "directory (a canonical absolute path), got 9 (not a string)"),
    "models_dir relative": (stack(models_dir="data/m"), f'{T1}.models_dir: expected the stack\'s host model '
                            'directory (a canonical absolute path), got "data/m" (not absolute)'),
    "a stack's models as a list": (stack(models=[]),
                                   f'{T1}.models: expected an object {{"UID": ["models/DIR", ...]}}, got a list of 0'),
    "a model's directories as a string": (stack(models={"emb": "models/emb"}), f'{T1}.models["emb"]: expected a '
                                          'non-empty list of the model\'s bundle directories, got "models/emb"'),
    "a model listing another stack's directory": (stack(models={"emb": ["models/x"]}), f'{T1}.models["emb"][0]: '
                                                  'expected one of this stack\'s model_dirs, got "models/x"'),
    "stacks as a list": (lambda d: d.update(stacks=[]),
                         'manifest stacks: expected an object {"STACK": {...}}, got a list of 0'),
    "files as an object": (lambda d: d.update(files={}),
                           "manifest files: expected a list of files, got an empty object"),
    "format as a string": (lambda d: d.update(format="2"),
                           'manifest format: expected 2, got "2": written by another version of `bundle`'),
}


@pytest.mark.parametrize("case", TYPES, ids=list(TYPES))
def test_a_field_of_the_wrong_type_is_refused_by_name(case):
    mutate, message = TYPES[case]
    error = refusal(hostile(mutate))
    assert message in error, error
    assert error.startswith(f"{MANIFEST_NAME}: manifest ") and "rebuild" in error, error


def test_json_nested_100000_deep_is_refused_without_recursion():
    for deep in ("[" * 100_000 + "]" * 100_000, '{"stacks":' * 100_000 + "1" + "}" * 100_000, "[" * 100_000):
        assert "JSON nested deeper than 8 levels (a bundle manifest nests 5)" in refusal(deep.encode())


def test_a_byte_that_is_not_utf8_is_refused_with_its_offset():
    data = signed(valid_doc()).replace(b'"emb"', b'"em\xff"', 1)
    offset = data.index(b"\xff")
    assert f"{MANIFEST_NAME}: byte {offset} (0xff) is not UTF-8 (a manifest is UTF-8 JSON)" in refusal(data)


def test_an_unsigned_edit_is_still_named_as_an_edit():
    data = json.loads(signed(valid_doc()))
    data["files"][C]["size"] = "10"  # not re-signed: the digest check comes first
    assert "its content does not match its digest" in refusal(json.dumps(data).encode())


# -- class 2: what would make install write outside its targets -------------------------------

PULUMI, PROGRAM, MODEL = "pulumi/bin/pulumi", "program/bundle/cli.py", "models/emb/tokenizer/vocab.txt"
P, G, M = (at(valid_doc(), path) for path in (PULUMI, PROGRAM, MODEL))
AT_PULUMI = "expected a path at pulumi/bin/NAME or pulumi/plugins/DIR/... (its role is pulumi), got"
DIRS = f'{T1}.model_dirs["models/emb"]'
CONFINEMENT = {
    "a pulumi file outside pulumi/": (file_(PULUMI, path="etc/cron.d/evil"),
                                      f'manifest files[{P}].path: {AT_PULUMI} "etc/cron.d/evil"'),
    "a pulumi file beside bin/ and plugins/": (file_(PULUMI, path="pulumi/.bashrc"),
                                               f'files[{P}].path: {AT_PULUMI} "pulumi/.bashrc"'),
    "program//absolute": (file_(PROGRAM, path="program//etc/passwd"),
                          f'manifest files[{G}].path: {CANON} "program//etc/passwd" (an empty segment (//))'),
    "models/dir//absolute": (file_(MODEL, path="models/emb//root/.ssh/authorized_keys"),
                             f'files[{M}].path: {CANON} "models/emb//root/.ssh/authorized_keys" (an empty segment'),
    "an absolute path": (file_(MODEL, path="/etc/passwd"),
                         f'files[{M}].path: {CANON} "/etc/passwd" (absolute: bundle paths are relative)'),
    "a .. segment": (file_(MODEL, path="models/emb/../../x"), f'{CANON} "models/emb/../../x" (a `..` segment)'),
    "a . segment": (file_(MODEL, path="models/emb/./x"), f'{CANON} "models/emb/./x" (a `.` segment)'),
    "a trailing slash": (file_(MODEL, path="models/emb/x/"), f'{CANON} "models/emb/x/" (a trailing /)'),
    "a model file directly in models/": (file_(MODEL, path="models/evil"), f"files[{M}].path: expected a path at "
                                         'models/DIR/... (its role is model), got "models/evil"'),
    "a model directory going up": (stack(model_dirs={"models/emb": "../../etc"}), f"{DIRS}: expected a canonical "
                                   'directory relative to models_dir, got "../../etc" (a `..` segment)'),
    "a model directory elsewhere on the host": (
        stack(model_dirs={"models/emb": "/etc"}),
        f'{DIRS}: expected a directory relative to models_dir, got "/etc" (absolute: install writes model files '
        "only inside the models directory); give the model a path relative to models_dir in the stack file and "
        "rebuild the bundle"),
    "a model directory sent to another host directory": (
        stack(model_dirs={"models/emb": "rr", "models/vad": "vad"}),
        f'{DIRS}: expected "models/rr" as its key (a bundle directory mirrors its host directory), got "models/emb"'),
    "a model directory key outside models/": (
        stack(model_dirs={"program/x": "x"}), f'{T1}.model_dirs["program/x"]: expected a bundle model directory '
        'models/DIR as key, got "program/x" (not under models/)'),
}


@pytest.mark.parametrize("case", CONFINEMENT, ids=list(CONFINEMENT))
def test_a_path_install_would_write_outside_its_target_is_refused(case):
    mutate, message = CONFINEMENT[case]
    error = refusal(hostile(mutate))
    assert message in error, error


def test_verify_and_install_refuse_the_same_manifest_with_the_same_message(tmp_path):
    data = hostile(CONFINEMENT["program//absolute"][0])
    bundle = make_bundle(tmp_path / "bundle", data)
    targets = {name: tmp_path / name for name in ("project", "home", "models")}
    code_v, _, err_v = cli("verify", str(bundle), "--quiet")
    code_i, _, err_i = cli("install", str(bundle), "--project", str(targets["project"]), "--pulumi-home",
                           str(targets["home"]), "--models-dir", str(targets["models"]), "--skip", "venv", "--quiet")
    assert code_v == code_i == 1
    assert err_v == err_i and '"program//etc/passwd" (an empty segment (//))' in err_v, (err_v, err_i)
    assert not any(path.exists() for path in targets.values()), "install wrote before refusing"


def test_build_refuses_to_write_a_manifest_that_verify_would_refuse(tmp_path):
    manifest = parse_manifest(signed(valid_doc()))
    manifest.stacks["t1"].model_dirs["models/emb"] = "/srv/elsewhere/emb"  # what an absolute model path gave
    with pytest.raises(ManifestError, match="refusing to write a manifest that verify and install would refuse"):
        manifest.save(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()


# -- our own cases along the same classes -------------------------------------------------------


def add_file(**changes) -> Callable[[dict], None]:
    """A mutation: one more file, a copy of models/emb/config.json with these fields."""
    return lambda d: d["files"].append(dict(d["files"][at(d, CONFIG)], **changes))


N = len(LAYOUT)  # the index of an added file
NFC, NFD = (unicodedata.normalize(form, "models/emb/é") for form in ("NFC", "NFD"))
OWN = {
    "a path listed twice": (add_file(), f'files[{N}].path: expected each path once, got "{CONFIG}" (listed twice: '
                            f"also files[{C}])"),
    "a path differing only by case": (add_file(path="models/emb/CONFIG.json"), f'files[{N}].path: expected each '
                                      f'path once, got "models/emb/CONFIG.json" (differs from files[{C}] "{CONFIG}" '
                                      "only by case or Unicode normalization"),
    "a path differing only by Unicode normalization": (
        lambda d: (add_file(path=NFC)(d), add_file(path=NFD)(d)),
        f"files[{N + 1}].path: expected each path once, got \"{NFD}\" (differs from files[{N}] \"{NFC}\" only by "
        "case or Unicode normalization: on a case-insensitive file system one overwrites the other)"),
    "a file that is also a directory": (add_file(path=CONFIG + "/x"), f"files[{N}].path: expected a path whose "
                                        f'parent directories are not files, got "{CONFIG}/x" (files[{C}] "{CONFIG}" '
                                        "is a file)"),
    "a backslash in a path": (file_(CONFIG, path="models/emb/..\\..\\x"),
                              f'files[{C}].path: {CANON} "models/emb/..\\\\..\\\\x" (a backslash: bundle paths '
                              "separate with /)"),
    "a newline in a path": (file_(CONFIG, path="models/emb/a\nb"),
                            f'{CANON} "models/emb/a\\nb" (the control character U+000A at character 12)'),
    "a file named MANIFEST.json": (add_file(path="manifest.JSON", role="other", model=None),
                                   'got "manifest.JSON" (the manifest itself is MANIFEST.json)'),
    "a file named as the signature": (add_file(path="Manifest.json.SIG", role="other", model=None),
                                      'got "Manifest.json.SIG" (its signature is MANIFEST.json.sig)'),
    "another stack's stack file": (file_("stack/Pulumi.t1.yaml", path="stack/Pulumi.other.yaml"),
                                   "expected a path at stack/Pulumi.STACK.yaml of a stack it lists (its role is "
                                   'stack), got "stack/Pulumi.other.yaml"'),
    "a stack name that is a path": (lambda d: d["stacks"].update({"../../etc": d["stacks"].pop("t1")}),
                                    'manifest stacks["../../etc"]: expected a stack name (letters, digits, `.`, `_`, '
                                    '`-`), got "../../etc"'),
    "a model uid with shell characters": (file_(CONFIG, model="emb;$(reboot)"),
                                          f'files[{C}].model: expected the model uid of a model file, got '
                                          '"emb;$(reboot)"'),
    "a wheel naming a model": (file_("wheels/requirements.txt", model="emb"), "model: expected null (only model "
                               "files name a model; this one's role is wheel), got \"emb\""),
    "an unknown key in a file": (file_(CONFIG, mode=0o4755), f'files[{C}]["mode"]: expected only the keys path, '
                                 'size, sha256, role, model, got "mode" (an unknown key)'),
    "a missing key in a file": (lambda d: d["files"][C].pop("size"), f'files[{C}]: the key "size" is missing'),
    "an image tar the manifest does not list": (stack(image_tar="images/other.tar"), f"{T1}.image_tar: expected a "
                                                'file of role image this manifest lists, got "images/other.tar"'),
    "an image reference with shell characters": (stack(image="x`id`"),
                                                 f'{T1}.image: expected a docker image reference, got "x`id`"'),
    "an unknown role": (file_(CONFIG, role="setuid"), f"files[{C}].role: expected one of image, model, wheel, "
                        'pulumi, program, stack, other, got "setuid"'),
    "an empty stack table": (lambda d: d.update(stacks={}),
                             "MANIFEST.json: manifest stacks: expected at least one stack, got an empty object"),
}


@pytest.mark.parametrize("case", OWN, ids=list(OWN))
def test_our_own_hostile_manifests_are_refused_by_name(case):
    mutate, message = OWN[case]
    error = refusal(hostile(mutate))
    assert message in error, error


@pytest.mark.parametrize("text, message", [
    ('{"format": 2, "format": 2}', 'the key "format" appears twice in one object'),
    ('{"format": 2, "size": NaN}', "NaN is not a JSON number"),
    ('{"format": 2, "size": -Infinity}', "-Infinity is not a JSON number"),
    ('{"format": 2, "size": ' + "9" * 5000 + "}", "a number of 5000 digits, more than any size"),
    ("\ufeff{}", "not valid JSON (Unexpected UTF-8 BOM"),
    ('{"files": [', "not valid JSON (Expecting value: line 1 column 12"),
    ("[]", "manifest (the document): expected an object, got a list of 0"),
])
def test_json_that_readers_disagree_on_is_refused(text, message):
    assert message in refusal(text.encode())


# -- properties: a Manifest or the bundle error, nothing else -----------------------------------

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
TEXT = st.lists(st.one_of(st.characters(), SURROGATE, st.sampled_from(list("/.\\\0\n"))), max_size=12).map("".join)
SEGMENTS = ["models", "emb", "vad", "pulumi", "bin", "plugins", "program", "images", "wheels", "stack", "..", ".", "",
            "\\", "\0", "é", unicodedata.normalize("NFD", "é"), "CONFIG.json", "config.json", "\ud800", "a" * 300]
PATHS = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=6).map("/".join) | TEXT
LEAVES = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | TEXT | PATHS
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                      max_leaves=8)


def _slots(node):
    """Every (container, key) of the document, so any field can be hit."""
    if isinstance(node, dict):
        for k in list(node):
            yield node, k
            yield from _slots(node[k])
    elif isinstance(node, list):
        for i in range(len(node)):
            yield node, i
            yield from _slots(node[i])


@st.composite
def mutated(draw, byte_edits: bool = False) -> bytes:
    """A manifest with 1 to 3 fields replaced (any JSON value, a path-like text), deleted, added or nested,
    re-signed; with ``byte_edits`` also left unsigned, bytes inserted, cut short or wrapped deep. Where to
    mutate is drawn with a Random (hypothesis' own integers favour the first field)."""
    rnd = draw(st.randoms(use_true_random=False))
    doc = valid_doc()
    for _ in range(rnd.randint(1, 3)):
        slots = list(_slots(doc))
        container, slot = slots[rnd.randrange(len(slots))]
        kind = rnd.choice(["replace", "replace", "path", "path", "delete", "add", "nest"])
        if kind == "replace":
            container[slot] = draw(VALUES)
        elif kind == "path":
            container[slot] = draw(PATHS)
        elif kind == "delete":
            del container[slot]
        elif kind == "add" and isinstance(container, dict):
            container[draw(TEXT | PATHS)] = draw(VALUES)
        elif kind == "nest":
            for _ in range(rnd.randint(1, 10)):
                container[slot] = [container[slot]]
    data = signed(doc)
    if not byte_edits:
        return data
    if rnd.random() < 0.2:
        data = json.dumps(doc).encode()
    edit = rnd.choice(["none", "insert", "truncate", "deepen"])
    if edit == "insert":
        where = rnd.randint(0, len(data))
        data = data[:where] + draw(st.binary(min_size=1, max_size=4)) + data[where:]
    elif edit == "truncate":
        data = data[:rnd.randint(0, len(data))]
    elif edit == "deepen":
        depth = rnd.choice([9, 100, 100_000])
        data = b"[" * depth + data + b"]" * depth
    return data


JSON_LEVEL = ("JSON nested deeper than", "the key ", "NaN is not", "Infinity is not", "-Infinity is not")


def _check_invariants(manifest: Manifest) -> None:
    names = set(manifest.stacks)
    for entry in manifest.files:
        assert path_problem(entry.path) is None and role_path_problem(entry.path, entry.role, names) is None
        assert posixpath.normpath(entry.path) == entry.path and not entry.path.startswith(("/", "../"))
        assert type(entry.size) is int and entry.size >= 0 and len(entry.sha256) == 64
    for stack in manifest.stacks.values():
        for bundle_dir, host in stack.model_dirs.items():
            assert bundle_dir == f"models/{host}" and path_problem(host) is None
    again = parse_manifest(manifest.to_json().encode())
    assert again.bundle_id == manifest.bundle_id and again.stacks == manifest.stacks
    assert sorted(again.files, key=lambda f: f.path) == sorted(manifest.files, key=lambda f: f.path)


def outcome(data: bytes, *prefixes: str) -> Optional[Manifest]:
    """A Manifest whose invariants hold, or None after a ManifestError whose message starts with a prefix."""
    try:
        manifest = parse_manifest(data)
    except BundleError as exc:
        message = str(exc).removeprefix(f"{MANIFEST_NAME}: ")
        assert isinstance(exc, ManifestError) and message.startswith(prefixes or ("",)), exc
        return None
    _check_invariants(manifest)
    return manifest


@PROPERTY
@given(mutated())
def test_a_resigned_manifest_with_mutated_fields_gives_a_manifest_or_the_bundle_error(data):
    outcome(data, "manifest ", *JSON_LEVEL)  # names the field, or what is wrong with the JSON as a whole


@PROPERTY
@given(mutated(byte_edits=True))
def test_a_manifest_with_mutated_bytes_gives_a_manifest_or_the_bundle_error(data):
    outcome(data)


@PROPERTY
@given(path=PATHS, role=st.sampled_from(["model", "pulumi", "program", "wheel", "image", "other"]))
def test_any_path_in_a_resigned_manifest_is_canonical_or_refused_by_its_field(path, role):
    data = hostile(file_(CONFIG, path=path, role=role, model="emb" if role == "model" else None))
    if outcome(data, "manifest files[") is not None:
        assert posixpath.normpath(posixpath.join("/bundle-root", path)).startswith("/bundle-root/")


@PROPERTY
@given(st.binary(max_size=2000))
def test_random_bytes_give_the_bundle_error(data):
    outcome(data)
