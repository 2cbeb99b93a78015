"""End to end through the real `pulumi` CLI (built from Go modules by tools/pulumi_toolchain.py)
against a real CPU Xinference, in `existing` mode (no Docker engine here).

preview lists the launch; up makes the model serve; a second preview is empty; a changed
launch parameter previews as a replace naming the property; a model terminated behind
Pulumi's back is found by refresh and relaunched by up; removing it from config terminates
it; destroy leaves nothing; the API key set as a secret never appears in the state file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest
import requests
import yaml

from tests.docker_site import PROGRAM_PACKAGES, copy_program_packages, free_port, running_models

FORMER_PACKAGES = ("spec",)  # an older main's program (tests/test_state_compat.py) has these instead

ROOT = Path(__file__).resolve().parent.parent
PULUMI = shutil.which("pulumi")
API_KEY = "e2e-secret-api-key-0123456789"
UID = "e2e-minilm"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(PULUMI is None, reason="no pulumi CLI on PATH: build it with tools/pulumi_toolchain.py "
                                              "(needs Go; tools/test.sh does it)"),
]


@pytest.fixture(scope="module")
def xinference(tmp_path_factory):
    pytest.importorskip("xinference", reason="xinference is not installed (pip install -r requirements-test.txt)")
    from tools.local_xinference import LocalXinference

    server = LocalXinference(tmp_path_factory.mktemp("xinference"), port=free_port())
    server.start(timeout=300)
    yield server
    server.stop()


class Project:
    """A copy of this project in a temp dir with its own file backend and an `e2e` stack."""

    def __init__(self, root: Path, endpoint: str, models_dir: Path, program: Optional[Path] = None):
        self.root = root
        self.use_program(program)
        (root / "venv").symlink_to(ROOT / "venv")
        project = yaml.safe_load((root / "Pulumi.yaml").read_text())
        project["backend"] = {"url": f"file://{root / 'state'}"}
        (root / "Pulumi.yaml").write_text(yaml.safe_dump(project))
        (root / "state").mkdir()
        (root / "stacks").mkdir()
        self.endpoint, self.models_dir = endpoint, models_dir
        self.env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": "e2e-passphrase", "PULUMI_SKIP_UPDATE_CHECK": "1",
                    "PULUMI_DIY_BACKEND_NO_CHECKPOINT_LOCK": "", "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "1"}

    def use_program(self, program: Optional[Path] = None) -> None:
        """The program's code from ``program`` (a checkout of another commit), default this checkout;
        the stack files, the state and the backend setting stay."""
        source = program or ROOT
        pulumi_yaml = self.root / "Pulumi.yaml"
        backend = yaml.safe_load(pulumi_yaml.read_text())["backend"] if pulumi_yaml.exists() else None
        for name in ("Pulumi.yaml", "__main__.py", "requirements.txt"):
            shutil.copy(source / name, self.root / name)
        packages = (*PROGRAM_PACKAGES, *FORMER_PACKAGES)
        for package in packages:
            shutil.rmtree(self.root / package, ignore_errors=True)
        copy_program_packages(self.root, tuple(p for p in packages if (source / p).is_dir()), source)
        if backend is not None:
            project = yaml.safe_load(pulumi_yaml.read_text())
            project["backend"] = backend
            pulumi_yaml.write_text(yaml.safe_dump(project))

    def write_models(self, models: list[dict]) -> None:
        stack_file = self.root / "stacks" / "Pulumi.e2e.yaml"
        existing = yaml.safe_load(stack_file.read_text()) if stack_file.exists() else {}
        config = existing.get("config", {})
        config.update({"xinference-offline:mode": "existing", "xinference-offline:endpoint": self.endpoint,
                       "xinference-offline:models_dir": str(self.models_dir),
                       "xinference-offline:models": models})
        existing["config"] = config
        stack_file.write_text(yaml.safe_dump(existing))

    def pulumi(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([PULUMI, *args, "--stack", "e2e", "--non-interactive"], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def state_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.root / "state").rglob("*.json"))


def model_entry(**overrides) -> dict:
    entry = {"uid": UID, "name": "bge-small-en-v1.5", "type": "embedding", "path": "all-MiniLM-L6-v2",
             "launch_timeout_s": 300}
    entry.update(overrides)
    return entry


@pytest.fixture(scope="module")
def project(tmp_path_factory, xinference):
    root = tmp_path_factory.mktemp("project")
    proj = Project(root, xinference.endpoint, xinference.models_dir)
    proj.write_models([model_entry()])
    proc = subprocess.run([PULUMI, "stack", "init", "e2e", "--non-interactive"], cwd=root, env=proj.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proj.pulumi("config", "set", "--secret", "xinference-offline:api_key", API_KEY)
    yield proj
    proj.pulumi("destroy", "--yes", check=False)


def test_lifecycle_through_the_cli(project, xinference):
    endpoint = xinference.endpoint

    preview = project.pulumi("preview", "--diff")
    assert f"xinference-{UID}" in preview.stdout and "create" in preview.stdout

    project.pulumi("up", "--yes", "--skip-preview")
    assert UID in running_models(endpoint)
    answer = requests.post(f"{endpoint}/v1/embeddings", json={"model": UID, "input": "offline"}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
    outputs = json.loads(project.pulumi("stack", "output", "--json").stdout)
    assert outputs["endpoint"] == endpoint and outputs["models"][0]["uid"] == UID

    project.pulumi("preview", "--expect-no-changes")

    # A changed launch parameter is a replace, and preview names the property.
    project.write_models([model_entry(engine="sentence_transformers")])
    changed = project.pulumi("preview", "--diff")
    assert "model_engine" in changed.stdout and "replace" in changed.stdout
    project.write_models([model_entry()])

    # Drift: terminated behind Pulumi's back; refresh records it, up brings it back.
    requests.delete(f"{endpoint}/v1/models/{UID}", timeout=60)
    assert UID not in running_models(endpoint)
    project.pulumi("refresh", "--yes", "--skip-preview")
    project.pulumi("up", "--yes", "--skip-preview")
    assert UID in running_models(endpoint)

    # The secret API key is encrypted in the state, never plain text.
    state = project.state_text()
    assert state and API_KEY not in state

    # Removing the model from the stack config terminates it.
    project.write_models([])
    project.pulumi("up", "--yes", "--skip-preview")
    assert UID not in running_models(endpoint)

    project.write_models([model_entry()])
    project.pulumi("up", "--yes", "--skip-preview")
    assert UID in running_models(endpoint)
    project.pulumi("destroy", "--yes", "--skip-preview")
    assert UID not in running_models(endpoint)


def registered_families(endpoint: str) -> dict:
    rows = requests.get(f"{endpoint}/v1/model_registrations/embedding", params={"detailed": "true"}, timeout=60).json()
    return {row["model_name"]: row for row in rows if not row.get("is_builtin")}


def test_a_custom_model_through_the_cli_registers_launches_changes_and_unregisters(project, xinference):
    endpoint, uid, name = xinference.endpoint, "site-minilm", "site-MiniLM-L6-v2"
    custom = {"dimensions": 384, "max_tokens": 256, "language": ["en"]}
    project.write_models([model_entry(uid=uid, name=name, custom=custom)])
    try:
        preview = project.pulumi("preview", "--diff")
        assert f"xinference-{uid}-registration" in preview.stdout
        project.pulumi("up", "--yes", "--skip-preview")
        assert registered_families(endpoint)[name]["max_tokens"] == 256
        assert requests.get(f"{endpoint}/v1/models/{uid}", timeout=60).json()["model_name"] == name
        answer = requests.post(f"{endpoint}/v1/embeddings", json={"model": uid, "input": "offline"}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 384
        project.pulumi("preview", "--expect-no-changes")

        # The family diffs like any input: a change re-registers and relaunches.
        project.write_models([model_entry(uid=uid, name=name, custom={**custom, "max_tokens": 128})])
        changed = project.pulumi("preview", "--diff")
        assert "family" in changed.stdout and "registration_digest" in changed.stdout
        project.pulumi("up", "--yes", "--skip-preview")
        assert registered_families(endpoint)[name]["max_tokens"] == 128
        assert uid in running_models(endpoint)
        project.pulumi("preview", "--expect-no-changes")
    finally:
        project.pulumi("destroy", "--yes", "--skip-preview")
        project.write_models([model_entry()])
    assert uid not in running_models(endpoint) and name not in registered_families(endpoint)


def test_bad_config_fails_preview_with_the_problems(project):
    project.write_models([model_entry(gpus=[3], typo=1)])
    try:
        proc = project.pulumi("preview", check=False)
    finally:
        project.write_models([model_entry()])
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "models[0].typo = 1: unknown key" in text and "Traceback" not in text


def test_automation_api_preview(tmp_path, xinference):
    auto = pytest.importorskip("pulumi.automation")
    proj = Project(tmp_path, xinference.endpoint, xinference.models_dir)
    proj.write_models([model_entry(uid="auto-minilm")])
    stack = auto.create_or_select_stack(
        stack_name="e2e", work_dir=str(tmp_path),
        opts=auto.LocalWorkspaceOptions(env_vars={k: v for k, v in proj.env.items() if k.startswith("PULUMI_")}),
    )
    result = stack.preview()
    assert result.change_summary.get("create", 0) >= 2  # the stack, the deployment, its model volume, the model
    assert "auto-minilm" not in running_models(xinference.endpoint)  # a preview launches nothing
