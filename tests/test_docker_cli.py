"""components/docker_cli.py against the real engine: does a container exist, asked with no shell."""

from __future__ import annotations

import uuid

import pytest

from components.docker_cli import container_exists, empty_image_tar
from tests.docker_engines import docker, require_main_engine

pytestmark = pytest.mark.docker  # the machine's real engine


def empty_image(host: str) -> str:
    name = f"xinference-offline-test/empty:{uuid.uuid4().hex[:6]}"
    docker(host, "import", "-", name, stdin=empty_image_tar())
    return name


def test_container_exists_is_true_then_false_after_removal_and_none_when_the_engine_is_away(tmp_path):
    host = require_main_engine()
    image = empty_image(host)
    try:
        container = docker(host, "create", image, "/none").stdout.decode().strip()
        assert container_exists(host, container) is True
        docker(host, "rm", "-f", container)
        assert container_exists(host, container) is False
        assert container_exists(f"unix://{tmp_path}/no-engine.sock", container) is None
        assert container_exists(host, "$(touch x); x") is False  # one argv element, never a shell
    finally:
        docker(host, "rmi", image, check=False)
