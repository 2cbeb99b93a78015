"""The engine-wheel download against a package index on 127.0.0.1 that serves a wheel whose bytes
do not match the index's sha256 (seen once from PyPI's CDN on a cold CI run): pip does not retry
that, the build does (keeping what it has), and a wheel that never arrives right fails naming
pip's reason, with nothing left in the cache. (pip retries a body that breaks off by itself.)
The same index serves a newer version whose Requires-Python this machine's Python meets and the
image's does not: the resolution is made again below it."""

from __future__ import annotations

import hashlib
import html
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import pytest

from bundle.build.engine_wheels import DOWNLOAD_TRIES, resolve_model
from bundle.format.errors import FetchError
from bundle.build.image_env import ImageEnv
from bundle.build.stub_wheel import stub_wheel_bytes
from stackspec.engine_packages import ModelPackages

WHEEL = "tinypkg-1.0-py3-none-any.whl"


class FlakyIndex:
    """A PEP 503 simple index of tinypkg 1.0, whose GETs number ``damaged`` answer other bytes, and of
    ``newer``: version -> its Requires-Python."""

    def __init__(self, damaged: set[int], newer: Optional[dict[str, str]] = None):
        self.data = stub_wheel_bytes("tinypkg", "1.0")  # a small valid wheel
        self.files = {f"tinypkg-{v}-py3-none-any.whl": (stub_wheel_bytes("tinypkg", v, requires_python=p), p)
                      for v, p in (newer or {}).items()}
        self.damaged, self.gets = damaged, 0
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/simple/tinypkg":
                    digest = hashlib.sha256(index.data).hexdigest()
                    links = [f'<a href="/files/{WHEEL}#sha256={digest}">{WHEEL}</a>']
                    links += [f'<a href="/files/{name}#sha256={hashlib.sha256(data).hexdigest()}" '
                              f'data-requires-python="{html.escape(requires)}">{name}</a>'
                              for name, (data, requires) in index.files.items()]
                    self._answer("\n".join(links).encode(), "text/html")
                elif self.path[len("/files/"):] in index.files:
                    self._answer(index.files[self.path[len("/files/"):]][0], "application/octet-stream")
                elif self.path == f"/files/{WHEEL}":
                    index.gets += 1
                    if index.gets in index.damaged:  # whole, but one byte differs
                        self._answer(index.data[:-1] + bytes([index.data[-1] ^ 0xFF]), "application/octet-stream")
                        return
                    self._answer(index.data, "application/octet-stream")
                else:
                    self.send_error(404)

            def _answer(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(monkeypatch):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the stand-in image's Python is 3.11: engine packages resolve with the image's Python")
    started: list[FlakyIndex] = []

    def start(damaged: set[int], newer: Optional[dict[str, str]] = None) -> FlakyIndex:
        index = FlakyIndex(damaged, newer)
        started.append(index)
        # this index alone, no cache: each GET reaches it (the first one is the resolution's)
        monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
        monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
        monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
        return index

    yield start
    for index in started:
        index.stop()


ENV = ImageEnv("3.11", "x86_64", "2.36", {"xinference": "4.1.0"})
PACKAGES = ModelPackages("m", None, ("tinypkg==1.0",), ())


def test_a_wheel_with_another_hash_is_downloaded_again(flaky, tmp_path):
    index = flaky(damaged={2})  # the download's first GET
    said: list[str] = []
    wheels = resolve_model(PACKAGES, ENV, tmp_path / "cache", said.append)
    assert (wheels.directory / WHEEL).read_bytes() == index.data
    assert index.gets == 3
    assert any(f"build: downloading m's engine wheels failed (try 1 of {DOWNLOAD_TRIES}); trying again" in line
               and "DO NOT MATCH THE HASHES" in line for line in said), said


def test_a_wheel_that_never_arrives_right_fails_with_pip_s_reason_and_caches_nothing(flaky, tmp_path):
    index = flaky(damaged=set(range(2, 2 + DOWNLOAD_TRIES)))
    with pytest.raises(FetchError) as failed:
        resolve_model(PACKAGES, ENV, tmp_path / "cache", lambda _m: None)
    assert index.gets == 1 + DOWNLOAD_TRIES
    assert "downloading m's engine wheels for Python 3.11 manylinux_2_36_x86_64: `pip download --no-deps ...` failed" \
        in str(failed.value) and "DO NOT MATCH THE HASHES" in str(failed.value), failed.value
    assert not list((tmp_path / "cache" / "engine-wheels").glob("*/*.whl"))
    assert not list((tmp_path / "cache" / "engine-wheels").glob(".*part*"))


def test_a_version_whose_requires_python_the_image_s_python_does_not_meet_is_resolved_below(flaky, tmp_path):
    # 2.0 needs a newer 3.11 than the image's (as soupsieve 4.1.4 needs >=3.11.5 and Debian 12 has 3.11.2);
    # this machine's Python is what pip judges by, so it picks 2.0 first; uv on the site would refuse it
    here = "%d.%d.%d" % sys.version_info[:3]
    flaky(damaged=set(), newer={"2.0": f">={here}"})
    image = ImageEnv("3.11", "x86_64", "2.36", {"xinference": "4.1.0"}, python_full_version="3.11.0")
    said: list[str] = []
    wheels = resolve_model(ModelPackages("m", None, ("tinypkg",), ()), image, tmp_path / "cache", said.append)
    assert sorted(wheels.files) == [WHEEL]
    # the index publishes each file's Requires-Python: one more resolution, at the newest version that fits
    assert any("m: tinypkg 2.0 need a newer Python than the image's 3.11.0: resolved anew with tinypkg<=1.0" in line
               for line in said), said
    # an image whose Python meets it gets 2.0, in a cache entry of its own
    newer = ImageEnv("3.11", "x86_64", "2.36", {"xinference": "4.1.0"}, python_full_version=here)
    assert sorted(resolve_model(ModelPackages("m", None, ("tinypkg",), ()), newer, tmp_path / "cache").files) == \
        ["tinypkg-2.0-py3-none-any.whl"]
