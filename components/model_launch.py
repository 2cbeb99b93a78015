"""One model's launch through one client: launch, wait until it serves, smoke test, clean up.

The slow half of XinferenceModel's create (components/model.py): the launch is sent with
``wait_ready=false`` and GET /v1/models/{uid} is polled until ready, failed, or the deadline
(progress reported every few seconds); a launch whose request was cut off is sent again only
when nothing reached the server; a failure after something was started cancels a loading
model or terminates a ready one, and checks. Xinference 4.1 behaviours this relies on are in
components/xinference_client.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import pulumi

from components.model_props import conflict_message, launch_payload, running_mismatches
from components.xinference_client import (ABSENT, LOADING, PENDING_STATUSES, READY, Described, XinferenceAuthError,
                                          XinferenceClient, XinferenceError, XinferenceHTTPError,
                                          XinferenceUnreachable, is_already_launched)

log = logging.getLogger(__name__)


def say(uid: str, message: str) -> None:
    """A line for the operator: in `pulumi up`'s output and in the provider's log."""
    text = f"XinferenceModel {uid}: {message}"
    log.info(text)
    try:
        pulumi.log.info(text)
    except Exception:  # noqa: BLE001 - logging must never fail an operation
        pass


class LaunchError(XinferenceError):
    """The model did not come up (refused, failed to load, timed out, smoke test failed)."""


class ConflictError(XinferenceError):
    """The uid already runs with other launch parameters."""


def instance_status(rows: Sequence[Mapping[str, Any]]) -> tuple[Optional[str], list[str]]:
    """(status, error messages) from GET /v1/models/instances?model_uid=X."""
    if not rows:
        return None, []
    row = rows[0]
    errors = []
    for replica in row.get("replica_statuses") or []:
        message = replica.get("error_message")
        if message:
            errors.append(str(message))
    return row.get("status"), errors


@dataclass(frozen=True)
class LaunchTiming:
    """The provider's pacing (seconds)."""

    retry_window: float
    poll_interval: float
    progress_every: float
    cleanup_timeout: float
    smoke_timeout: float


class ModelLaunch:
    """Launching model ``uid`` through ``client``; one per create/update/delete call."""

    def __init__(self, client: XinferenceClient, uid: str, timing: LaunchTiming):
        self.client = client
        self.uid = uid
        self.timing = timing

    def refuse_conflict(self, endpoint: str, described: Described, props: Mapping[str, Any], deadline: float) -> None:
        """A ConflictError when the running model (or its autostart entry) differs from ``props``."""
        client, uid = self.client, self.uid
        registered = None
        entries = client.autostart_entries(deadline=deadline)
        if entries and uid in entries:
            registered = entries[uid].get("launch")
        mismatches = running_mismatches(described.body, props, registered)
        if mismatches:
            raise ConflictError(conflict_message(uid, endpoint, mismatches))

    def launch(self, endpoint: str, props: Mapping[str, Any], deadline: float,
               timeout: float) -> tuple[Described, bool]:
        """Launch and wait until ready: (what the server describes, whether this call started it)."""
        client, uid = self.client, self.uid
        payload = launch_payload(props)
        where = f" on GPU(s) {payload['gpu_idx']}" if payload.get("gpu_idx") else ""
        say(uid, f"launching {props['model_type']} model {props['model_name']}{where} at {endpoint} "
            f"(timeout {timeout:g}s)")
        attempt = 0
        while True:
            attempt += 1
            try:
                client.launch(payload, deadline=deadline)
                break
            except XinferenceAuthError:
                raise
            except XinferenceHTTPError as exc:
                if exc.status == 400 and is_already_launched(exc.detail):
                    # Someone (autostart, a parallel run, our own lost request) launched it meanwhile.
                    described = self.wait_ready(deadline, timeout)
                    self.refuse_conflict(endpoint, described, props, deadline)
                    return described, attempt > 1
                if exc.status is not None and 400 <= exc.status < 500:
                    raise LaunchError(
                        f"Xinference at {endpoint} refused to launch '{uid}': {exc.detail}. Nothing was launched. "
                        f"Check the model's inputs (model_path must exist on the server / inside the container, "
                        f"gpu_idx must be a GPU the worker sees).", status=exc.status, detail=exc.detail) from None
                raise
            except XinferenceUnreachable:
                # The connection broke after the request was sent: the launch may or may not have
                # reached the server. Look; send it again only if nothing is there.
                look = time.monotonic() + min(self.timing.retry_window, max(5.0, deadline - time.monotonic()))
                if client.describe(uid, deadline=look).state != ABSENT:
                    break
                status, _ = instance_status(client.instances(uid, deadline=look))
                if status in PENDING_STATUSES:
                    break
                if time.monotonic() + 1.0 >= deadline:
                    raise
                say(uid, "the launch request was cut off before an answer and nothing was launched; sending it again")
                time.sleep(min(5.0, 0.5 * attempt))
        try:
            return self.wait_ready(deadline, timeout), True
        except Exception:
            self.abort()
            raise

    def wait_ready(self, deadline: float, timeout: float) -> Described:
        """Poll GET /v1/models/{uid} until it is ready, failed, or the deadline passes."""
        client, uid = self.client, self.uid
        next_progress = time.monotonic() + self.timing.progress_every
        absent_since: Optional[float] = None
        described = Described(ABSENT, {})
        interval = min(0.2, self.timing.poll_interval)
        while True:
            now = time.monotonic()
            described = client.describe(uid, deadline=max(deadline, now + 5.0))
            if described.state == READY:
                return described
            now = time.monotonic()
            if described.state == LOADING:
                absent_since = None
                if now >= next_progress:
                    next_progress = now + self.timing.progress_every
                    self._report_progress(deadline)
            else:
                rows = client.instances(uid, deadline=max(deadline, now + 5.0))
                status, errors = instance_status(rows)
                if status == "ERROR":
                    why = "; ".join(errors) or "no message from the server (cancelled, or see the Xinference log)"
                    raise LaunchError(f"launch of '{uid}' failed on the server: {why}", detail=why)
                if status in PENDING_STATUSES:
                    absent_since = None
                else:
                    absent_since = absent_since if absent_since is not None else now
                    if now - absent_since > 15.0:
                        raise LaunchError(f"'{uid}' vanished from the server while launching (status {status!r}); "
                                          f"see the Xinference log")
            if now >= deadline:
                raise LaunchError(
                    f"'{uid}' was not ready after launch_timeout={timeout:g}s (last answer: "
                    f"{described.detail or described.state}). The launch was cancelled. Raise launch_timeout for "
                    f"large models, or check the Xinference log for why it is slow.")
            time.sleep(max(0.05, min(interval, deadline - now)))
            interval = min(self.timing.poll_interval, interval * 1.5)

    def _report_progress(self, deadline: float) -> None:
        client, uid = self.client, self.uid
        try:
            progress = client.progress(uid, deadline=time.monotonic() + 5.0)
        except XinferenceError:
            return
        value = progress.get("progress")
        stage = progress.get("stage") or "loading"
        percent = f"{float(value) * 100:.0f}%" if isinstance(value, (int, float)) else "?"
        left = max(0.0, deadline - time.monotonic())
        say(uid, f"{stage} {percent} ({left:.0f}s left)")

    def smoke(self, model_type: str, deadline: float) -> None:
        """One request suited to the type (an embedding, a rerank, else a describe): it answers."""
        client, uid = self.client, self.uid
        smoke_deadline = max(deadline, time.monotonic() + self.timing.smoke_timeout)
        kind = str(model_type).casefold()
        try:
            if kind == "embedding":
                client.embed(uid, deadline=smoke_deadline, read_timeout=self.timing.smoke_timeout)
            elif kind == "rerank":
                client.rerank(uid, deadline=smoke_deadline, read_timeout=self.timing.smoke_timeout)
            else:
                described = client.describe(uid, deadline=smoke_deadline)
                if described.state != READY:
                    raise XinferenceError(f"GET /v1/models/{uid}: {described.detail or described.state}")
        except XinferenceError as exc:
            raise LaunchError(f"'{uid}' launched but its smoke test failed: {exc}. Set smoke_test: false to skip "
                              f"it, or check the model.", status=exc.status, detail=exc.detail) from None
        say(uid, "smoke test passed")

    def abort(self) -> None:
        """Leave nothing half-launched: cancel a loading launch, terminate a ready one, and check."""
        client, uid = self.client, self.uid
        end = time.monotonic() + self.timing.cleanup_timeout
        last_cancel = 0.0
        try:
            while time.monotonic() < end:
                # Any replica up counts as READY here: such a model is terminated, never cancelled.
                described = client.describe(uid, all_replicas=False, deadline=end)
                if described.state == READY:
                    client.terminate(uid, deadline=end)
                    continue
                status, _ = instance_status(client.instances(uid, deadline=end))
                if described.state == ABSENT and status not in PENDING_STATUSES:
                    say(uid, "cleaned up after the failed launch")
                    return
                # Loading (never cancel a READY model: Xinference then drops it but leaves its process running).
                if time.monotonic() - last_cancel > 5.0:
                    client.cancel(uid, deadline=end)
                    last_cancel = time.monotonic()
                time.sleep(0.5)
            say(uid, f"could not confirm the failed launch was cleaned up within {self.timing.cleanup_timeout:g}s; "
                f"check `xinference list` and terminate it by hand")
        except XinferenceError as exc:
            say(uid, f"cleanup after the failed launch failed: {exc}; terminate it by hand if it shows up")
