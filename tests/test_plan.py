"""`python -m bundle plan`: main(argv) called directly, and once as a real subprocess."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import yaml

from bundle.cli import main
from tests.stack_configs import docker_stack, namespaced, reference_models

ROOT = Path(__file__).resolve().parent.parent


def run_plan(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["plan", *argv], out=out)
    return code, out.getvalue()


def test_plan_prints_the_reference_deployment():
    code, text = run_plan("--stack", "gpu-node-1", "--stacks-dir", str(ROOT / "stacks"))
    assert code == 0
    lines = [line.split() for line in text.splitlines()]
    assert ["bce-embedding-base_v1", "embedding", "0", "0", "2", "/root/.xinference/models/bce-embedding-base_v1"] in lines
    assert ["SenseVoiceSmall", "audio", "1", "1", "3", "/root/.xinference/models/SenseVoiceSmall"] in lines
    assert ["0", "CosyVoice-300M", "6", "declared"] in lines
    assert ["0", "=", "total", "10", "of", "24,", "14.0", "free"] in lines
    assert "GPUs device=0,1" in text and "restart unless-stopped" in text
    assert "images/xprobe_xinference_v4.1.0.tar" in text and "models/fsmn-vad/" in text
    assert "program/" in text and "the Pulumi program and the bundle tool" in text


def test_plan_lists_each_model_s_engine_packages():
    code, text = run_plan("--stack", "gpu-node-1", "--stacks-dir", str(ROOT / "stacks"))
    assert code == 0
    section = text.split("Engine packages", 1)[1].split("Offline bundle must carry", 1)[0]
    lines = [line.split() for line in section.splitlines()]
    assert ["SenseVoiceSmall", "carry", "(1):", "funasr==1.2.7"] in lines
    assert ["left", "to", "the", "image:", "torch", "torchaudio", "numpy"] in lines
    assert ["CosyVoice-300M", "carry", "(14):", "librosa", "tiktoken", "lightning>=2.0.0", "hydra-core>=1.3.2", "inflect",
            "conformer"] in lines
    # no engine named: planned on Xinference's default, which the official image does not carry
    assert ["bce-embedding-base_v1", "carry", "(5):", "sentence_transformers", "einops", "transformers>=4.53.3",
            "accelerate>=0.28.0"] in lines
    assert ["engine:", "sentence_transformers", "(none", "named:", "Xinference's", "default", "for", "rerank,",
            "named", "at"] in lines
    assert "Engine packages on image xprobe/xinference:v4.1.0" in text
    assert "models/_engine_packages/" in text and "XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL=1" in text
    code, local = run_plan("--stack", "local-docker", "--stacks-dir", str(ROOT / "stacks"))
    assert "none: no model's virtualenv installs anything" in local and "XINFERENCE_ENABLE_VIRTUAL_ENV=0" in local
    assert "models/_engine_packages/" not in local


def test_plan_shows_container_indices_of_a_remapped_server():
    code, text = run_plan("--config", str(ROOT / "stacks" / "Pulumi.gpu-node-2.yaml"))
    assert code == 0
    assert ["qwen2.5-instruct-7b", "LLM", "2,3", "0,1", "40", "/root/.xinference/models/Qwen2.5-7B-Instruct"] in [
        line.split() for line in text.splitlines()]
    assert "disabled (terminated if running): SenseVoiceSmall" in text


def test_plan_rejects_a_bad_config_with_every_problem(tmp_path, capsys):
    models = reference_models()
    models[0]["gpus"] = [9]
    models[1]["typ"] = "rerank"
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump({"config": namespaced(docker_stack(models=models))}))
    code, text = run_plan("--config", str(bad))
    err = capsys.readouterr().err
    assert code == 2 and text == ""
    assert f"{bad}: 2 problems" in err
    assert "models[1].typ = 'rerank': unknown key; fix: did you mean `type`?" in err
    assert "models[0].gpus = [9]: GPU 9 is not a GPU of this server" in err


def test_plan_of_a_missing_stack_is_a_usage_error(capsys):
    code, _ = run_plan("--stack", "nowhere", "--stacks-dir", str(ROOT / "stacks"))
    assert code == 2
    assert "stacks/Pulumi.nowhere.yaml" in capsys.readouterr().err


def test_plan_without_arguments_is_a_usage_error(capsys):
    assert main(["plan"], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "--stack NAME or --config FILE" in err and "--bundle DIR alone" in err


def test_plan_as_the_operator_runs_it():
    proc = subprocess.run([sys.executable, "-m", "bundle", "plan", "--stack", "gpu-node-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Models: 4 enabled" in proc.stdout


def test_plan_warns_when_a_stack_file_beside_it_takes_the_same_remote_gpu(tmp_path, capsys):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for name in ("node-a", "node-b"):  # node-b copied from node-a, docker.host left as it was
        cfg = docker_stack(docker={"host": "ssh://ops@10.0.0.7"}, container={"name": f"xinference-{name}",
                                                                          "port": 9997 if name == "node-a" else 9998})
        (stacks / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": namespaced(cfg)}))
    code, text = run_plan("--stack", "node-b", "--stacks-dir", str(stacks))
    err = capsys.readouterr().err
    assert code == 0 and "Stack node-b" in text
    assert err.count("warning: 10.0.0.7: GPU") == 2 and "taken by stacks node-b, node-a" in err
    assert "container" not in err and "port" not in err


def existing_stack_with_a_model_at(tmp_path: Path, path: str) -> Path:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "config.json").write_text("{}")
    stack = tmp_path / "Pulumi.ex.yaml"
    stack.write_text(yaml.safe_dump({"config": namespaced({
        "mode": "existing", "endpoint": "http://127.0.0.1:9997", "models_dir": "/data/models",
        "models": [{"uid": "emb", "name": "bge-small-en-v1.5", "type": "embedding", "path": path,
                    "source": {"hub": "local", "path": str(source)}}]})}))
    return stack


def test_a_model_outside_models_dir_of_an_existing_server_is_refused_for_a_bundle(tmp_path, capsys):
    """An existing server may read /opt/other/emb, but `install` writes only under models_dir:
    refused at plan (and at build, before anything is fetched), not at the manifest's last write."""
    stack = existing_stack_with_a_model_at(tmp_path, "/opt/other/emb")
    code, text = run_plan("--config", str(stack))
    err = capsys.readouterr().err
    assert code == 2 and text == ""
    assert ("models[0].path = '/opt/other/emb': is outside models_dir /data/models, where `bundle install` puts "
            "every model it carries; fix: move the model under /data/models") in err
    out = tmp_path / "out"
    code = main(["build", "--stack", "ex", "--stacks-dir", str(tmp_path), "--out", str(out), "--quiet"],
                out=io.StringIO())
    assert code == 2 and "models[0].path = '/opt/other/emb': is outside models_dir" in capsys.readouterr().err
    assert not out.exists()
    # under models_dir, written absolute, it is the same model and plans
    assert run_plan("--config", str(existing_stack_with_a_model_at(tmp_path, "/data/models/emb")))[0] == 0
