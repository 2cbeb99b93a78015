"""Reading a stack file's YAML the way Pulumi reads it, and refusing what Pulumi would not read.

Pulumi (Go, gopkg.in/yaml.v3) reads ``Pulumi.<stack>.yaml`` as UTF-8 YAML 1.2 and refuses a
mapping that names a key twice. PyYAML's SafeLoader reads YAML 1.1: ``on``/``yes``/``off``/
``no`` become booleans, ``2024-01-01`` a date, ``1:20`` the number 80, and a duplicate key
silently keeps the last value. ``load_stack_yaml`` is the one reader of stack files (``bundle
plan --config``, ``bundle build``, the sibling stacks of a preview all come through
stackspec/stack_file.py to here). It

- accepts UTF-8 only (a UTF-8 byte order mark is allowed); any other byte is refused with the
  file, the byte offset, the line and the column;
- resolves plain scalars as yaml.v3 does: booleans are only ``true``/``false`` (any case
  style), null is ``null``/``~``/empty, integers are decimal, ``0x``, ``0o`` and ``0b`` (``_``
  allowed), floats are ``1.5``, ``1e3``, ``.inf``, ``.nan``; everything else (``on``, ``yes``,
  ``2024-01-01``, ``1:20``, ``=``) stays text. A number with a leading zero (``0777``: octal
  for Pulumi, decimal for YAML 1.2) is refused as ambiguous;
- refuses, naming the key path and the line: a key given twice in one mapping (both lines), a
  key that is not text, a tag other than the core ones, a NUL character or a lone surrogate
  in a value or key (neither survives Pulumi's gRPC), a leading-zero number;
- bounds the work: files over MAX_FILE_BYTES, nesting deeper than MAX_DEPTH, an alias that
  contains itself, and a document that aliases expand to more than MAX_NODES values (a
  "billion laughs" bomb is refused in milliseconds, before anything is built from it).

Every refusal is a ConfigError (stackspec/errors.py), so `bundle plan` exits 2 with the
report and `pulumi preview` prints it without a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from yaml.nodes import Node, ScalarNode, SequenceNode

from stackspec.errors import ConfigError, Problem
from stackspec.xinference import CONFIG_NAMESPACE

MAX_FILE_BYTES = 256 * 1024  # a stack file holds settings; the largest shipped one is ~3 KB
MAX_DEPTH = 32  # nesting levels, aliases followed (the schema needs 6)
MAX_NODES = 100_000  # values in the document once every alias is expanded

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
SEQ, MAP, MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"
_SCALAR_TAGS = {STR, INT, FLOAT, BOOL, NULL}

_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT_RE = re.compile(r"^[-+]?(?:0[bB]_*[01][01_]*|0[oO]_*[0-7][0-7_]*|0[xX]_*[0-9a-fA-F][0-9a-fA-F_]*"
                     r"|[0-9][0-9_]*)$")
_LEADING_ZERO_RE = re.compile(r"^[-+]?0[0-9_]+$")
_FLOAT_RE = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_FORMS = {BOOL: _BOOL_RE, NULL: _NULL_RE, INT: _INT_RE, FLOAT: _FLOAT_RE}
_PROJECT_PREFIX = CONFIG_NAMESPACE + ":"

Segment = Union[str, int]


class _TooDeep(yaml.MarkedYAMLError):
    """Raised while composing, before Python's own recursion limit could be reached."""


class StackYamlLoader(yaml.SafeLoader):
    """SafeLoader with yaml.v3's implicit types, a nesting limit and strict scalar constructors."""

    yaml_implicit_resolvers: dict[str, Any] = {}  # none of SafeLoader's YAML 1.1 resolvers: only those added below

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Optional[Node], index: Any) -> Optional[Node]:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
                raise _TooDeep(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_core_bool(self, node: ScalarNode) -> bool:
        return self._checked(node, BOOL).lower() == "true"

    def construct_core_null(self, node: ScalarNode) -> None:
        self._checked(node, NULL)
        return None

    def construct_core_int(self, node: ScalarNode) -> int:
        text = self._checked(node, INT).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise yaml.constructor.ConstructorError(None, None, f"a number of {len(digits)} digits is too long",
                                                    node.start_mark) from None

    def construct_core_float(self, node: ScalarNode) -> float:
        text = self._checked(node, FLOAT).replace("_", "").lower()
        return float(text.replace(".inf", "inf").replace(".nan", "nan"))

    def _checked(self, node: ScalarNode, tag: str) -> str:
        # An explicit tag (`!!int abc`) is not checked by the resolver; a marked error, not a ValueError.
        value = self.construct_scalar(node)
        if not _FORMS[tag].match(value):
            raise yaml.constructor.ConstructorError(None, None, f"{value!r} is not a valid {_short_tag(tag)}",
                                                    node.start_mark)
        return value


for _tag, _regexp, _first in (
    (BOOL, _BOOL_RE, "tTfF"),
    (NULL, _NULL_RE, ["~", "n", "N", ""]),
    (INT, _INT_RE, "-+0123456789"),
    (FLOAT, _FLOAT_RE, "-+.0123456789"),
    (MERGE, re.compile(r"^(?:<<)$"), "<"),
):
    StackYamlLoader.add_implicit_resolver(_tag, _regexp, list(_first))
StackYamlLoader.add_constructor(BOOL, StackYamlLoader.construct_core_bool)
StackYamlLoader.add_constructor(NULL, StackYamlLoader.construct_core_null)
StackYamlLoader.add_constructor(INT, StackYamlLoader.construct_core_int)
StackYamlLoader.add_constructor(FLOAT, StackYamlLoader.construct_core_float)


def load_stack_yaml(path: Path) -> Any:
    """The document of a stack file (None when empty); ConfigError for anything Pulumi would not read."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # bounded: `--config /dev/zero` must not read forever
    except OSError as exc:
        raise ConfigError([Problem(source, None, f"cannot read the stack file ({exc.strerror})",
                                   "check the path, or pass --config FILE")], source) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(source, f"over {MAX_FILE_BYTES} bytes", f"larger than {MAX_FILE_BYTES // 1024} KiB",
                                   "a stack file holds settings only: remove the data pasted into it")], source)
    text = _decode_utf8(data, source)
    loader = None
    try:
        loader = StackYamlLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _Walk().problems_of(node)
        if problems:
            raise ConfigError(problems, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_problem(exc, text, source)], source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _decode_utf8(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        encoding = "GBK"  # the usual one on the sites this serves
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            encoding, message = "UTF-16", "is UTF-16 (it starts with a UTF-16 byte order mark), not UTF-8"
        else:
            line, column = _line_column(data[:exc.start].decode("utf-8", "replace"))
            message = f"byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}, column {column}) is not UTF-8"
        raise ConfigError([Problem(source, data[exc.start:exc.start + 4], message,
                                   "save the file as UTF-8 (Pulumi reads stack files as UTF-8 only), e.g. "
                                   f"`iconv -f {encoding} -t UTF-8 OLD > {Path(source).name}`")], source) from None
    return text[1:] if text.startswith("\ufeff") else text


def _line_column(before: str) -> tuple[int, int]:
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _syntax_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. a raw control byte
        line, column = _line_column(text[:exc.position])
        return Problem(source, chr(exc.character), f"not valid YAML at line {line}, column {column}: character "
                       f"#x{exc.character:04x} is not allowed in YAML",
                       "remove the control character (an editor can show it)")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or str(exc)
    if mark is None:
        return Problem(source, None, f"not valid YAML: {what}", "fix the YAML syntax")
    lines = text.splitlines()
    shown = lines[mark.line] if mark.line < len(lines) else ""
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    fix = "fix the YAML syntax there"
    if "\t" in shown[:mark.column + 1]:
        fix = "indent with spaces: YAML does not allow tabs for indentation"
    elif isinstance(exc, _TooDeep):
        fix = f"a stack config needs far fewer than {MAX_DEPTH} levels: flatten it"
    elif isinstance(exc, yaml.composer.ComposerError) and "expected a single document" in what:
        fix = "keep one document: remove the second `---`"
    return Problem(source, shown.strip(), f"not valid YAML at {where}: {what}", fix)


class _Walk:
    """One pass over the composed nodes: checks each distinct node once, sizes the expansion."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values once expanded, depth)
        self._open: set[int] = set()  # nodes on the current path: an alias to one of them is a cycle

    def problems_of(self, root: Node) -> list[Problem]:
        size, depth = self._visit(root, [])
        if size > MAX_NODES:
            self.problems.append(Problem("(document)", f"{size} values", f"holds more than {MAX_NODES} values "
                                         "(each alias counted as often as it is used: an alias bomb?)",
                                         "write the values out instead of repeating aliases (*name)"))
        elif depth > MAX_DEPTH:
            self.problems.append(Problem("(document)", f"{depth} levels", f"aliases nest the file deeper than "
                                         f"{MAX_DEPTH} levels", "flatten the config; alias fewer levels"))
        return self.problems

    def _visit(self, node: Node, at: list[Segment]) -> tuple[int, int]:
        key = id(node)
        if key in self._sizes:
            return self._sizes[key]
        if key in self._open:
            self._add(at, "a list" if isinstance(node, SequenceNode) else "a mapping",
                      "an alias refers to a value that contains it (a loop)",
                      "alias only values that are complete before the alias", node=node)
            return 1, 1
        self._open.add(key)
        try:
            result = self._visit_fresh(node, at)
        finally:
            self._open.discard(key)
        self._sizes[key] = result
        return result

    def _visit_fresh(self, node: Node, at: list[Segment]) -> tuple[int, int]:
        if isinstance(node, ScalarNode):
            self._scalar(node, at)
            return 1, 1
        if isinstance(node, SequenceNode):
            self._tag(node, SEQ, at)
            children = [self._visit(item, [*at, i]) for i, item in enumerate(node.value)]
        else:
            self._tag(node, MAP, at)
            children = []
            seen: dict[str, Node] = {}
            for key_node, value_node in node.value:
                name = self._key(key_node, at)
                child_at = [*at, name if name is not None else "?"]
                if name is not None and name in seen:
                    self._add(child_at, name, f"key given twice in one mapping (line {seen[name].start_mark.line + 1} "
                              f"and line {key_node.start_mark.line + 1}); Pulumi refuses the file",
                              f"keep one `{name}:` (merge the two entries)", node=key_node)
                elif name is not None:
                    seen[name] = key_node
                children.append(self._visit(value_node, child_at))
        total = 1 + sum(size for size, _ in children)
        return min(total, MAX_NODES + 1), 1 + max((depth for _, depth in children), default=0)

    def _key(self, node: Node, at: list[Segment]) -> Optional[str]:
        if isinstance(node, ScalarNode) and node.tag == MERGE:
            return "<<"
        if isinstance(node, ScalarNode) and node.tag == STR:
            self._scalar(node, at)
            return str(node.value)
        what = {INT: "a number", FLOAT: "a number", BOOL: "a boolean", NULL: "empty (null)"}.get(node.tag, "not text")
        shown = node.value if isinstance(node, ScalarNode) else "a " + ("list" if isinstance(node, SequenceNode)
                                                                          else "mapping")
        self._add([*at, str(shown)], shown, f"a key that is {what}: keys are text",
                  f"quote the key ('{shown}')" if isinstance(node, ScalarNode) and node.value else
                  "write a text key", node=node)
        return None

    def _scalar(self, node: ScalarNode, at: list[Segment]) -> None:
        if node.tag not in _SCALAR_TAGS:
            self._tag(node, STR, at)
            return
        if "\x00" in node.value:
            self._add(at, node.value, "contains a NUL character (\\0)", "remove it", node=node)
        if _SURROGATE_RE.search(node.value):
            self._add(at, node.value, "contains a lone UTF-16 surrogate (\\uD800-\\uDFFF), not a character",
                      "write the character itself, or its \\U escape", node=node)
        if node.tag == INT and _LEADING_ZERO_RE.match(node.value):
            self._add(at, node.value, "a number with a leading zero: Pulumi reads it as octal, YAML 1.2 as decimal",
                      f"write it without the leading zero, or quote it as text ('{node.value}')", node=node)
        elif node.tag in _FORMS and not _FORMS[node.tag].match(node.value):
            self._add(at, node.value, f"is not a valid {_short_tag(node.tag)}", "remove the tag or fix the value",
                      node=node)

    def _tag(self, node: Node, expected: str, at: list[Segment]) -> None:
        if node.tag != expected:
            self._add(at, _short_tag(node.tag), f"YAML tag {_short_tag(node.tag)} is not read by this program",
                      "remove the tag (write plain text, numbers, lists and mappings)", node=node)

    def _add(self, at: list[Segment], value: Any, message: str, fix: str, node: Optional[Node] = None) -> None:
        line = f" (line {node.start_mark.line + 1})" if node is not None and "line " not in message else ""
        self.problems.append(Problem(key_path(at), value, message + line, fix))


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def key_path(at: list[Segment]) -> str:
    """`config`, `xinference-offline:models`, 1, `gpus` -> `models[1].gpus` (the config's own key path)."""
    if len(at) >= 2 and at[0] == "config" and isinstance(at[1], str) and at[1].startswith(_PROJECT_PREFIX):
        at = [at[1][len(_PROJECT_PREFIX):], *at[2:]]
    path = ""
    for part in at:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"
