"""XinferenceModel's inputs: the one list of its fields, their defaults and their rules.

The stack plans them (stackspec/launch.py: a ``LaunchSpec`` is these plus what `bundle plan` shows
beside them), the program hands them to the resource, and the provider's check judges what the
Pulumi engine hands back with ``input_problems``. Names follow Xinference's REST API.

The rules are the value types' own (stackspec/values.py: no boolean for a number, finite numbers,
integers Pulumi carries intact) under pydantic's strict mode: the engine hands typed values, so
``"10"`` is not a timeout here (the stack file's top-level text keys are parsed, leniently, by
stackspec/config.py). Each field says how its problem reads (``Rule``), so a message names the
input, the rule and the value, as the hostile-input tests pin them. The rules that join two
inputs (a CA for an https endpoint only, an engine for an LLM, the pinned catalog, GPUs a
multiple of the replicas) run over the inputs that passed their own: every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Annotated, Any, Mapping, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from stackspec.catalog import catalog_problems, pinned_catalog
from stackspec.values import GpuCount, Number, SizeInBillions, WholeNumber
from stackspec.xinference import MODEL_TYPES, MODEL_UID_FIX, ModelType, endpoint_problem, model_uid_problem

Problem = tuple[str, str]  # (input, message: the value and the fix)

# Sent in the launch body (POST /v1/models), plus the kwargs of `extra`.
LAUNCH_KEYS = ("model_uid", "model_name", "model_type", "model_engine", "model_format", "model_size_in_billions",
               "quantization", "model_path", "gpu_idx", "n_gpu", "replica", "worker_ip")
# Keys of the launch body the provider owns: `extra` may add any other kwarg.
RESERVED_EXTRA = frozenset(LAUNCH_KEYS) | {"wait_ready"}
_PROBLEM = "input_problem"  # an error whose message is the whole problem (the others read as their Rule)


@dataclass(frozen=True)
class Rule:
    """How a problem with a field reads: ``{input} must be {must_be}, got {value}``."""

    must_be: str
    entries: Optional[str] = None  # a list's items: ``{input} entries must be {entries}, got [the wrong ones]``
    shows_type: bool = False  # name the value's type, not the value (a string was expected)


TEXT = Rule("a string", shows_type=True)


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError(_PROBLEM, "{message}", {"message": message})


def _given(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise _problem(f"{info.field_name} is required")
    return value


def _endpoint(value: str) -> str:
    problem = endpoint_problem(value.strip())
    if problem:
        raise _problem(f"endpoint {value!r}: {problem}; fix: write it like http://10.0.0.5:9997")
    return value


def _absolute(value: Optional[str], info: ValidationInfo) -> Optional[str]:
    if value is not None and not value.startswith("/"):
        raise _problem(f"{info.field_name} must be an absolute path, got {value!r}")
    return value


def _model_uid(value: str) -> str:
    problem = model_uid_problem(value)
    if problem:
        raise _problem(f"model_uid {value!r}: {problem}; fix: {MODEL_UID_FIX}")
    return value


def _positive(value: Any) -> Any:
    if isinstance(value, str) and not value.strip() or isinstance(value, (int, float)) and value <= 0:
        raise PydanticCustomError("not_positive", "not positive")
    return value


def _count(value: Any) -> Any:
    if isinstance(value, int) and value < 0:
        raise PydanticCustomError("negative", "negative")
    return value


def _unique(value: Optional[list[int]]) -> Optional[list[int]]:
    if value is not None and len(set(value)) != len(value):
        raise _problem(f"gpu_idx entries must be unique, got {value!r}")
    return value


def _launch_kwargs(value: Optional[dict[Any, Any]]) -> Optional[dict[Any, Any]]:
    if value is None:
        return value
    if any(not isinstance(k, str) for k in value):
        raise _problem("extra keys must be strings")
    clash = sorted(k for k in value if k in RESERVED_EXTRA)
    if clash:
        raise _problem(f"extra must not set {', '.join(clash)}: use the input(s) of the same name")
    return value


Text = Annotated[Optional[str], TEXT]
GivenText = Annotated[str, AfterValidator(_given), TEXT]


class ServerInputs(BaseModel):
    """What every resource that acts on one model name on one Xinference server is given (the model,
    and a custom model's registration: components/model_registration.py)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    endpoint: Annotated[str, AfterValidator(_given), AfterValidator(_endpoint), TEXT]
    """http://host:port of the Xinference supervisor."""
    endpoint_ca_bundle: Annotated[Optional[str], AfterValidator(_absolute), TEXT] = None
    """PEM file (absolute path, on the machine running Pulumi) of the CA of an https endpoint; default: public CAs."""
    container_id: Text = None
    """The container that serves it: a new container means relaunch (register again)."""
    docker_host: Text = None
    """The engine running ``container_id``: when the endpoint does not answer, read asks it whether that
    container still exists; a model whose container is gone is gone too."""
    docker_ssh: Annotated[Optional[list[str]], Rule("a list of strings (an ssh command)")] = None
    """For an ssh:// engine: the ssh command that reaches it, up to the host name (stackspec/ssh.py)."""
    model_type: Annotated[ModelType, Rule(f"one of {', '.join(MODEL_TYPES)}")]
    model_name: GivenText

    @classmethod
    def joint_problems(cls, valid: Mapping[str, Any], given: AbstractSet[str]) -> list[Problem]:
        """The rules that join inputs, over those that passed their own (``valid``); ``given``: every
        input that is set, known or not."""
        ca_bundle, endpoint = valid.get("endpoint_ca_bundle"), valid.get("endpoint")
        if ca_bundle is not None and endpoint is not None and not endpoint.strip().startswith("https://"):
            return [("endpoint_ca_bundle", f"endpoint_ca_bundle is only used for an https:// endpoint, got {endpoint!r}")]
        return []


LAUNCH_TIMEOUT_S = 900  # the stack file's launch_timeout_s default too


class ModelInputs(ServerInputs):
    """The inputs of one XinferenceModel: launch parameters (LAUNCH_KEYS, plus ``extra``), what a
    change relaunches for, and how to wait."""

    model_uid: Annotated[str, AfterValidator(_model_uid), TEXT]
    model_engine: Text = None
    model_format: Text = None
    model_size_in_billions: Annotated[SizeInBillions, AfterValidator(_positive),
                                      Rule("a positive number or text")] = None
    quantization: Text = None
    model_path: Text = None
    """Path INSIDE the container / on the server."""
    gpu_idx: Annotated[Optional[list[Annotated[WholeNumber, Field(ge=0)]]], AfterValidator(_unique),
                       Rule("a list of GPU indices", entries="whole numbers >= 0")] = None
    """Container-side GPU indices."""
    n_gpu: Annotated[GpuCount, AfterValidator(_count), Rule('a whole number >= 0 or "auto"')] = None
    replica: Annotated[WholeNumber, Rule("a whole number >= 1")] = Field(default=1, ge=1)
    extra: Annotated[Optional[dict[Any, Any]], AfterValidator(_launch_kwargs),
                     Rule("a mapping of launch kwargs", shows_type=True)] = None
    """Other launch kwargs, passed through to POST /v1/models."""
    worker_ip: Text = None
    """Cluster placement."""
    weights_digest: Text = None
    """New weights mean relaunch."""
    registration_digest: Text = None
    """A custom model: the digest of the family this stack registers under model_name
    (components/model_registration.py); a new family relaunches. Set, the name is not looked up in
    the pinned catalog."""
    launch_timeout: Annotated[Number, Rule("a number of seconds > 0")] = Field(default=LAUNCH_TIMEOUT_S, gt=0)
    """Seconds to wait for the model to be ready."""
    autostart: Annotated[bool, Rule("true or false")] = True
    """Register the model in Xinference's autostart registry (it comes back after a restart)."""
    smoke_test: Annotated[bool, Rule("true or false")] = True
    """Run one request suited to the type after launch."""

    @classmethod
    def joint_problems(cls, valid: Mapping[str, Any], given: AbstractSet[str]) -> list[Problem]:
        problems = super().joint_problems(valid, given)
        model_type, name = valid.get("model_type"), valid.get("model_name")
        if model_type is not None and name is not None and "registration_digest" not in given:
            for found in catalog_problems(pinned_catalog(), model_type, name, valid.get("model_engine"),
                                          valid.get("model_format")):
                key = "model_" + found.field
                problems.append((key, f"{key} {found.value!r}: {found.message}; fix: {found.fix}"))
        if model_type == "LLM" and "model_engine" not in given:
            problems.append(("model_engine", "model_engine is required for model_type LLM (Xinference refuses an "
                                             "LLM launch without it)"))
        gpu_idx, replica = valid.get("gpu_idx"), valid.get("replica", 1)
        if gpu_idx and "replica" in valid and len(gpu_idx) % replica:
            problems.append(("gpu_idx", f"gpu_idx has {len(gpu_idx)} GPUs, not a multiple of replica={replica}"))
        return problems


def default_of(name: str) -> Any:
    """A ModelInputs field's default (the stack file's defaults for the same settings are these)."""
    return ModelInputs.model_fields[name].default


def input_problems(inputs: type[ServerInputs], values: Mapping[str, Any],
                   unknown: AbstractSet[str] = frozenset()) -> list[Problem]:
    """Every problem with ``values`` as ``inputs``, as (input, message); nothing is judged twice.

    ``values``: the known inputs (None is not set); ``unknown``: the inputs set to a value not
    known yet (at preview), which are neither judged nor missing. Other keys are ignored.
    """
    values = {k: v for k, v in values.items() if k in inputs.model_fields and v is not None}
    try:
        inputs.model_validate(values)
        errors: list[ErrorDetails] = []
    except ValidationError as exc:
        errors = exc.errors()
    by_input: dict[str, list[ErrorDetails]] = {}
    for error in errors:
        by_input.setdefault(str(error["loc"][0]), []).append(error)
    problems = [problem for key, found in by_input.items() if key not in unknown
                for problem in _field_problems(inputs.model_fields[key], key, values.get(key), found)]
    valid = {k: v for k, v in values.items() if k not in by_input}
    return problems + inputs.joint_problems(valid, set(values) | set(unknown))


def _field_problems(field: FieldInfo, key: str, value: Any, errors: list[ErrorDetails]) -> list[Problem]:
    whole = [str((e.get("ctx") or {})["message"]) for e in errors if e["type"] == _PROBLEM]
    if whole:
        return [(key, message) for message in dict.fromkeys(whole)]
    if any(e["type"] == "missing" for e in errors):
        return [(key, f"{key} is required")]
    rule = next(m for m in field.metadata if isinstance(m, Rule))
    in_entries = all(len(e["loc"]) == 2 and isinstance(e["loc"][1], int) for e in errors)
    if rule.entries and in_entries:
        wrong = {e["loc"][1]: e["input"] for e in errors}
        return [(key, f"{key} entries must be {rule.entries}, got {list(wrong.values())!r}")]
    return [(key, f"{key} must be {rule.must_be}, got {type(value).__name__ if rule.shows_type else repr(value)}")]
