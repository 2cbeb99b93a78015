"""A custom model's registration against a REAL Xinference 4.1 (issue 14, item 4): register,
launch under the custom name, embed, change the family (re-register and relaunch), destroy
(terminate, then unregister). Xinference's own refusals come back with their reason."""

from __future__ import annotations

import pytest
import requests

from components.model_registration import XinferenceRegistrationProvider, covers, family_digest
from components.model_launch import ConflictError
from stackspec.custom_model import registration_body, registration_family
from tests.test_model_provider import assert_nothing_left, embed

pytestmark = pytest.mark.xinference

MINILM = {"dimensions": 384, "max_tokens": 256, "language": ["en"]}


@pytest.fixture
def registrations():
    from pulumi.dynamic import Config, ConfigureRequest

    p = XinferenceRegistrationProvider(retry_window=20.0)
    p.configure(ConfigureRequest(Config({}, "xinference-offline")))
    return p


def registration_props(server, name: str, custom=MINILM) -> dict:
    return {"endpoint": server.endpoint, "model_type": "embedding", "model_name": name,
            "family": registration_family("embedding", name, str(server.model_dir), custom)}


def registered(server, name: str) -> int:
    return requests.get(f"{server.endpoint}/v1/model_registrations/embedding/{name}", timeout=(5, 30)).status_code


def test_register_launch_embed_change_destroy(registrations, provider, model_props, uid, xinference_server, cleanup):
    server, name = xinference_server, f"site-minilm-{uid[-6:]}"
    cleanup((server.endpoint, uid))
    props = registration_props(server, name)
    assert registrations.check({}, props).failures == []
    created = registrations.create(props)
    assert created.id == f"embedding/{name}" and registered(server, name) == 200
    assert created.outs["family_digest"] == family_digest(props["family"])
    # A second create (an `up` that stopped after registering) adopts what is there.
    assert registrations.create(props).outs["family_digest"] == created.outs["family_digest"]
    assert registrations.read(created.id, created.outs).id == created.id

    model = model_props(uid, model_name=name, registration_digest=created.outs["family_digest"])
    assert provider.check({}, model).failures == []
    launched = provider.create(provider.check({}, model).inputs)
    assert launched.outs["status"] == "READY"
    assert len(embed(server.endpoint, uid)) == 384

    # A changed family: both resources are replaced (delete before replace), the model with it.
    changed = registration_props(server, name, {**MINILM, "max_tokens": 128})
    assert registrations.diff(created.id, created.outs, changed).replaces == ["family"]
    new_model = dict(model, registration_digest=family_digest(changed["family"]))
    assert provider.diff(uid, launched.outs, new_model).replaces == ["registration_digest"]
    provider.delete(uid, launched.outs)
    registrations.delete(created.id, created.outs)
    assert registered(server, name) == 400
    recreated = registrations.create(changed)
    assert requests.get(f"{server.endpoint}/v1/model_registrations/embedding/{name}",
                        timeout=(5, 30)).json()["max_tokens"] == 128
    relaunched = provider.create(provider.check({}, new_model).inputs)
    assert len(embed(server.endpoint, uid)) == 384

    # Destroy: the model first (it depends on the registration), then the registration.
    provider.delete(uid, relaunched.outs)
    assert_nothing_left(server, uid)
    registrations.delete(recreated.id, recreated.outs)
    assert registered(server, name) == 400
    assert registrations.read(recreated.id, recreated.outs).id is None  # gone: refresh records it
    registrations.delete(recreated.id, recreated.outs)  # not found is success


def test_another_family_under_the_name_is_a_conflict_and_is_left_alone(registrations, xinference_server, uid):
    server, name = xinference_server, f"theirs-{uid[-6:]}"
    theirs = registration_props(server, name, {**MINILM, "max_tokens": 64})
    registrations.create(theirs)
    try:
        with pytest.raises(ConflictError, match=f"a custom embedding model named '{name}' is already registered"):
            registrations.create(registration_props(server, name))
        assert requests.get(f"{server.endpoint}/v1/model_registrations/embedding/{name}",
                            timeout=(5, 30)).json()["max_tokens"] == 64
    finally:
        registrations.delete(f"embedding/{name}", theirs)


def test_a_built_in_name_is_refused_by_the_provider_too(registrations, xinference_server):
    # What plan refuses (tests/test_catalog_rules.py), the provider refuses before it posts anything.
    props = registration_props(xinference_server, "bge-small-en-v1.5")
    with pytest.raises(ConflictError, match="'bge-small-en-v1.5' is a built-in embedding model of the Xinference"):
        registrations.create(props)
    # And the server itself would refuse it, with its reason.
    response = requests.post(f"{xinference_server.endpoint}/v1/model_registrations/embedding",
                             json=registration_body(props["family"]), timeout=(5, 30))
    assert response.status_code == 400
    assert "Model bge-small-en-v1.5 already registered" in response.json()["detail"]


def test_what_xinference_reports_covers_what_was_registered(registrations, xinference_server, uid):
    server, name = xinference_server, f"cover-{uid[-6:]}"
    props = registration_props(server, name)
    registrations.create(props)
    try:
        reported = requests.get(f"{server.endpoint}/v1/model_registrations/embedding/{name}", timeout=(5, 30)).json()
        assert reported != props["family"] and covers(reported, props["family"])  # it adds its defaults
        assert not covers(reported, {**props["family"], "dimensions": 768})
    finally:
        registrations.delete(f"embedding/{name}", props)
