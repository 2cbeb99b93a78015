"""The value types of the stack config: strict numbers and canonical model directories.

Numbers. YAML and JSON both have booleans, and pydantic's lax mode reads ``true`` as 1, so
``gpus: [true]`` used to be GPU 1. ``WholeNumber`` and ``Number`` refuse a boolean wherever a
number is meant; they still accept what lax mode accepts otherwise (``9997``, ``9997.0``, the
text ``"9997"`` that Pulumi hands a top-level key). ``Number`` refuses ``.nan`` and ``.inf``
(no size, budget or timeout is infinite); ``WholeNumber`` refuses what Pulumi cannot carry
intact (its wire format holds numbers as 64-bit floats: integers up to 2**53).

Model directories (a model's ``path``, a companion's ``path``). A path is normalized once,
here, where it enters: ``emb/``, ``./emb``, ``a//emb``, ``a/./emb`` become ``emb``, ``emb``,
``a/emb``, ``a/emb``, and ``//m/emb`` becomes ``/m/emb``. These spellings name the same
directory on every file system, so accepting them costs nothing, and from here on the plan,
the build, the manifest and the install see one spelling. What has no canonical form as a
model directory is refused, with the fix: an empty path, ``.`` (models_dir itself), any
``..`` (it leaves the directory, or means something else behind a symlink; the lexical form
is suggested when it stays inside), a control character. An absolute path under models_dir
is made relative to it by ``load_stack_config`` (that needs the stack's models_dir).
"""

from __future__ import annotations

import math
import posixpath
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError


WIRE_INT_LIMIT = 2 ** 53  # the largest integer a float64 (Pulumi's wire number) holds exactly

FIXES = {
    "bool_is_not_a_number": "write a number (true and false are booleans, not numbers or GPU ids)",
    "number_not_finite": "write a finite number (.nan and .inf are not sizes, budgets or timeouts)",
    "int_beyond_wire": f"write a whole number within ±{WIRE_INT_LIMIT}",
}


def _no_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_is_not_a_number", "expected a number, got the boolean {value}",
                                  {"value": str(value).lower()})
    return value


def _finite(value: Any) -> Any:
    value = _no_boolean(value)
    number: Optional[float] = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # pydantic says it is not a number
    if number is not None and not math.isfinite(number):
        raise PydanticCustomError("number_not_finite", "expected a finite number, got {value}", {"value": value})
    return value


def _on_the_wire(value: int) -> int:
    if abs(value) > WIRE_INT_LIMIT:
        raise PydanticCustomError("int_beyond_wire", "a {bits}-bit number: larger than 2**53, which Pulumi "
                                  "cannot carry exactly", {"bits": value.bit_length()})
    return value


def _no_boolean_items(value: Any) -> Any:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, bool):
                raise PydanticCustomError("bool_is_not_a_number", "expected whole numbers, got the boolean "
                                          "{value} at index {index}", {"value": str(item).lower(), "index": index})
    return value


def _items_on_the_wire(value: list[int]) -> list[int]:
    return [_on_the_wire(item) for item in value]


# Each type is Annotated at the top (not Optional[Annotated[...]]), so that the field's type
# stays `int`, `list[int]`, `str` for stackspec/reference.py's README table.
WholeNumber = Annotated[int, BeforeValidator(_no_boolean), AfterValidator(_on_the_wire)]
WholeNumbers = Annotated[list[int], BeforeValidator(_no_boolean_items), AfterValidator(_items_on_the_wire)]
Number = Annotated[float, BeforeValidator(_finite)]
OptionalNumber = Annotated[Optional[float], BeforeValidator(_finite)]


# model_size_in_billions may be a number or text ("1_8"); n_gpu a count or "auto": no booleans in either.
SizeInBillions = Annotated[Optional[Union[int, float, str]], BeforeValidator(_finite)]
GpuCount = Annotated[Optional[Union[int, Literal["auto"]]], BeforeValidator(_no_boolean)]


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def clean_dir(value: Any) -> Any:
    """A directory written without doubled or trailing slashes and `.` parts (`/data/m/` -> `/data/m`).

    A path with `..`, or one that is only slashes and dots, is returned as written, for the
    rules that refuse it to show it as the operator wrote it.
    """
    if not isinstance(value, str) or ".." in value.split("/") or not _parts(value):
        return value
    return ("/" if value.startswith("/") else "") + "/".join(_parts(value))


def _model_dir_problem(kind: str, message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message, {"fix": fix})


def canonical_model_dir(value: Any) -> Any:
    """A model (or companion) directory in its one spelling; PydanticCustomError when it has none."""
    if not isinstance(value, str):
        return value  # pydantic reports the type
    example = "write the model's directory under models_dir, e.g. bce-embedding-base_v1"
    if not value.strip():
        raise _model_dir_problem("model_dir_empty", "is empty", example)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _model_dir_problem("model_dir_control", "contains a control character (newline, tab, NUL, ...)",
                                 "write the directory name without it")
    if ".." in value.split("/"):
        lexical = posixpath.normpath(value)
        leaves = lexical == ".." or lexical.startswith("../") or lexical in (".", "/")
        raise _model_dir_problem("model_dir_dotdot", "must not contain `..`",
                                 "move the model under models_dir and write its path relative to models_dir"
                                 if leaves else f"write `{lexical}` (the same directory named directly)")
    if not _parts(value):
        raise _model_dir_problem("model_dir_is_root", f"names {'/' if value.startswith('/') else 'models_dir'} "
                                 "itself, not a model's directory", example)
    return clean_dir(value)


ModelDir = Annotated[str, AfterValidator(canonical_model_dir)]
OptionalModelDir = Annotated[Optional[str], AfterValidator(canonical_model_dir)]
HostDir = Annotated[str, AfterValidator(clean_dir)]  # models_dir: `/data/m/` and `/data//m` are `/data/m`
OptionalHostDir = Annotated[Optional[str], AfterValidator(clean_dir)]
