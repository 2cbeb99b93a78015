"""One type for a model's launch inputs (issue 26, item 1).

stackspec/model_inputs.ModelInputs declares XinferenceModel's inputs once, with their defaults and
rules: the stack plans them (LaunchSpec extends the type), the program hands them to the
resource, the provider's check judges them. Before, the plan's LaunchSpec and the component's
XinferenceModelArgs each listed the fields, joined by reflection, and had drifted.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.model_props import ARG_KEYS, XinferenceModelArgs, resource_props, validate
from stackspec.launch import LaunchSpec, launch_specs
from stackspec.load import load_stack_config
from stackspec.model_inputs import ModelInputs, input_problems
from tests.stack_configs import docker_stack, namespaced
from tests.test_cluster import cluster

EXISTING = {"mode": "existing", "endpoint": "http://10.0.0.5:9997", "gpus": [0, 1],
            "models": [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [1, 0], "replica": 2,
                        "path": "emb"},
                       {"uid": "mine", "name": "my-minilm", "type": "embedding", "path": "/abs/mine",
                        "custom": {"dimensions": 384, "max_tokens": 256, "language": ["en"]}}]}


@pytest.mark.parametrize("stack", [docker_stack(), cluster(), EXISTING], ids=["docker", "cluster", "existing"])
def test_what_the_stack_plans_the_provider_accepts(stack):
    specs = launch_specs(load_stack_config(namespaced(stack)), {})
    assert specs
    for spec in specs:
        props = resource_props(XinferenceModelArgs(spec, {"container_id": "c1", "weights_digest": "sha256:1"}))
        assert set(props) == set(ARG_KEYS)  # the plan-only columns (host_gpus, server, ...) are not inputs
        assert validate(props) == [], spec.model_uid


def test_the_plan_is_the_inputs_plus_what_bundle_plan_shows():
    assert set(LaunchSpec.model_fields) - set(ModelInputs.model_fields) == {"host_gpus", "vram_gb", "server",
                                                                              "custom_family"}
    assert ARG_KEYS == tuple(ModelInputs.model_fields)


def test_a_custom_model_is_planned_with_its_registration_digest():
    plain, mine = launch_specs(load_stack_config(namespaced(EXISTING)), {})
    assert plain.registration_digest is None and len(mine.registration_digest or "") == 64
    assert mine.docker_host is None and mine.docker_ssh is None  # existing mode: no container, no engine


def test_only_inputs_may_come_from_outputs():
    inputs = ModelInputs(endpoint="http://h:9997", model_uid="emb", model_name="bge-small-en-v1.5",
                         model_type="embedding")
    with pytest.raises(ValueError, match="container_ip"):
        XinferenceModelArgs(inputs, {"container_ip": "x"})


def test_a_program_builds_the_inputs_by_keyword_with_the_same_types():
    inputs = ModelInputs(endpoint="http://h:9997", model_uid="emb", model_name="bge-small-en-v1.5",
                         model_type="embedding", launch_timeout=300)
    assert inputs.replica == 1 and inputs.launch_timeout == 300.0 and inputs.autostart is True
    with pytest.raises(ValidationError):
        ModelInputs(endpoint="http://h:9997", model_uid="emb", model_name="m", model_type="embedding", replica=True)
    with pytest.raises(ValidationError):
        ModelInputs(endpoint="http://h:9997", model_uid="emb", model_name="m", model_type="embedding", gpu_ids=[0])


def test_an_input_not_known_yet_is_neither_judged_nor_missing():
    values = {"model_uid": "emb", "model_name": "bge-small-en-v1.5", "model_type": "embedding"}
    assert input_problems(ModelInputs, values, unknown={"endpoint"}) == []
    assert input_problems(ModelInputs, values) == [("endpoint", "endpoint is required")]
    # a custom name whose registration digest is not known yet is not looked up in the catalog
    custom = {**values, "endpoint": "http://h:9997", "model_name": "my-minilm"}
    assert input_problems(ModelInputs, custom, unknown={"registration_digest"}) == []
    assert [key for key, _ in input_problems(ModelInputs, custom)] == ["model_name"]


def test_a_rule_over_two_inputs_runs_beside_the_rules_of_one():
    found = validate({"endpoint": "http://h:9997", "model_uid": "q", "model_name": "qwen2.5-instruct",
                      "model_type": "LLM", "replica": 0})
    assert [key for key, _ in found] == ["replica", "model_engine"]
