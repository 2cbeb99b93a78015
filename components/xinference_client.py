"""A small REST client of Xinference (4.x), as the XinferenceModel provider needs it.

Every request has a connect and a read timeout. Transient failures (connection refused
while the container starts, a dropped connection, 5xx, 503 while the server warms up) are
retried with exponential backoff until the call's deadline; 4xx answers are raised at once
with the server's own message. The credential never appears in an error's text.

Facts about Xinference 4.1.0 that shape this module (checked against a real server):

- an absent uid answers **400** "Model not found in the model list, uid: X" (not 404), to
  GET /v1/models/{uid} and to DELETE /v1/models/{uid} alike; error texts start with
  "[address=..., pid=...]", so they are matched by substring;
- GET /v1/models/{uid} answers 503 "Model is loading" while a launch is in progress;
- a launch that failed leaves no model behind, only an ERROR row in
  GET /v1/models/instances?model_uid=X with the replica's error message;
- DELETE of a model that is still loading answers 400 "not found ... uid: X-rep0" and the
  load goes on: only POST /v1/models/{uid}/cancel stops it (and cancel on a READY model
  drops it from the model list but leaves its process running, so never cancel a ready one);
- with auth on, API keys created at /v1/admin/keys may only query models and run
  inference (403 "API keys can only access model query and inference endpoints"):
  launching needs a user's access token (POST /token);
- a request on a kept-alive connection costs ~40 ms more than on a new one (delayed ACK),
  so every request asks for `Connection: close`.

An ``https://`` endpoint's certificate is always verified: against ``ca_bundle`` (the stack's
``endpoint_ca_bundle``, a PEM file) when given, else against the public CAs of certifi. The
session ignores the environment (``trust_env=False``: no proxy on an offline site), and with
it REQUESTS_CA_BUNDLE, so the CA is named in the stack, not in the shell that runs Pulumi.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import requests

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_RETRY_WINDOW = 60.0
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_5XX_ATTEMPTS = 6
_MAX_DETAIL_CHARS = 600

READY = "READY"
LOADING = "LOADING"
ABSENT = "ABSENT"


def is_not_found(detail: str) -> bool:
    """True for Xinference's "no such model" answers (400, matched by substring)."""
    text = (detail or "").lower()
    return "model not found" in text or "not found in the model list" in text


def is_already_launched(detail: str) -> bool:
    return "already in the model list" in (detail or "").lower()


class XinferenceError(RuntimeError):
    """An error talking to Xinference; ``str()`` says what failed and what to do."""

    def __init__(self, message: str, *, status: Optional[int] = None, detail: str = ""):
        super().__init__(message)
        self.status = status
        self.detail = detail


class XinferenceUnreachable(XinferenceError):
    """No answer from the server within the retry window (refused, timed out, dropped)."""


class XinferenceTLSError(XinferenceError):
    """An https endpoint whose certificate does not verify: nothing was sent, and retrying cannot help."""


class XinferenceHTTPError(XinferenceError):
    """The server answered with an error status; ``detail`` is its own message."""


class XinferenceAuthError(XinferenceHTTPError):
    """401/403: the credential is missing, wrong, expired or lacks a permission."""


AUTH_HINT = (
    "set the stack secret with `pulumi config set --secret xinference-offline:api_key "
    "'<username>:<password>'` (an Xinference account allowed models:list/read/write; the provider "
    "logs in at POST /token) or an access token from POST /token; API keys from /v1/admin/keys "
    "cannot launch models in Xinference 4.x"
)


CA_SETTING = "xinference-offline:endpoint_ca_bundle"


class Credential:
    """The Xinference credential from the stack secret ``xinference-offline:api_key``.

    Two forms are accepted:

    - ``<username>:<password>``: the provider logs in at POST /token, caches the access
      token per endpoint and logs in again when it expires (401);
    - anything else (an access token, or an ``sk-...`` API key) is sent as it is in
      ``Authorization: Bearer <value>``.

    The secret is kept out of ``repr`` and is scrubbed from every error text.
    """

    def __init__(self, secret: str):
        if not isinstance(secret, str) or not secret.strip():
            raise ValueError("empty credential")
        self._secret = secret.strip()
        self._login_lock = threading.Lock()  # held only while logging in, never during other calls
        self._tokens: dict[str, str] = {}
        user, sep, password = self._secret.partition(":")
        is_key = self._secret.startswith(("sk-", "xf-"))
        self._login: Optional[tuple[str, str]] = (user, password) if sep and user and password and not is_key else None

    def __repr__(self) -> str:
        return "Credential(<redacted>)"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into Pulumi state, even by accident
        raise TypeError("a Credential is not picklable")

    @property
    def logs_in(self) -> bool:
        return self._login is not None

    def secrets(self) -> list[str]:
        found = [self._secret]
        if self._login:
            found.append(self._login[1])
        found += list(self._tokens.values())
        return [s for s in found if s]

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets(), key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "<redacted>")
        return text

    def header(self, client: "XinferenceClient", *, fresh: bool = False) -> str:
        if self._login is None:
            return f"Bearer {self._secret}"
        stale = self._tokens.get(client.endpoint) if fresh else None
        token = None if fresh else self._tokens.get(client.endpoint)
        if token is None:
            with self._login_lock:
                token = self._tokens.get(client.endpoint)
                if token is None or token == stale:
                    token = self._fetch_token(client)
                    self._tokens[client.endpoint] = token
        return f"Bearer {token}"

    def _fetch_token(self, client: "XinferenceClient") -> str:
        assert self._login is not None
        username, password = self._login
        response = client.request("POST", "/token", json={"username": username, "password": password},
                                  ok=(200,), authenticate=False, what=f"log in as '{username}'",
                                  idempotent=True)  # a second login only mints a second token
        try:
            token = response.json()["access_token"]
        except (ValueError, KeyError, TypeError):
            raise XinferenceAuthError(f"POST {client.endpoint}/token answered without an access_token; {AUTH_HINT}",
                                      status=response.status_code) from None
        if not isinstance(token, str) or not token:
            raise XinferenceAuthError(f"POST {client.endpoint}/token answered an empty access_token", status=200)
        return token


PENDING_STATUSES = ("CREATING", "LOADING", "UPDATING")


def replicas_pending(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Replica ids (as text) still on their way up, from GET /v1/models/instances?model_uid=X."""
    if not rows or not isinstance(rows[0], Mapping):
        return []
    return [str(r.get("replica_id")) for r in rows[0].get("replica_statuses") or []
            if isinstance(r, Mapping) and r.get("status") in PENDING_STATUSES]


@dataclass(frozen=True)
class Described:
    """GET /v1/models/{uid}: READY with the model's description, LOADING, or ABSENT."""

    state: str
    body: Mapping[str, Any]
    detail: str = ""


class XinferenceClient:
    """REST calls to one Xinference supervisor. Cheap to create; one per operation/thread."""

    def __init__(
        self,
        endpoint: str,
        credential: Optional[Credential] = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        session: Optional[requests.Session] = None,
        ca_bundle: Optional[str] = None,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.ca_bundle = ca_bundle
        self.credential = credential
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_window = retry_window
        self._session = session or requests.Session()
        self._session.trust_env = False  # an offline server: no proxies from the environment
        self._session.verify = ca_bundle or True  # never off; trust_env=False also drops REQUESTS_CA_BUNDLE
        # A request on a kept-alive connection to Xinference 4.1 (uvicorn) waits ~40 ms for a delayed
        # ACK (measured: 48 ms vs 3.5 ms for GET /status on localhost); a fresh connection does not.
        self._session.headers["Connection"] = "close"
        # ...and a server that keeps the socket open anyway (Python's http.server does not echo the
        # header) must not see a second request on it: a request sent on a socket the server is
        # closing fails with "Remote end closed connection" and a POST would not be retried.
        self._session.hooks["response"].append(_close_after_reading)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "XinferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return self.credential.redact(text) if self.credential else text

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        ok: Iterable[int] = (200,),
        deadline: Optional[float] = None,
        read_timeout: Optional[float] = None,
        idempotent: Optional[bool] = None,
        authenticate: bool = True,
        what: str = "",
    ) -> requests.Response:
        """One call with retries until ``deadline`` (a time.monotonic() value).

        ``idempotent`` (default: GET/DELETE) decides whether a request that may have reached
        the server (read timeout, connection dropped mid-response) is sent again; a refused
        connection is always retried. 5xx answers not in ``ok`` are retried at most
        MAX_5XX_ATTEMPTS times; other statuses not in ``ok`` raise with the server's message.
        """
        ok = tuple(ok)
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "DELETE", "OPTIONS")
        if deadline is None:
            deadline = time.monotonic() + self.retry_window
        url = f"{self.endpoint}{path}"
        label = what or f"{method} {path}"
        attempt = 0
        server_errors = 0
        relogged = False
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            headers = {}
            if authenticate and self.credential is not None:
                headers["Authorization"] = self.credential.header(self)
            timeout = (self.connect_timeout, max(1.0, min(read_timeout or self.read_timeout, remaining + 1.0)))
            failure: Optional[str] = None
            try:
                response = self._session.request(method, url, json=json, params=params, headers=headers,
                                                 timeout=timeout)
            except requests.exceptions.SSLError as exc:
                raise XinferenceTLSError(self._tls_failure(label, exc)) from None
            except requests.RequestException as exc:
                sent = not _never_sent(exc)
                failure = f"{type(exc).__name__}: {_short(str(exc))}"
                if sent and not idempotent:
                    raise XinferenceUnreachable(self._redact(
                        f"{label} at {self.endpoint}: the request may have reached the server but no answer came "
                        f"back ({failure}); not retried because it is not idempotent")) from None
            else:
                status = response.status_code
                if status in ok:
                    return response
                detail = self._redact(_detail(response))
                if status == 401 and authenticate and self.credential is not None and self.credential.logs_in \
                        and not relogged:
                    relogged = True
                    self.credential.header(self, fresh=True)
                    continue
                if status in (401, 403):
                    why = "no credential was configured" if self.credential is None else "the credential was refused"
                    raise XinferenceAuthError(
                        f"{label} at {self.endpoint}: HTTP {status}: {detail} ({why}); {AUTH_HINT}",
                        status=status, detail=detail)
                if status in RETRY_STATUSES:
                    server_errors += 1
                    failure = f"HTTP {status}: {detail}"
                    if server_errors >= MAX_5XX_ATTEMPTS:
                        raise XinferenceHTTPError(
                            f"{label} at {self.endpoint}: HTTP {status} after {server_errors} attempts: {detail}",
                            status=status, detail=detail)
                else:
                    raise XinferenceHTTPError(f"{label} at {self.endpoint}: HTTP {status}: {detail}",
                                              status=status, detail=detail)
            pause = min(5.0, 0.25 * (2 ** min(attempt - 1, 5))) * (0.8 + 0.4 * random.random())
            if time.monotonic() + pause >= deadline:
                if failure and failure.startswith("HTTP "):
                    raise XinferenceHTTPError(self._redact(
                        f"{label} at {self.endpoint}: still failing when the deadline passed "
                        f"({attempt} attempts): {failure}"), status=status, detail=detail)
                raise XinferenceUnreachable(self._redact(
                    f"{label}: Xinference at {self.endpoint} did not answer within the retry window "
                    f"({attempt} attempts, last: {failure}). Check that the server runs and the endpoint "
                    f"is right (GET {self.endpoint}/status)."))
            log.debug("%s failed (%s); retrying in %.2fs", label, failure, pause)
            time.sleep(pause)

    def _tls_failure(self, label: str, exc: requests.exceptions.SSLError) -> str:
        trusted = f"the CA in {self.ca_bundle} ({CA_SETTING})" if self.ca_bundle else "the public CAs"
        fix = (f"check that {self.ca_bundle} holds the CA that signed the server's certificate"
               if self.ca_bundle else f"set {CA_SETTING} to the PEM file of the CA that signed it")
        return self._redact(f"{label} at {self.endpoint}: TLS verification failed against {trusted}: "
                            f"{_short(_ssl_reason(exc))}; nothing was sent. Fix: {fix}")

    def get_json(self, path: str, **kwargs) -> Any:
        return _json(self.request("GET", path, **kwargs))

    # --- Xinference API ----------------------------------------------------------------

    def status(self, **kwargs) -> Mapping[str, Any]:
        return self.get_json("/status", authenticate=False, **kwargs)

    def describe(self, model_uid: str, *, all_replicas: bool = True, **kwargs) -> Described:
        """The model's state. With ``all_replicas`` (the default) a model is READY only when every
        replica is: Xinference 4.1 answers 200 on GET /v1/models/{uid} as soon as replica 0 has
        loaded, while the others may still be loading (measured: 10 s on CPU for MiniLM)."""
        response = self.request("GET", f"/v1/models/{model_uid}", ok=(200, 400, 503), **kwargs)
        if response.status_code == 200:
            body = _json(response) or {}
            if all_replicas:
                pending = replicas_pending(self.instances(model_uid, **kwargs))
                if pending:
                    return Described(LOADING, body, f"replica(s) {', '.join(pending)} still loading")
            return Described(READY, body)
        detail = self._redact(_detail(response))
        if response.status_code == 503:
            return Described(LOADING, {}, detail)
        if is_not_found(detail):
            return Described(ABSENT, {}, detail)
        raise XinferenceHTTPError(f"GET /v1/models/{model_uid} at {self.endpoint}: HTTP 400: {detail}",
                                  status=400, detail=detail)

    def instances(self, model_uid: str, **kwargs) -> list:
        body = self.get_json("/v1/models/instances", params={"model_uid": model_uid}, **kwargs)
        return body if isinstance(body, list) else []

    def progress(self, model_uid: str, **kwargs) -> Mapping[str, Any]:
        return self.get_json(f"/v1/models/{model_uid}/progress", **kwargs) or {}

    def list_models(self, **kwargs) -> dict[str, Mapping[str, Any]]:
        body = self.get_json("/v1/models", **kwargs) or {}
        return {row.get("id"): row for row in body.get("data", []) if isinstance(row, dict)}

    def launch(self, payload: Mapping[str, Any], *, wait_ready: bool = False, **kwargs) -> str:
        response = self.request("POST", "/v1/models", json=dict(payload),
                                params={"wait_ready": str(wait_ready).lower()}, idempotent=False,
                                what=f"launch {payload.get('model_uid')}", **kwargs)
        return (_json(response) or {}).get("model_uid") or payload.get("model_uid")

    def cancel(self, model_uid: str, **kwargs) -> bool:
        """Stop a launch in progress. False when the server says nothing is launching."""
        response = self.request("POST", f"/v1/models/{model_uid}/cancel", ok=(200, 400, 404, 500),
                                idempotent=True, what=f"cancel the launch of {model_uid}", **kwargs)
        return response.status_code == 200

    def terminate(self, model_uid: str, **kwargs) -> bool:
        """DELETE /v1/models/{uid}. True when terminated, False when the server did not know it."""
        response = self.request("DELETE", f"/v1/models/{model_uid}", ok=(200, 400),
                                what=f"terminate {model_uid}", **kwargs)
        if response.status_code == 200:
            return True
        detail = self._redact(_detail(response))
        if is_not_found(detail):
            return False
        raise XinferenceHTTPError(f"DELETE /v1/models/{model_uid} at {self.endpoint}: HTTP 400: {detail}",
                                  status=400, detail=detail)

    # custom model registrations (a site's own models, stackspec/custom_model.py)

    def registration(self, model_type: str, model_name: str, **kwargs) -> Optional[Mapping[str, Any]]:
        """The registered family of ``model_name``, or None when none is registered under it."""
        response = self.request("GET", f"/v1/model_registrations/{model_type}/{model_name}", ok=(200, 400),
                                what=f"read the registration of {model_name}", **kwargs)
        if response.status_code == 200:
            return _json(response) or {}
        self._unless_not_registered(response, "GET", f"/v1/model_registrations/{model_type}/{model_name}")
        return None

    def register(self, model_type: str, body: Mapping[str, Any], **kwargs) -> None:
        """POST /v1/model_registrations/{type}: Xinference's refusal (400) is raised with its reason."""
        self.request("POST", f"/v1/model_registrations/{model_type}", json=dict(body), idempotent=False,
                     what=f"register the custom {model_type} model", **kwargs)

    def unregister(self, model_type: str, model_name: str, **kwargs) -> bool:
        """True when unregistered, False when nothing was registered under the name."""
        response = self.request("DELETE", f"/v1/model_registrations/{model_type}/{model_name}", ok=(200, 400),
                                what=f"unregister {model_name}", **kwargs)
        if response.status_code == 200:
            return True
        self._unless_not_registered(response, "DELETE", f"/v1/model_registrations/{model_type}/{model_name}")
        return False

    def _unless_not_registered(self, response: requests.Response, method: str, path: str) -> None:
        """Return for Xinference's 400 "Model <name> not found" of a registration; raise any other 400."""
        detail = self._redact(_detail(response))
        if "not found" not in detail.lower():
            raise XinferenceHTTPError(f"{method} {path} at {self.endpoint}: HTTP 400: {detail}", status=400,
                                      detail=detail)

    # autostart registry (Xinference >= 4.0); None from these means "this server has no such API"

    def autostart_entries(self, **kwargs) -> Optional[dict[str, Mapping[str, Any]]]:
        response = self.request("GET", "/v1/autostart/models", ok=(200, 404, 405), **kwargs)
        if response.status_code != 200:
            return None
        body = _json(response) or {}
        entries = {}
        for entry in body.get("models", []) if isinstance(body, dict) else []:
            uid = (entry.get("launch") or {}).get("model_uid") if isinstance(entry, dict) else None
            if uid:
                entries[uid] = entry
        return entries

    def autostart_upsert(self, entry: Mapping[str, Any], **kwargs) -> Optional[bool]:
        response = self.request("POST", "/v1/autostart/models", json=dict(entry), ok=(200, 404, 405),
                                idempotent=True, what=f"register {entry['launch'].get('model_uid')} for autostart",
                                **kwargs)
        return None if response.status_code != 200 else True

    def autostart_remove(self, model_uid: str, **kwargs) -> Optional[bool]:
        response = self.request("DELETE", f"/v1/autostart/models/{model_uid}", ok=(200, 404, 405),
                                what=f"remove {model_uid} from autostart", **kwargs)
        return None if response.status_code != 200 else True

    def embed(self, model_uid: str, text: str = "ping", **kwargs) -> list:
        body = _json(self.request("POST", "/v1/embeddings", json={"model": model_uid, "input": text},
                                  idempotent=True, what=f"smoke test {model_uid} (one embedding)", **kwargs))
        try:
            vector = body["data"][0]["embedding"]
        except (KeyError, IndexError, TypeError):
            raise XinferenceError(f"POST /v1/embeddings for {model_uid}: unexpected answer {_short(str(body))}") from None
        if not vector:
            raise XinferenceError(f"POST /v1/embeddings for {model_uid}: empty embedding")
        return vector

    def rerank(self, model_uid: str, query: str = "ping", documents: Sequence[str] = ("ping", "pong"),
               **kwargs) -> list:
        body = _json(self.request("POST", "/v1/rerank",
                                  json={"model": model_uid, "query": query, "documents": list(documents)},
                                  idempotent=True, what=f"smoke test {model_uid} (one rerank)", **kwargs))
        results = body.get("results") if isinstance(body, dict) else None
        if not results:
            raise XinferenceError(f"POST /v1/rerank for {model_uid}: unexpected answer {_short(str(body))}")
        return results


def _close_after_reading(response: requests.Response, *_args, **_kwargs) -> requests.Response:
    """Read the whole answer, then close its socket before the pool could hand it out again."""
    connection = getattr(response.raw, "connection", None)
    _ = response.content
    if connection is not None:
        connection.close()
    return response


def _ssl_reason(exc: requests.exceptions.SSLError) -> str:
    """The innermost reason ("certificate verify failed: self-signed certificate"), not urllib3's wrapping."""
    text = str(exc)
    found = re.search(r"\[SSL: [A-Z_]+\] ([^(]+?)\s*\(_ssl", text)
    return found.group(1) if found else text


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (refused, DNS, connect timeout)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = repr(exc.args[0]) if exc.args else repr(exc)
        return any(s in text for s in ("NewConnectionError", "Connection refused", "Failed to resolve",
                                       "Name or service not known", "ConnectTimeoutError"))
    return False


def _short(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return _short(response.text or response.reason or "")
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return _short(detail if isinstance(detail, str) else str(detail))
    return _short(str(body))


def _json(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise XinferenceError(f"{response.request.method} {response.url}: HTTP {response.status_code} "
                              f"with a body that is not JSON: {_short(response.text)}",
                              status=response.status_code) from None
