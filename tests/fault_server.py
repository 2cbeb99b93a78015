"""A tiny local stand-in for the parts of Xinference's REST API the provider uses, with fault injection.

It exists for the faults a real server will not produce on demand: a 500, a hang past the
client's read timeout, a connection dropped before or in the middle of a response, an auth
token that expires, a server without the autostart API. Its answers copy the shapes and the
status codes of a real Xinference 4.1.0 (400 "Model not found in the model list", 503 while
loading, ...). The lifecycle itself is tested against the real server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlparse

PREFIX = "[address=127.0.0.1:1, pid=1] "


class FakeXinference:
    def __init__(self, *, load_seconds: float = 0.3, autostart_api: bool = True,
                 users: Optional[dict[str, str]] = None, port: int = 0, keep_alive: bool = False):
        self.load_seconds = load_seconds
        self.autostart_api = autostart_api
        self.users = users  # None: auth off; else username -> password, and a token per login
        self.tokens: set[str] = set()
        self.models: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.autostart: dict[str, dict[str, Any]] = {}
        self.faults: dict[tuple[str, str], list[tuple]] = defaultdict(list)
        self.log: list[tuple[str, str, dict, Any]] = []
        self.keep_alive = keep_alive  # True: keep every connection open, even one the client asked to close
        self.connections = 0  # TCP connections accepted
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "FakeXinference":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, method: str, path: str, *actions: tuple) -> None:
        """Queue faults for the next requests to METHOD PATH (exact path, no query):
        ("status", code, detail), ("hang", seconds), ("drop",) before any answer,
        ("truncate",) after the request was processed (the answer is cut)."""
        with self.lock:
            self.faults[(method, path)].extend(actions)

    def calls(self, method: str, path: str) -> int:
        return sum(1 for m, p, _, _ in self.log if m == method and p == path)

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # --- behaviour ------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        now = time.monotonic()
        if path == "/status":
            return 200, {"uptime": 1, "workers": {}}
        if path == "/token" and method == "POST":
            if self.users and self.users.get(body.get("username")) == body.get("password"):
                token = f"tok-{len(self.tokens)}-{time.monotonic_ns()}"
                self.tokens.add(token)
                return 200, {"access_token": token, "token_type": "bearer"}
            return 401, {"detail": "Incorrect username or password"}
        if path == "/v1/models" and method == "POST":
            uid = body.get("model_uid")
            with self.lock:
                if uid in self.models:
                    return 400, {"detail": f"{PREFIX}Model is already in the model list, uid: {uid}"}
                self.models[uid] = {"payload": body, "ready_at": now + self.load_seconds}
            return 200, {"model_uid": uid}
        if path == "/v1/models" and method == "GET":
            return 200, {"object": "list", "data": [{"id": uid, **self.describe(uid)} for uid in self.models]}
        if path == "/v1/models/instances":
            uid = (query.get("model_uid") or [None])[0]
            if uid in self.models:
                status = "READY" if now >= self.models[uid]["ready_at"] else "CREATING"
                return 200, [{"model_uid": uid, "status": status, "replica_statuses": []}]
            if uid in self.errors:
                return 200, [{"model_uid": uid, "status": "ERROR",
                              "replica_statuses": [{"error_message": self.errors[uid]}]}]
            return 200, []
        if path.startswith("/v1/autostart/models"):
            if not self.autostart_api:
                return 404, {"detail": "Not Found"}
            if method == "GET":
                return 200, {"models": list(self.autostart.values())}
            if method == "POST":
                self.autostart[body["launch"]["model_uid"]] = body
                return 200, {"models": list(self.autostart.values())}
            if method == "DELETE":
                self.autostart.pop(path.rsplit("/", 1)[1], None)
                return 200, {"models": []}
        if path.startswith("/v1/models/"):
            parts = path.split("/")
            uid = parts[3]
            tail = parts[4] if len(parts) > 4 else ""
            model = self.models.get(uid)
            if tail == "progress":
                return 200, {"progress": 0.5 if model else 0.0, "stage": "loading" if model else "pending"}
            if tail == "cancel" and method == "POST":
                with self.lock:
                    if model and now < model["ready_at"]:
                        del self.models[uid]
                        self.errors[uid] = ""
                        return 200, None
                return 500, {"detail": f"{PREFIX}Model {uid} has not been launched yet"}
            if method == "GET":
                if model is None:
                    return 400, {"detail": f"{PREFIX}Model not found in the model list, uid: {uid}"}
                if now < model["ready_at"]:
                    return 503, {"detail": f"Model is loading, please retry later: {PREFIX}Model {uid} is launching"}
                return 200, self.describe(uid)
            if method == "DELETE":
                with self.lock:
                    if model is None or now < model["ready_at"]:
                        return 400, {"detail": f"{PREFIX}Model not found in the model list, uid: {uid}"}
                    del self.models[uid]
                return 200, None
        if path in ("/v1/embeddings", "/v1/rerank") and method == "POST":
            model = self.models.get(body.get("model"))
            if model is None or now < model["ready_at"]:
                return 400, {"detail": f"{PREFIX}Model not found in the model list, uid: {body.get('model')}"}
            if path == "/v1/embeddings":
                return 200, {"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2, 0.3]}]}
            return 200, {"results": [{"index": 0, "relevance_score": 0.9}]}
        return 404, {"detail": "Not Found"}

    def describe(self, uid: str) -> dict[str, Any]:
        payload = self.models[uid]["payload"]
        return {"model_type": payload.get("model_type"), "model_name": payload.get("model_name"),
                "model_engine": payload.get("model_engine") or "sentence_transformers", "address": "127.0.0.1:1",
                "accelerators": [str(g) for g in payload.get("gpu_idx") or []], "replica": payload.get("replica", 1),
                "quantization": "none", "model_format": "pytorch"}


def _handler(fake: FakeXinference):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with fake.lock:
                fake.connections += 1

        def _serve(self, method: str) -> None:
            parsed = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            fake.log.append((method, parsed.path, dict(self.headers), body))
            if fake.keep_alive:
                self.close_connection = False
            with fake.lock:
                queue = fake.faults.get((method, parsed.path))
                action = queue.pop(0) if queue else None
            if action and action[0] == "hang":
                time.sleep(action[1])
                self._close()
                return
            if action and action[0] == "drop":
                self._close()
                return
            if action and action[0] == "status":
                self._send(action[1], {"detail": action[2]})
                return
            if fake.users is not None and parsed.path not in ("/status", "/token"):
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or auth[7:] not in fake.tokens:
                    self._send(401, {"detail": "Could not validate credentials"})
                    return
            status, answer = fake.handle(method, parsed.path, parse_qs(parsed.query), body)
            if action and action[0] == "truncate":
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data) + 100))
                self.end_headers()
                self.wfile.write(data[: max(1, len(data) // 2)])
                self.wfile.flush()
                self._close()
                return
            self._send(status, answer)

        def _send(self, status: int, answer: Any) -> None:
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if self.close_connection:
                    # As uvicorn (h11) does: a request that asked for `Connection: close` gets it
                    # echoed, so the client never reuses a socket this server is closing.
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass

        def _close(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_DELETE(self):
            self._serve("DELETE")

    return Handler
