"""The Pulumi program under Pulumi's mocks: the resource graph and the inputs that matter.

No engine, no Docker: `pulumi.runtime.set_mocks` records every resource the program
registers with its (camelCase) inputs, so the tests assert what `pulumi up` would ask
Docker and Xinference for.
"""

from __future__ import annotations

import json
import runpy
import shlex
import unittest.mock
from pathlib import Path

import pulumi
import pytest

from bundle.contents.stacks import LoadedStack, stack_clashes
from components import preflight
from stackspec.errors import ConfigError
from stackspec.load import load_stack_config
from stackspec.stack_file import from_stack_file, stack_name_of
from tests.stack_configs import NS, docker_stack, reference_models

ROOT = Path(__file__).resolve().parent.parent
ENGINE_IMAGE = "pulumi-python:dynamic/docker_engine:EngineImage"  # the image as the engine holds it


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}
        self.gpu_preflights: list[tuple[str, list[int]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources[args.name] = args
        outputs = dict(args.inputs)
        if args.typ == ENGINE_IMAGE:
            outputs["image_id"] = "sha256:" + "1" * 64
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def of_type(self, typ: str) -> list:
        return [r for r in self.resources.values() if r.typ == typ]

    def one(self, typ: str):
        found = self.of_type(typ)
        assert len(found) == 1, [r.name for r in found]
        return found[0]

    def models(self) -> dict:
        return {r.inputs["model_uid"]: r for r in self.resources.values() if "model_uid" in r.inputs}


def run_program(cfg: dict, secret_keys=()) -> tuple[RecordingMocks, dict]:
    """Run __main__.py under mocks with this stack config; returns the mocks and the exports."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="xinference-offline", stack="gpu-node-1", preview=False)
    pulumi.runtime.set_all_config(
        {f"{NS}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in cfg.items()},
        [f"{NS}:{k}" for k in secret_keys],
    )
    exports: dict = {}
    resolved: dict = {}

    def no_engine_asked(config, stack, image_path=None):
        # Under mocks no engine is contacted: record which GPUs the preflight would ask for
        # (tests/test_docker_gpu.py runs it against real daemons).
        mocks.gpu_preflights.extend(preflight.gpu_reservations(config))
        return []

    @pulumi.runtime.test
    def program():
        original_export = pulumi.export
        pulumi.export = lambda name, value: exports.__setitem__(name, value)
        try:
            with unittest.mock.patch("components.preflight.docker_host_problems", no_engine_asked), \
                    unittest.mock.patch("components.preflight.stale_gateways", lambda config, stack, remove: []), \
                    unittest.mock.patch("components.container_health.trouble_notes", lambda config: []), \
                    unittest.mock.patch("components.image_check.image_tar_problems", lambda config, manifest: []):
                runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = original_export
        return pulumi.Output.all(**exports).apply(resolved.update)

    program()
    return mocks, resolved


@pytest.fixture(scope="module")
def reference():
    return run_program(docker_stack())


CONTAINER = "docker:index/container:Container"


def test_graph_of_one_server(reference):
    mocks, _ = reference
    types = sorted(r.typ for r in mocks.resources.values())
    assert types.count(CONTAINER) == 1
    assert types.count(ENGINE_IMAGE) == 1 and "docker:index/remoteImage:RemoteImage" not in types
    assert types.count("command:local:Command") == 2  # docker load + model directory check
    assert types.count("pulumi:providers:docker") == 1
    assert len(mocks.models()) == 4


def test_image_is_loaded_from_the_tar_and_never_pulled(reference):
    mocks, _ = reference
    load = mocks.resources["xinference-image-load"]
    assert "docker load -i /bundle/images/xinference.tar" in load.inputs["create"]
    assert load.inputs["triggers"] == ["a" * 64]  # the tar's sha256: a new tar reloads
    assert load.inputs["environment"] == {"DOCKER_HOST": "unix:///var/run/docker.sock"}
    image = mocks.one(ENGINE_IMAGE)  # refresh asks the engine; a missing image is loaded by the same script
    assert image.inputs["image_name"] == "xprobe/xinference:v4.1.0" and image.inputs["tar_digest"] == "a" * 64
    assert image.inputs["load_script"] == load.inputs["create"]
    assert mocks.one(CONTAINER).inputs["image"] == "sha256:" + "1" * 64


def test_the_gpu_preflight_asks_the_docker_host_for_exactly_the_reserved_gpus(reference):
    assert reference[0].gpu_preflights == [("unix:///var/run/docker.sock", [0, 1])]


def test_container_reserves_exactly_the_server_gpus(reference):
    c = reference[0].one(CONTAINER).inputs
    # a device request with both ids, never the `gpus` string (the plugin splits it into an id + a count)
    assert c["deviceRequests"] == [{"driver": "nvidia", "deviceIds": ["0", "1"], "capabilities": ["gpu"]}]
    assert "gpus" not in c
    assert c["image"] == "sha256:" + "1" * 64  # the loaded image's id: a new image replaces the container
    assert c["restart"] == "unless-stopped"
    assert c["ports"] == [{"internal": 9997, "external": 9997}]
    assert c["mounts"] == [{"type": "bind", "source": "/data/docker_models",
                            "target": "/root/.xinference/models", "readOnly": False}]


def test_container_healthcheck_needs_no_curl_and_up_waits_for_it(reference):
    c = reference[0].one(CONTAINER).inputs
    hc = c["healthcheck"]
    assert hc["tests"][:2] == ["CMD", "python3"] and "/status" in hc["tests"][3]
    assert (hc["interval"], hc["timeout"], hc["retries"], hc["startPeriod"]) == ("30s", "10s", 5, "2m0s")
    assert c["wait"] is True and c["waitTimeout"] == 600


def test_container_env_is_offline(reference):
    env = dict(e.split("=", 1) for e in reference[0].one(CONTAINER).inputs["envs"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["XINFERENCE_AUTH_ADVANCED"] == "0"
    # gpu-node-1's audio models install packages: virtualenvs on, from the carried wheels only
    assert env["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "1" and env["XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL"] == "1"
    assert env["XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS"] == "/root/.xinference/models/_engine_packages"
    assert env["PIP_CONFIG_FILE"] == "/root/.xinference/models/_engine_packages/pip.conf" and env["UV_OFFLINE"] == "1"


def test_models_that_install_packages_launch_with_the_carried_wheels(reference):
    models = reference[0].models()
    wheels = ["/root/.xinference/models/_engine_packages/wheels"]
    for uid in ("CosyVoice-300M", "SenseVoiceSmall", "bce-embedding-base_v1", "bce-reranker-base_v1"):
        extra = models[uid].inputs["extra"]
        assert extra["enable_virtual_env"] is True and extra["virtual_env_find_links"] == wheels, uid
    for uid in ("bce-embedding-base_v1", "bce-reranker-base_v1"):  # no engine in the stack: Xinference's default
        assert models[uid].inputs["model_engine"] == "sentence_transformers", uid


def test_container_logs_rotate_and_are_labelled(reference):
    c = reference[0].one(CONTAINER).inputs
    assert c["logDriver"] == "json-file" and c["logOpts"] == {"max-size": "100m", "max-file": "5"}
    assert {"label": "managed-by", "value": "xinference-offline"} in c["labels"]
    assert {"label": "xinference-offline/stack", "value": "gpu-node-1"} in c["labels"]
    assert c["shmSize"] == 8192


def test_every_model_takes_the_container_id(reference):
    mocks, _ = reference
    container_id = mocks.one(CONTAINER).name + "-id"
    for uid, model in mocks.models().items():
        assert model.inputs["container_id"] == container_id, uid
        assert model.inputs["endpoint"] == "http://127.0.0.1:9997"


def test_model_inputs_follow_the_reference_job(reference):
    models = reference[0].models()
    assert {uid: (m.inputs["model_type"], m.inputs["gpu_idx"], m.inputs["model_path"]) for uid, m in models.items()} == {
        "bce-embedding-base_v1": ("embedding", [0], "/root/.xinference/models/bce-embedding-base_v1"),
        "bce-reranker-base_v1": ("rerank", [0], "/root/.xinference/models/bce-reranker-base_v1"),
        "CosyVoice-300M": ("audio", [0], "/root/.xinference/models/CosyVoice-300M"),
        "SenseVoiceSmall": ("audio", [1], "/root/.xinference/models/SenseVoiceSmall"),
    }
    assert models["SenseVoiceSmall"].inputs["extra"] == {
        "vad_model": "/root/.xinference/models/fsmn-vad", "enable_virtual_env": True,
        "virtual_env_find_links": ["/root/.xinference/models/_engine_packages/wheels"]}


def test_exports(reference):
    mocks, exports = reference
    assert exports["endpoint"] == "http://127.0.0.1:9997"
    assert exports["container_id"] == mocks.one(CONTAINER).name + "-id"
    assert exports["models"][3] == {"uid": "SenseVoiceSmall", "type": "audio", "host_gpus": [1], "gpu_idx": [1]}


def test_disabled_model_creates_no_resource():
    models = reference_models()
    models[2]["enabled"] = False
    mocks, exports = run_program(docker_stack(models=models))
    assert sorted(mocks.models()) == ["SenseVoiceSmall", "bce-embedding-base_v1", "bce-reranker-base_v1"]
    assert [row["uid"] for row in exports["models"]] == ["bce-embedding-base_v1", "bce-reranker-base_v1",
                                                         "SenseVoiceSmall"]


SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/home/ops/kh",
               "-i", "/home/ops/.ssh/id_ed25519", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"]


def test_remote_host_gets_its_own_provider_and_remapped_gpus():
    models = [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [3], "path": "emb"}]
    docker = {"host": "ssh://ops@gpu-node-2:2222", "ssh_opts": ["-i", "/home/ops/.ssh/id_ed25519",
                                                               "-o", "ConnectTimeout=5"],
              "known_hosts": "/home/ops/kh"}
    mocks, exports = run_program(docker_stack(gpus=[2, 3], models=models, docker=docker))
    provider = mocks.one("pulumi:providers:docker")
    assert provider.inputs["host"] == "ssh://ops@gpu-node-2:2222"
    assert json.loads(provider.inputs["sshOpts"]) == SSH_OPTIONS  # one ssh configuration ...
    assert mocks.one(CONTAINER).inputs["deviceRequests"] == [{"driver": "nvidia", "deviceIds": ["2", "3"],
                                                              "capabilities": ["gpu"]}]
    assert mocks.models()["emb"].inputs["gpu_idx"] == [1]
    load = mocks.resources["xinference-image-load-on-gpu-node-2"].inputs  # preview: "load on gpu-node-2"
    login = ["-l", "ops", "-p", "2222", "--", "gpu-node-2"]
    assert f"{shlex.join(['ssh', *SSH_OPTIONS, *login, 'docker', 'load'])} < " in load["create"]  # ... for the load
    assert "environment" not in load or not load["environment"]
    assert mocks.models()["emb"].inputs["docker_ssh"] == ["ssh", *SSH_OPTIONS, *login]  # ... and the provider's read
    assert exports["endpoint"] == "http://gpu-node-2:9997"


@pytest.mark.parametrize("ssh_opts, message", [
    (["-p", "2222"], "`-p 2222` is not an option this tool passes on"),
    (["-o", "ProxyCommand=nc %h %p"], "ProxyCommand is not taken here"),
    (["-o", "StrictHostKeyChecking=maybe"], "StrictHostKeyChecking=maybe: write yes, accept-new or no"),
    (["-o"], "`-o` needs a value after it"),
    (["-i", "relative/key"], "must be an absolute path"),
])
def test_ssh_options_that_would_split_the_clients_are_refused_by_name(ssh_opts, message):
    with pytest.raises(ConfigError) as caught:
        load_stack_config({f"{NS}:mode": "docker", f"{NS}:image": {"name": "x/y:1"},
                           f"{NS}:docker": {"host": "ssh://ops@gpu-node-2", "ssh_opts": ssh_opts}})
    assert any(message in p.message and p.path.startswith("docker.") for p in caught.value.problems), \
        caught.value.report()


def test_a_key_named_twice_differently_is_refused():
    with pytest.raises(ConfigError) as caught:
        load_stack_config({f"{NS}:mode": "docker", f"{NS}:image": {"name": "x/y:1"},
                           f"{NS}:docker": {"host": "ssh://ops@gpu-node-2", "ssh_key": "/a/key",
                                            "ssh_opts": ["-i", "/b/key"]}})
    assert [p.path for p in caught.value.problems] == ["docker.ssh_key"]
    assert "differs from `-i /b/key` in ssh_opts" in caught.value.report()


def test_preview_warns_when_another_stack_file_takes_this_hosts_container_port_or_gpu(monkeypatch):
    # this stack (gpu-node-1) aimed at gpu-node-2's docker host, whose stack file sits in stacks/
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warnings.append(msg))
    models = [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "gpus": [3], "path": "emb"}]
    run_program(docker_stack(gpus=[3], models=models, docker={"host": "ssh://ops@gpu-node-2"}))
    assert sorted(w.split(" is taken")[0] for w in warnings) == [
        "gpu-node-2: GPU 3", "gpu-node-2: container xinference", "gpu-node-2: port 9997"]
    assert all("stacks gpu-node-1, gpu-node-2" in w and "fix: give each stack its own docker.host" in w
               for w in warnings)
    warnings.clear()
    run_program(docker_stack(gpus=[3], models=models, docker={"host": "ssh://ops@gpu-node-3"}))
    assert warnings == []


def test_the_shipped_stacks_take_nothing_twice():
    sources = [LoadedStack(stack_name_of(p), from_stack_file(p), p)
               for p in sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))]
    assert len(sources) >= 4 and stack_clashes(sources) == []


def test_existing_mode_manages_no_container():
    cfg = {"mode": "existing", "endpoint": "http://127.0.0.1:19997",
           "models": [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "path": "/srv/models/emb"}]}
    mocks, exports = run_program(cfg)
    assert not mocks.of_type(CONTAINER) and not mocks.of_type(ENGINE_IMAGE)
    model = mocks.models()["emb"]
    assert model.inputs["endpoint"] == "http://127.0.0.1:19997" and model.inputs.get("container_id") is None
    assert exports["container_id"] is None


def test_bad_config_fails_the_program_with_every_problem():
    models = reference_models()
    models[0]["gpus"] = [4]
    with pytest.raises(pulumi.RunError) as info:
        run_program(docker_stack(models=models, container={"port": 0}))
    text = str(info.value)
    assert "2 problems" in text and "models[0].gpus = [4]" in text and "container.port = 0" in text


def test_api_key_must_be_a_secret():
    with pytest.raises(pulumi.RunError, match="api_key = '<plain text>'"):
        run_program(docker_stack(auth=True, api_key="s3cret"))
    mocks, _ = run_program(docker_stack(auth=True, api_key="s3cret"), secret_keys=["api_key"])
    for resource in mocks.resources.values():
        assert "s3cret" not in json.dumps(resource.inputs, default=str), resource.name
