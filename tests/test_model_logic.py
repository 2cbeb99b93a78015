"""The provider's pure functions: launch body, validation, diff, running-vs-wanted comparison.

No server needed; these decide what `preview` shows and what `up` sends.
"""

from __future__ import annotations

import pickle

import dill
import pulumi
import pytest
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider

from components.model import XinferenceModelProvider
from components.model_props import (IN_PLACE_KEYS, REPLACE_KEYS, autostart_entry, conflict_message, diff_props,
                                    launch_payload, normalize, observed, running_mismatches, validate)
from components.xinference_client import Credential

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

BASE = {
    "endpoint": "http://127.0.0.1:9997",
    "model_uid": "bce-embedding",
    "model_name": "bce-embedding-base_v1",
    "model_type": "embedding",
    "model_path": "/root/.xinference/models/bce-embedding-base_v1",
}

# GET /v1/models/{uid} of a real 4.1.0 server for the shipped MiniLM model
DESCRIBED = {
    "model_type": "embedding", "address": "127.0.0.1:44047", "accelerators": [], "model_name": "bge-small-en-v1.5",
    "model_engine": "sentence_transformers", "model_format": "pytorch", "dimensions": 384, "max_tokens": 512,
    "language": ["en"], "model_ability": ["embed"], "model_hub": "huggingface", "quantization": "none",
    "n_worker": 1, "replica": 1,
}


def props(**overrides):
    return {**BASE, **overrides}


# --- launch body -------------------------------------------------------------------------


def test_launch_payload_minimal_is_the_rest_body_with_no_virtualenv():
    assert launch_payload(props()) == {
        "model_uid": "bce-embedding", "model_name": "bce-embedding-base_v1", "model_type": "embedding",
        "model_path": "/root/.xinference/models/bce-embedding-base_v1", "replica": 1, "enable_virtual_env": False,
    }


def test_launch_payload_passes_every_launch_parameter_and_extra():
    body = launch_payload(props(model_engine="vllm", model_format="pytorch", model_size_in_billions=7,
                                quantization="none", gpu_idx=[1, 0], n_gpu=2, replica=2, worker_ip="10.0.0.5",
                                extra={"vad_model": "/root/.xinference/models/fsmn-vad", "max_model_len": 4096}))
    assert body["gpu_idx"] == [1, 0] and body["n_gpu"] == 2 and body["replica"] == 2
    assert body["model_engine"] == "vllm" and body["model_size_in_billions"] == 7 and body["worker_ip"] == "10.0.0.5"
    assert body["vad_model"] == "/root/.xinference/models/fsmn-vad" and body["max_model_len"] == 4096
    assert body["enable_virtual_env"] is False
    for key in ("endpoint", "container_id", "weights_digest", "launch_timeout", "autostart", "smoke_test", "extra"):
        assert key not in body


def test_extra_may_turn_the_virtualenv_back_on():
    assert launch_payload(props(extra={"enable_virtual_env": True}))["enable_virtual_env"] is True


def test_wire_floats_become_ints_again():
    # Pulumi's gRPC wire format turns every number into a float.
    body = launch_payload(props(replica=2.0, gpu_idx=[0.0, 3.0], n_gpu=2.0, model_size_in_billions=7.0,
                                extra={"max_model_len": 4096.0, "temperature": 0.5}))
    assert body["replica"] == 2 and type(body["replica"]) is int
    assert body["gpu_idx"] == [0, 3] and all(type(g) is int for g in body["gpu_idx"])
    assert type(body["n_gpu"]) is int and type(body["model_size_in_billions"]) is int
    assert type(body["max_model_len"]) is int and body["temperature"] == 0.5


def test_no_empty_gpu_list_is_sent():
    assert "gpu_idx" not in launch_payload(props(gpu_idx=[]))
    assert "n_gpu" not in launch_payload(props(n_gpu=None))


def test_autostart_entry_wraps_the_launch_body():
    entry = autostart_entry(props(gpu_idx=[0]))
    assert entry["enabled"] is True and entry["max_retries"] >= 1 and entry["retry_interval_seconds"] >= 1
    assert entry["launch"] == launch_payload(props(gpu_idx=[0]))


def test_normalize_fills_defaults():
    n = normalize(props(endpoint="http://h:9997/"))
    assert n["replica"] == 1 and n["launch_timeout"] == 900.0 and n["autostart"] is True and n["smoke_test"] is True
    assert n["endpoint"] == "http://h:9997"


def test_the_provider_and_the_stack_file_have_one_set_of_defaults():
    # They drifted once: launch_timeout defaulted to 600 s at the provider, 900 s in the stack file.
    from stackspec.config import ModelConfig

    stack_file = ModelConfig.model_validate({"uid": "emb", "type": "embedding"})
    n = normalize(props())
    assert (n["replica"], n["launch_timeout"], n["autostart"], n["smoke_test"]) == \
        (stack_file.replica, stack_file.launch_timeout_s, stack_file.autostart, stack_file.smoke_test)


# --- check -------------------------------------------------------------------------------


def failures(**overrides):
    return dict(validate(props(**overrides)))


def test_valid_inputs_pass():
    assert validate(props()) == []
    assert validate(props(model_type="LLM", model_name="qwen2.5-instruct", model_engine="vllm", gpu_idx=[0, 1], replica=2,
                          n_gpu="auto", launch_timeout=30, autostart=False, extra={"max_model_len": 4096})) == []


@pytest.mark.parametrize("overrides, prop, words", [
    ({"model_type": "tts"}, "model_type", "must be one of"),
    ({"model_type": None}, "model_type", "required"),
    ({"model_name": ""}, "model_name", "required"),
    ({"endpoint": "127.0.0.1:9997"}, "endpoint", "http(s)://host:port"),
    ({"model_uid": "x-rep0"}, "model_uid", "-rep"),
    ({"model_uid": "a/b"}, "model_uid", "character"),
    ({"model_uid": "x" * 101}, "model_uid", "100"),
    ({"gpu_idx": [0, -1]}, "gpu_idx", ">= 0"),
    ({"gpu_idx": [1, 1]}, "gpu_idx", "unique"),
    ({"gpu_idx": [0.5]}, "gpu_idx", "whole"),
    ({"gpu_idx": "0"}, "gpu_idx", "list"),
    ({"gpu_idx": [0, 1, 2], "replica": 2}, "gpu_idx", "multiple of replica"),
    ({"replica": 0}, "replica", ">= 1"),
    ({"replica": 1.5}, "replica", "whole"),
    ({"n_gpu": -1}, "n_gpu", "auto"),
    ({"n_gpu": "all"}, "n_gpu", "auto"),
    ({"launch_timeout": 0}, "launch_timeout", "> 0"),
    ({"launch_timeout": -5.0}, "launch_timeout", "> 0"),
    ({"launch_timeout": "10"}, "launch_timeout", "> 0"),
    ({"autostart": "yes"}, "autostart", "true or false"),
    ({"smoke_test": 1}, "smoke_test", "true or false"),
    ({"extra": {"gpu_idx": [0]}}, "extra", "gpu_idx"),
    ({"extra": ["x"]}, "extra", "mapping"),
    ({"model_type": "LLM"}, "model_engine", "required for model_type LLM"),
    ({"model_path": 3}, "model_path", "string"),
    ({"model_size_in_billions": 0}, "model_size_in_billions", "positive"),
])
def test_check_names_the_property(overrides, prop, words):
    found = failures(**overrides)
    assert prop in found, found
    assert words in found[prop]


def test_check_reports_every_problem_at_once():
    found = failures(model_type="x", replica=0, gpu_idx=[-1], launch_timeout=0)
    assert {"model_type", "replica", "gpu_idx", "launch_timeout"} <= set(found)


def test_check_does_not_judge_values_unknown_at_preview():
    assert validate(props(endpoint=UNKNOWN, gpu_idx=UNKNOWN, model_path=UNKNOWN)) == []
    # what `python -m pulumi.dynamic` really hands check for the container's pending id at preview
    # (found by `pulumi preview --stack local-docker`: "container_id must be a string, got Unknown")
    sdk_unknown = pulumi.output.UNKNOWN
    assert validate(props(container_id=sdk_unknown, endpoint=sdk_unknown, model_path=sdk_unknown)) == []


def test_provider_check_returns_normalized_inputs_and_failures():
    result = XinferenceModelProvider().check({}, props(replica=2.0, gpu_idx=[0.0, 1.0], model_type="nope"))
    assert result.inputs["replica"] == 2 and result.inputs["gpu_idx"] == [0, 1]
    assert [f.property for f in result.failures] == ["model_type"]


# --- diff --------------------------------------------------------------------------------


def test_no_change_is_no_change():
    old = normalize(props(gpu_idx=[0], extra={"a": 1}))
    assert diff_props(old, props(gpu_idx=[0.0], extra={"a": 1.0})) == ([], [])
    assert diff_props(normalize(props()), props(gpu_idx=[], extra={})) == ([], [])


def test_outputs_in_the_old_state_do_not_count():
    old = {**normalize(props()), "status": "READY", "address": "x", "__provider": "abc"}
    assert diff_props(old, {**props(), "__provider": "def"}) == ([], [])


@pytest.mark.parametrize("status", ["LOADING", "AUTOSTARTING"])
def test_a_model_still_coming_back_is_an_in_place_update_that_waits(status):
    old = {**normalize(props()), "status": status}
    assert diff_props(old, props()) == ([], ["status"])


@pytest.mark.parametrize("key, value", [
    ("model_name", "other"), ("model_type", "rerank"), ("model_engine", "vllm"), ("model_format", "gguf"),
    ("model_size_in_billions", 14), ("quantization", "Q4_K_M"), ("model_path", "/other"), ("gpu_idx", [1]),
    ("n_gpu", 2), ("replica", 2), ("extra", {"vad_model": "/x"}), ("container_id", "c2"),
    ("weights_digest", "sha256:2"), ("worker_ip", "10.0.0.2"), ("model_uid", "other-uid"),
])
def test_launch_parameters_force_a_replacement(key, value):
    old = normalize(props(container_id="c1", weights_digest="sha256:1"))
    replaces, changes = diff_props(old, {**old, key: value})
    assert replaces == [key] and changes == [key]
    result = XinferenceModelProvider().diff("id", old, {**old, key: value})
    assert result.replaces == [key] and result.delete_before_replace is True and result.changes is True


@pytest.mark.parametrize("key, value", [("endpoint", "http://10.0.0.1:9997"), ("launch_timeout", 30.0),
                                        ("autostart", False), ("smoke_test", False)])
def test_endpoint_and_timeout_change_in_place(key, value):
    old = normalize(props())
    replaces, changes = diff_props(old, {**old, key: value})
    assert replaces == [] and changes == [key]


def test_unknown_container_id_at_preview_means_replace():
    old = normalize(props(container_id="c1"))
    replaces, _ = diff_props(old, {**old, "container_id": UNKNOWN})
    assert replaces == ["container_id"]
    replaces, _ = diff_props(old, {**old, "container_id": pulumi.output.UNKNOWN})
    assert replaces == ["container_id"]


def test_key_sets_cover_every_input():
    from components.model_props import ARG_KEYS

    assert set(REPLACE_KEYS) | set(IN_PLACE_KEYS) == set(ARG_KEYS)
    assert not set(REPLACE_KEYS) & set(IN_PLACE_KEYS)


# --- adoption vs conflict ----------------------------------------------------------------


def minilm(**overrides):
    return {"endpoint": "http://127.0.0.1:9997", "model_uid": "m", "model_name": "bge-small-en-v1.5",
            "model_type": "embedding", "model_path": "/models/minilm", **overrides}


def test_same_parameters_adopt():
    assert running_mismatches(DESCRIBED, minilm()) == []
    assert running_mismatches(DESCRIBED, minilm(model_engine="Sentence_Transformers", model_format="pytorch")) == []


def test_different_visible_parameters_conflict():
    found = running_mismatches(DESCRIBED, minilm(model_name="bge-base-en-v1.5", model_engine="vllm", replica=2))
    assert {k for k, _, _ in found} == {"model_name", "model_engine", "replica"}


def test_gpu_idx_is_compared_with_the_accelerators():
    on_gpu = {**DESCRIBED, "accelerators": ["1"]}
    assert running_mismatches(on_gpu, minilm(gpu_idx=[1])) == []
    assert running_mismatches(on_gpu, minilm(gpu_idx=[0])) == [("gpu_idx", [1], [0])]


def test_invisible_parameters_are_compared_with_the_autostart_entry():
    registered = launch_payload(minilm())
    assert running_mismatches(DESCRIBED, minilm(), registered) == []
    found = running_mismatches(DESCRIBED, minilm(model_path="/models/other", extra={"vad_model": "/v"}), registered)
    assert ("model_path", "/models/minilm", "/models/other") in found
    assert ("extra.vad_model", None, "/v") in found


def test_redacted_registry_values_are_not_a_conflict():
    registered = {**launch_payload(minilm(extra={"hf_token": "x"})), "hf_token": "******"}
    assert running_mismatches(DESCRIBED, minilm(extra={"hf_token": "x"}), registered) == []


def test_conflict_message_says_what_differs_and_how_to_resolve():
    text = conflict_message("m", "http://h:9997", [("replica", 1, 2)])
    assert "replica: running 1, wanted 2" in text and "terminate" in text and "Nothing was changed" in text


def test_observed_reports_drift_so_the_next_diff_replaces():
    outs = observed({**DESCRIBED, "replica": 2}, minilm())
    assert outs["replica"] == 2 and outs["address"] == "127.0.0.1:44047"
    replaces, _ = diff_props(outs, minilm())
    assert replaces == ["replica"]


# --- the credential never travels --------------------------------------------------------


def test_provider_pickles_by_reference_without_the_credential():
    p = XinferenceModelProvider()
    p.configure(ConfigureRequest(Config({"xinference-offline:api_key": "admin:s3cret-pass"}, "xinference-offline")))
    assert p._get_credential() is not None and p._get_credential().logs_in
    blob = serialize_provider(p)
    import base64

    raw = base64.b64decode(blob)
    assert b"s3cret-pass" not in raw and b"components.model" in raw
    clone = dill.loads(raw)
    assert type(clone).__name__ == "XinferenceModelProvider" and "_credential" not in clone.__dict__


def test_credential_is_never_printed_or_pickled():
    c = Credential("sk-abcdef0123456789")
    assert "abcdef" not in repr(c) and "abcdef" not in str(c)
    assert c.redact("bad key sk-abcdef0123456789 here") == "bad key <redacted> here"
    with pytest.raises(TypeError):
        pickle.dumps(c)


def test_configure_reads_the_stack_secret_then_the_environment(monkeypatch):
    monkeypatch.setenv("XINFERENCE_API_KEY", "from-env-token")
    p = XinferenceModelProvider()
    p.configure(ConfigureRequest(Config({}, "xinference-offline")))
    assert p._get_credential().redact("from-env-token") == "<redacted>"
    p.configure(ConfigureRequest(Config({"xinference-offline:api_key": "from-config"}, "other-project")))
    assert p._get_credential().redact("from-config") == "<redacted>"
    monkeypatch.delenv("XINFERENCE_API_KEY")
    p.configure(ConfigureRequest(Config({}, "xinference-offline")))
    assert p._get_credential() is None


def test_replicas_still_loading_are_named():
    from components.xinference_client import replicas_pending

    row = {"status": "READY", "replica_statuses": [{"replica_id": 0, "status": "READY"},
                                                   {"replica_id": 1, "status": "CREATING"}]}
    assert replicas_pending([row]) == ["1"]
    assert replicas_pending([{**row, "replica_statuses": [{"replica_id": 0, "status": "READY"}]}]) == []
    assert replicas_pending([]) == [] and replicas_pending([{"status": "READY"}]) == []


# --- the pinned catalog, at the provider (issue 14, item 1) ------------------------------


def test_the_provider_refuses_what_plan_refuses_against_the_catalog():
    assert validate(props(model_name="bce-embeding-base_v1")) == [(
        "model_name", "model_name 'bce-embeding-base_v1': not among Xinference 4.1.0's embedding models (47 names); "
        "fix: did you mean `bce-embedding-base_v1`, `jina-embeddings-v2-base-zh`, `jina-embeddings-v2-base-en`? use "
        "the model_name Xinference lists (`xinference registrations -t embedding`), or declare your own model under "
        "`custom`")]
    assert validate(props(model_engine="llama.cpp")) == [(
        "model_engine", "model_engine 'llama.cpp': bce-embedding-base_v1 has no engine llama.cpp in Xinference "
        "4.1.0; fix: use one of ['sentence_transformers', 'vllm']")]


def test_a_registered_custom_name_is_not_looked_up_in_the_catalog():
    assert validate(props(model_name="all-MiniLM-L6-v2", registration_digest="ab" * 32)) == []
    assert [k for k, _ in validate(props(model_name="all-MiniLM-L6-v2"))] == ["model_name"]
