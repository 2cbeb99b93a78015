"""components/docker_cli.py against the real engine: does a container exist, asked with no shell."""

from __future__ import annotations

import uuid

import pytest

from components.docker_cli import container_exists, container_running, empty_image_tar
from tests.docker_engines import docker, require_main_engine
from tests.remote_engine import busybox_image

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


def test_container_running_is_false_for_a_created_a_stopped_and_a_removed_container(tmp_path):
    host = require_main_engine()
    image = busybox_image()
    docker(host, "load", "-q", "-i", str(image.path))
    container = docker(host, "create", "--label", "managed-by=xinference-offline-tests", image.ref
                       ).stdout.decode().strip()
    try:
        assert container_running(host, container) is False  # created, never started
        docker(host, "start", container)
        assert container_running(host, container) is True
        docker(host, "stop", "-t", "1", container)
        assert container_running(host, container) is False  # exists, not running: its models are gone
        docker(host, "rm", "-f", container)
        assert container_running(host, container) is False
        assert container_running(f"unix://{tmp_path}/no-engine.sock", container) is None
    finally:
        docker(host, "rm", "-f", container, check=False)
