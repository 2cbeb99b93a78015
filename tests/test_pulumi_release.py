"""`build`'s download of the Pulumi CLI and plugins (issue 12, class 10): every archive checked
against the release's published checksums before it is unpacked, retries on failures that
may pass, and a cache that never holds half a toolchain.

A mirror in get.pulumi.com's layout on disk (file://) and, for the network faults, the same
files served over HTTP on 127.0.0.1 by a small server that drops, cuts short or 503s a
request on demand (faults a real release server will not produce when asked).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bundle.build import pulumi_release
from bundle.format.errors import FetchError
from bundle.build.pulumi_release import checksum_urls, download_toolchain, pulumi_versions, release_urls
from tests.bundle_kit import make_mirror


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(pulumi_release, "RETRY_DELAYS", (0.0, 0.0))


def local(url: str) -> Path:
    return Path(url[len("file://"):])


def cache_holds_no_toolchain(cache: Path) -> bool:
    pulumi = cache / "pulumi"
    return not pulumi.exists() or not any(pulumi.iterdir())


def test_a_mirror_with_checksums_gives_a_complete_cached_toolchain(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    toolchain = download_toolchain(tmp_path / "cache", f"file://{mirror}")
    assert (toolchain.bin_dir / "pulumi").read_text() == "#!/bin/sh\necho pulumi\n"
    assert (toolchain.plugins_dir / f"resource-docker-v{pulumi_versions()['docker']}" / "pulumi-resource-docker").is_file()
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache" / "pulumi").iterdir())  # no temp dir left


def test_an_archive_that_does_not_match_its_published_checksum_is_not_unpacked(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    archive = local(release_urls(pulumi_versions(), f"file://{mirror}")["docker"])
    published = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.write_bytes(archive.read_bytes() + b"\0")  # damaged on the mirror after it was published
    with pytest.raises(FetchError) as caught:
        download_toolchain(tmp_path / "cache", f"file://{mirror}")
    message = str(caught.value)
    assert f"{archive.name}: sha256 {hashlib.sha256(archive.read_bytes()).hexdigest()} is not the published " \
           f"{published}" in message
    assert "nothing was unpacked" in message and "--pulumi-dir" in message
    assert cache_holds_no_toolchain(tmp_path / "cache")  # the CLI that did pass is not kept as a toolchain


def test_a_release_without_a_checksums_file_is_refused_not_trusted(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    sums = local(checksum_urls(pulumi_versions(), f"file://{mirror}")["cli"])
    sums.unlink()
    with pytest.raises(FetchError) as caught:
        download_toolchain(tmp_path / "cache", f"file://{mirror}")
    assert f"cannot download file://{sums}" in str(caught.value)
    assert "so it is not downloaded" in str(caught.value) and "--pulumi-checksums FILE" in str(caught.value)
    assert cache_holds_no_toolchain(tmp_path / "cache")


def test_the_operators_checksums_file_stands_in_for_a_missing_published_one(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    versions = pulumi_versions()
    mine = tmp_path / "SHA256SUMS"
    lines = []
    for _name, url in checksum_urls(versions, f"file://{mirror}").items():
        lines.append(local(url).read_text())
        local(url).unlink()
    mine.write_text("# copied from the release pages\n" + "".join(lines))
    toolchain = download_toolchain(tmp_path / "cache", f"file://{mirror}", checksums_file=mine)
    assert (toolchain.bin_dir / "pulumi").is_file()


def test_a_checksums_file_that_lists_no_line_for_the_archive_is_refused(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    sums = local(checksum_urls(pulumi_versions(), f"file://{mirror}")["command"])
    sums.write_text(f"{'a' * 64}  some-other-file.tar.gz\n")
    with pytest.raises(FetchError) as caught:
        download_toolchain(tmp_path / "cache", f"file://{mirror}")
    assert f"lists no pulumi-resource-command-v{pulumi_versions()['command']}" in str(caught.value)


def test_a_malformed_checksums_line_is_named_by_its_number(tmp_path):
    mirror = make_mirror(tmp_path / "mirror")
    mine = tmp_path / "SHA256SUMS"
    mine.write_text(f"{'b' * 64}  ok.tar.gz\nnot a checksum line\n")
    with pytest.raises(FetchError) as caught:
        download_toolchain(tmp_path / "cache", f"file://{mirror}", checksums_file=mine)
    assert f"--pulumi-checksums {mine} line 2: 'not a checksum line' is not `<sha256>  <file name>`" in str(caught.value)


# -- network faults, over HTTP on 127.0.0.1 --------------------------------------------------


class FlakyMirror:
    """Serves a directory; ``faults[path]`` is a queue of "drop" | "short" | "503" for the next requests."""

    def __init__(self, root: Path):
        self.root = root
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: Counter = Counter()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                mirror.requests[self.path] += 1
                fault = mirror.faults[self.path].pop(0) if mirror.faults[self.path] else None
                file = mirror.root / self.path.lstrip("/")
                if fault == "drop":
                    self.connection.close()
                    return
                if fault == "503":
                    self.send_error(503, "busy")
                    return
                if not file.is_file():
                    self.send_error(404, "not found")
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if fault == "short" else data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(tmp_path):
    mirror = FlakyMirror(make_mirror(tmp_path / "mirror"))
    yield mirror
    mirror.close()


def path_of(url: str, base: str) -> str:
    return url[len(base):]


def test_a_dropped_a_cut_short_and_a_busy_answer_are_retried(flaky, tmp_path):
    versions = pulumi_versions()
    urls = release_urls(versions, flaky.base)
    cli_path, docker_path = path_of(urls["cli"], flaky.base), path_of(urls["docker"], flaky.base)
    sums_path = path_of(checksum_urls(versions, flaky.base)["cli"], flaky.base)
    flaky.faults[cli_path] = ["drop", "short"]
    flaky.faults[docker_path] = ["503"]
    flaky.faults[sums_path] = ["drop"]
    toolchain = download_toolchain(tmp_path / "cache", flaky.base)
    assert (toolchain.bin_dir / "pulumi").read_text() == "#!/bin/sh\necho pulumi\n"
    assert flaky.requests[cli_path] == 3 and flaky.requests[docker_path] == 2 and flaky.requests[sums_path] == 2


def test_a_failure_that_persists_gives_up_after_three_tries_naming_the_url(flaky, tmp_path):
    cli_path = path_of(release_urls(pulumi_versions(), flaky.base)["cli"], flaky.base)
    flaky.faults[cli_path] = ["503", "503", "503"]
    with pytest.raises(FetchError) as caught:
        download_toolchain(tmp_path / "cache", flaky.base)
    assert f"cannot download {flaky.base}{cli_path} after 3 tries (HTTPError" in str(caught.value)
    assert flaky.requests[cli_path] == 3
    assert cache_holds_no_toolchain(tmp_path / "cache")


def test_a_missing_file_is_not_retried(flaky, tmp_path):
    sums_url = checksum_urls(pulumi_versions(), flaky.base)["cli"]
    local_sums = flaky.root / path_of(sums_url, flaky.base).lstrip("/")
    local_sums.unlink()
    with pytest.raises(FetchError) as caught:
        download_toolchain(tmp_path / "cache", flaky.base)
    assert f"cannot download {sums_url} (HTTP 404" in str(caught.value)
    assert flaky.requests[path_of(sums_url, flaky.base)] == 1
