"""Stack config validation: every class of operator mistake is rejected with key, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.stack_file import from_stack_file
from tests.stack_configs import docker_stack, namespaced, reference_models

ROOT = Path(__file__).resolve().parent.parent
STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))


def problems_of(cfg: dict, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_stack_config(namespaced(cfg), **kwargs)
    return [str(p) for p in info.value.problems]


def one_problem(cfg: dict, **kwargs) -> str:
    found = problems_of(cfg, **kwargs)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_every_committed_stack_is_valid(path):
    cfg = from_stack_file(path)
    assert cfg.enabled_models, f"{path.name} launches nothing"


def test_reference_stack_mirrors_the_shell_job():
    cfg = from_stack_file(ROOT / "stacks" / "Pulumi.gpu-node-1.yaml")
    assert cfg.gpu_ids == [0, 1]
    assert cfg.container.port == 9997 and cfg.container.restart == "unless-stopped"
    assert cfg.models_dir == "/data/docker_models"
    assert [(m.uid, m.type, m.gpus) for m in cfg.models] == [
        ("bce-embedding-base_v1", "embedding", [0]),
        ("bce-reranker-base_v1", "rerank", [0]),
        ("CosyVoice-300M", "audio", [0]),
        ("SenseVoiceSmall", "audio", [1]),
    ]


def test_valid_config_parses_with_defaults():
    cfg = load_stack_config(namespaced(docker_stack()))
    assert cfg.mode == "docker"
    assert cfg.container.healthcheck.start_period_s == 120
    assert cfg.models[0].model_name == "bce-embedding-base_v1"  # name defaults to uid


def test_unknown_top_level_key_suggests_the_right_one():
    msg = one_problem({**docker_stack(), "modles": []})
    assert msg.startswith("modles = []: unknown key") and "did you mean `models`" in msg


def test_per_gpu_memory_spelled_as_a_map_points_to_where_it_is_declared():
    msg = one_problem({**docker_stack(), "gpus_memory_gb": {"0": 24, "1": 24}})
    assert msg.startswith("gpus_memory_gb = {'0': 24, '1': 24}: unknown key") and \
        "each GPU's memory is declared as `gpus: [{id: 0, vram_gb: 24}, {id: 1, vram_gb: 24}]`" in msg, msg


def test_unknown_nested_key_suggests_the_right_one():
    models = reference_models()
    models[1]["gpu"] = 0
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("models[1].gpu = 0: unknown key") and "`gpus`" in msg


def test_model_on_a_gpu_the_server_does_not_have():
    models = reference_models()
    models[3]["gpus"] = [2]
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("models[3].gpus = [2]: GPU 2 is not a GPU of this server")
    assert "use one of [0, 1]" in msg


def test_duplicate_uids_are_reported_for_each_model():
    models = reference_models()
    models[1].update(uid="bce-embedding-base_v1", name="bce-reranker-base_v1")
    found = problems_of(docker_stack(models=models))
    assert [f.split(" = ")[0] for f in found] == ["models[0].uid", "models[1].uid"]
    assert "uid used by 2 models" in found[0]


def test_duplicate_host_gpu_ids():
    msg = one_problem(docker_stack(gpus=[0, 1, 0]))
    assert msg.startswith("gpus = [0, 1, 0]: GPU 0 is listed 2 times")


@pytest.mark.parametrize("port", [0, 70000, "http"])
def test_bad_port(port):
    msg = one_problem(docker_stack(container={"port": port}))
    assert msg.startswith(f"container.port = {port!r}:")


def test_gpu_over_its_declared_vram():
    models = reference_models()
    models[2]["vram_gb"] = 22  # 2 + 2 + 22 on a 24 GB GPU
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("gpus[id=0].vram_gb = 24.0:")
    assert "GPU 0 needs 26 GB, over its 24 GB: " in msg and "CosyVoice-300M 22 GB (declared)" in msg


def test_enabled_model_without_files():
    models = reference_models()
    del models[0]["path"]
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("models[0].path = None: an enabled model needs its files")


def test_disabled_model_is_not_held_to_the_enabled_rules():
    models = reference_models()
    models[0] = {"uid": "old", "name": "bge-small-en-v1.5", "type": "embedding", "enabled": False, "gpus": [7]}
    cfg = load_stack_config(namespaced(docker_stack(models=models)))
    assert [m.uid for m in cfg.enabled_models] == [m["uid"] for m in reference_models()[1:]]


def test_model_path_escaping_the_model_dir():
    models = reference_models()
    models[0]["path"] = "../etc"
    models[1]["path"] = "/opt/elsewhere/reranker"
    found = problems_of(docker_stack(models=models))
    assert found[0].startswith("models[0].path = '../etc': must not contain `..`")
    assert found[1].startswith("models[1].path = '/opt/elsewhere/reranker': is outside models_dir")


def test_bad_enum_values_name_the_choices():
    models = reference_models()
    models[0]["type"] = "embeding"
    found = problems_of(docker_stack(models=models, container={"restart": "sometimes"}))
    assert any(f.startswith("models[0].type = 'embeding'") and "'embedding'" in f for f in found)
    assert any(f.startswith("container.restart = 'sometimes'") and "'unless-stopped'" in f for f in found)


def test_llm_needs_an_engine():
    models = [{"uid": "qwen", "name": "qwen2.5-instruct", "type": "LLM", "gpus": [0, 1], "path": "qwen"}]
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("models[0].engine = None: LLM models need an engine")


def test_launch_kwargs_with_their_own_field_are_refused_in_extra():
    models = reference_models()
    models[0]["extra"] = {"gpu_idx": [1]}
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("models[0].extra.gpu_idx = [1]: has its own field; fix: use `gpus`")


def test_sensevoice_without_a_local_vad_model_is_refused_offline():
    models = reference_models()
    del models[3]["extra"]
    msg = one_problem(docker_stack(models=models))
    assert msg.startswith("models[3].extra.vad_model = None: SenseVoiceSmall loads its VAD model")


def test_cosyvoice_on_a_container_that_does_not_trust_its_config_s_code_is_refused():
    msg = one_problem(docker_stack(container={"env": {}}))
    assert msg.startswith("models[2].name = 'CosyVoice-300M': Xinference 4.1 loads a CosyVoice model from a model path "
                          "only on a worker started with XINFERENCE_TRUST_REMOTE_CODE=1"), msg
    assert "fix: set container.env: {XINFERENCE_TRUST_REMOTE_CODE: '1'} if you trust this model's source" in msg
    load_stack_config(namespaced(docker_stack(container={"env": {"XINFERENCE_TRUST_REMOTE_CODE": "true"}})))


def test_docker_mode_needs_an_image_and_existing_mode_an_endpoint():
    cfg = docker_stack()
    del cfg["image"]
    assert one_problem(cfg).startswith("image = None: docker mode needs the Xinference image")
    existing = {"mode": "existing", "models": reference_models()[:1], "image": {"name": "x"}}
    found = problems_of(existing)
    assert found[0].startswith("endpoint = None: existing mode needs the URL")
    assert found[1].startswith("image = '...': has no effect in existing mode")


def test_bad_endpoint_and_docker_host():
    found = problems_of(docker_stack(endpoint="10.0.0.5:9997", docker={"host": "gpu-node-2"}))
    assert any(f.startswith("docker.host = 'gpu-node-2'") and "ssh://" in f for f in found)
    assert any(f.startswith("endpoint = '10.0.0.5:9997': not an http(s)://host:port URL") for f in found)


def test_auth_needs_a_secret_api_key():
    assert one_problem(docker_stack(auth=True)).startswith("api_key = None: auth is on but no API key is set")
    msg = one_problem(docker_stack(auth=True, api_key="k3y"))
    assert msg.startswith("api_key = '<plain text>': the API key is stored in plain text")
    assert "k3y" not in msg  # the key itself never appears in an error
    load_stack_config(namespaced(docker_stack(auth=True, api_key="k3y")), secret_keys={"xinference-offline:api_key"})


def test_secure_value_from_a_stack_file_counts_as_secret():
    cfg = load_stack_config(namespaced(docker_stack(auth=True, api_key={"secure": "v1:abc"})))
    assert cfg.api_key == "<secret>"


def test_every_problem_is_reported_at_once():
    models = reference_models()
    models[0]["typo"] = 1
    models[1]["gpus"] = [5]
    models[2]["replica"] = 0
    found = problems_of(docker_stack(models=models, gpus=[0, 0, 1], container={"port": -1}, modelsdir="/x"))
    paths = [f.split(" = ")[0] for f in found]
    assert paths == ["models[0].typo", "models[2].replica", "container.port", "modelsdir", "gpus",
                     "models[1].gpus"], found


def test_key_without_namespace_is_reported():
    with pytest.raises(ConfigError) as info:
        load_stack_config({"models": []})
    assert "write it as `xinference-offline:models`" in str(info.value)


def test_other_namespaces_are_left_alone():
    raw = {**namespaced(docker_stack()), "docker:host": "unix:///x", "aws:region": "eu-west-1"}
    assert load_stack_config(raw).gpu_ids == [0, 1]


def test_stack_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config:\n  xinference-offline:models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        from_stack_file(bad)
