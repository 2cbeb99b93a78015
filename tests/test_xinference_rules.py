"""One home for the rules of Xinference (stackspec/xinference.py): the stack schema and the provider's
`validate` refuse the same values with the same words (issue 13, item 2).

Before: spec's uid rule allowed 128 characters and `-rep1`, so `bundle plan` passed a stack
that the provider, like Xinference 4.1 (xinference/core/utils.py is_valid_model_uid: at most
100 characters, no `-rep<N>` suffix), refused at `pulumi preview`.
"""

from __future__ import annotations

import pytest

from components.model_props import validate
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.xinference import MODEL_UID_FIX, endpoint_problem, model_uid_problem

PROVIDER_INPUTS = {"endpoint": "http://127.0.0.1:9997", "model_uid": "emb", "model_name": "bge-small-en-v1.5",
                   "model_type": "embedding", "launch_timeout": 600.0, "autostart": True, "smoke_test": True,
                   "replica": 1}


def plan_problems(**config):
    """The problems `bundle plan` reports for an existing-mode stack with these keys."""
    raw = {"xinference-offline:mode": "existing", "xinference-offline:endpoint": "http://127.0.0.1:9997",
           "xinference-offline:auth": False, **{f"xinference-offline:{k}": v for k, v in config.items()}}
    with pytest.raises(ConfigError) as caught:
        load_stack_config(raw)
    return caught.value.problems


def provider_failures(**inputs):
    return dict(validate({**PROVIDER_INPUTS, **inputs}))


@pytest.mark.parametrize("uid", ["x" * 101, "x" * 120, "emb-rep1", "emb-rep12", "a/b", "two words", ""])
def test_plan_and_the_provider_refuse_a_uid_with_the_same_message(uid):
    message = model_uid_problem(uid)
    assert message is not None
    [problem] = [p for p in plan_problems(models=[{"uid": uid, "name": "bge-small-en-v1.5", "type": "embedding"}])
                 if p.path == "models[0].uid"]
    assert (problem.message, problem.fix) == (message, MODEL_UID_FIX)
    assert provider_failures(model_uid=uid)["model_uid"] == f"model_uid {uid!r}: {message}; fix: {MODEL_UID_FIX}"


@pytest.mark.parametrize("uid", ["x" * 100, "emb", "bce-embedding-base_v1", "emb-rep", "rep1", "Qwen2.5-7B"])
def test_what_xinference_takes_both_take(uid):
    assert model_uid_problem(uid) is None
    assert "model_uid" not in provider_failures(model_uid=uid)
    load_stack_config({"xinference-offline:mode": "existing", "xinference-offline:endpoint": "http://127.0.0.1:9997",
                       "xinference-offline:auth": False,
                       "xinference-offline:models": [{"uid": uid, "name": "bge-small-en-v1.5", "type": "embedding",
                                                     "path": "emb"}]})


def test_the_rule_is_xinferences_own():
    from xinference.core.utils import is_valid_model_uid  # the pinned server's rule, where it is installed

    for uid in ["x" * 100, "x" * 101, "emb-rep1", "emb-rep", "emb"]:
        assert is_valid_model_uid(uid) == (model_uid_problem(uid) is None), uid


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9997", "http://h:9997/v1", "ftp://h:1", "http://user@h:9997",
                                      "http://h:9997?x=1"])
def test_plan_and_the_provider_refuse_an_endpoint_with_the_same_message(endpoint):
    message = endpoint_problem(endpoint)
    assert message is not None
    [problem] = [p for p in plan_problems(endpoint=endpoint) if p.path == "endpoint"]
    assert problem.message == message
    assert message in provider_failures(endpoint=endpoint)["endpoint"]


@pytest.mark.parametrize("uid", ["x" * 100, "x" * 101, "emb-rep1", "emb-rep", "emb", "a/b", "-x", ""])
def test_the_manifest_pattern_is_the_same_rule(uid):
    from stackspec.xinference import MODEL_UID_RE

    assert (MODEL_UID_RE.fullmatch(uid) is not None) == (model_uid_problem(uid) is None), uid
