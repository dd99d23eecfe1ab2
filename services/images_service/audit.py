"""The audit log: an append-only record of every submission, refusal, completion, cancel, delete and
select — when, by which key id (never the key), under which request id, on which job, what was asked
(the prompt as IMAGES_AUDIT_PROMPTS allows), how it ended and with which error code.

It lives in a Redis stream, ``<IMAGES_QUEUE_PREFIX>:audit``, next to the jobs it describes: it
survives restarts of every process (as far as Redis persists, see the doctor's AOF check) and is
bounded by IMAGES_AUDIT_MAX_ENTRIES (approximate: Redis trims whole stream nodes, so up to about a
hundred more may remain) and IMAGES_AUDIT_RETENTION_DAYS.

Writing is best-effort by design: a failed write is logged and counted
(``images_audit_write_failures_total``), never raised into the request or job it describes — an
outage of the log must not become an outage of the service. `audit_event` is what routes call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter
from pydantic import BaseModel, Field
from redis import Redis
from starlette.requests import Request

from services.common.api_keys import caller_of
from services.common.request_id import request_id_of
from services.contracts import ErrorCode, GenerateRequest, JobStatus, JobView, RenderSpec, RerunRequest

from .errors import KittyError, ValidationFailed
from .queue import redis_errors
from .redaction import redact
from .settings import Settings
from .worker.spool import UPLOAD_META

if TYPE_CHECKING:
    from rq.job import Job

    from .submission import Admitted

log = logging.getLogger("kitty.images.audit")

AuditAction = Literal["submit", "refuse", "done", "error", "cancel", "delete", "select", "retry"]
ACTIONS: tuple[str, ...] = ("submit", "refuse", "done", "error", "cancel", "delete", "select", "retry")

PromptPolicy = Literal["full", "hash", "none"]

STREAM_KEY = "{prefix}:audit"

PAGE_DEFAULT = 50
PAGE_MAX = 500

SCAN_BATCH = 500
"""Entries fetched per XREVRANGE while a filtered read looks for matches."""

SCAN_MAX = 10_000
"""Entries one filtered read looks at before it answers with what it found and a cursor: a filter
that matches nothing must not walk a 100,000-entry stream in one request."""

BUNDLE_ENTRIES = 100
"""The newest entries the doctor's --json bundle carries."""

CURSOR_PATTERN = r"^\d{1,20}-\d{1,20}$"
"""A stream id, as `next_cursor` gives it."""

KEY_ID_PATTERN = r"^[0-9a-f]{1,64}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

PROMPT_HASH_HEX = 16
"""A hashed prompt keeps this many hex digits of its SHA-256: enough to see the same prompt again."""

TEXT_CLIP = 200
"""Free-text values (model names, keys, error codes) are clipped to this in an entry."""

AUDIT_WRITE_FAILURES = Counter(
    "images_audit_write_failures_total",
    "Audit entries that could not be written (the action they describe went on).",
    ["action"],
)

AUDITED_STATE = "audited"
"""Set in the request's state once its entry is written, so an error handler does not add another."""


class AuditEntry(BaseModel):
    """One entry as read back; `id` is its stream id (a page's `next_cursor` is one)."""

    id: str
    ts: str
    action: str
    key_id: str = ""
    request_id: str = ""
    job_id: str = ""
    outcome: str = ""
    error_code: str = ""
    what: dict[str, Any] = Field(default_factory=dict)


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None = None
    """Pass as `cursor` for older entries; null when the log has none."""


# --- what was asked, prompts per policy ------------------------------------------------------------
def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:PROMPT_HASH_HEX]


def prompt_fields(name: str, text: str | None, policy: PromptPolicy) -> dict[str, Any]:
    """`name` (the text) under ``full``, `name_sha256` under ``hash``, nothing under ``none``."""
    if not text or policy == "none":
        return {}
    if policy == "full":
        return {name: text}
    return {f"{name}_sha256": prompt_hash(text)}


def _clip(value: Any) -> Any:
    return value[:TEXT_CLIP] if isinstance(value, str) else value


def describe(fields: dict[str, Any], policy: PromptPolicy) -> dict[str, Any]:
    """The `what` of an entry from a request's or spec's fields: engine, model, size, steps, images,
    preset and quality as given, the prompts per `policy`; a raw workflow only as a flag (its nodes
    hold prompts too)."""
    what: dict[str, Any] = {}
    for name in ("engine", "model", "steps", "num_images", "preset", "quality", "seed"):
        value = fields.get(name)
        if value is not None and isinstance(value, str | int | float | bool):
            what[name] = _clip(value)
    width, height = fields.get("width"), fields.get("height")
    if isinstance(width, int) and isinstance(height, int):
        what["size"] = f"{width}x{height}"
    if fields.get("workflow"):
        what["workflow"] = True
    for name in ("prompt", "negative_prompt"):
        text = fields.get(name)
        what.update(prompt_fields(name, text if isinstance(text, str) else None, policy))
    return what


def describe_request(body: GenerateRequest | RerunRequest, policy: PromptPolicy) -> dict[str, Any]:
    if isinstance(body, RerunRequest):
        what: dict[str, Any] = {"rerun_of": _clip(body.key)}
        if body.seed is not None:
            what["seed"] = body.seed
        if body.new_seed:
            what["new_seed"] = True
        return what
    return describe(body.model_dump(exclude_none=True), policy)


def describe_spec(spec: RenderSpec, policy: PromptPolicy) -> dict[str, Any]:
    return describe(spec.model_dump(exclude_none=True), policy)


def format_entry(entry: AuditEntry) -> str:
    """One line for a terminal (`kitty-images audit`): time, action, outcome, ids, code, what."""
    parts = [
        entry.ts,
        f"{entry.action:<7}",
        f"{entry.outcome:<10}",
        f"key={entry.key_id or '-'}",
        f"job={entry.job_id or '-'}",
        f"req={entry.request_id or '-'}",
    ]
    if entry.error_code:
        parts.append(entry.error_code)
    if entry.what:
        parts.append(json.dumps(entry.what, separators=(",", ":"), sort_keys=True))
    return "  ".join(parts)


def for_bundle(entry: AuditEntry) -> dict[str, Any]:
    """An entry for the diagnostics bundle, which travels to other people: full prompts become their
    hash whatever the policy, and any field named like a secret is blanked."""
    data = entry.model_dump()
    what = dict(data["what"])
    for name in ("prompt", "negative_prompt"):
        text = what.pop(name, None)
        if isinstance(text, str) and text:
            what[f"{name}_sha256"] = prompt_hash(text)
    data["what"] = redact(what)
    return data


# --- the stream ------------------------------------------------------------------------------------
def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


MAX_ID_PART = 2**64 - 1


def _older_than(stream_id: str) -> str | None:
    """The newest id before `stream_id` (an inclusive bound, so no Redis 6.2 syntax is needed);
    None before the very first id. Raises `ValidationFailed` for what is not a stream id."""
    if not re.fullmatch(CURSOR_PATTERN, stream_id):
        raise ValidationFailed(f"not an audit cursor: {stream_id[:40]!r}")
    ms, seq = (int(part) for part in stream_id.split("-"))
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise ValidationFailed(f"not an audit cursor: {stream_id[:40]!r}")
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{MAX_ID_PART}" if ms > 0 else None


class AuditLog:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.key = STREAM_KEY.format(prefix=settings.queue_prefix)

    @property
    def prompt_policy(self) -> PromptPolicy:
        return self.settings.audit_prompts

    def record(
        self,
        action: AuditAction,
        *,
        outcome: str,
        key_id: str | None = None,
        request_id: str | None = None,
        job_id: str | None = None,
        error_code: ErrorCode | str | None = None,
        what: dict[str, Any] | None = None,
    ) -> str:
        """Append one entry (and trim by count and age in the same round trip); returns its id.
        Raises `QueueUnavailable` when Redis is down: callers that must not fail use `audit_event`."""
        code = error_code.value if isinstance(error_code, ErrorCode) else (error_code or "")
        fields: dict[Any, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "action": action,
            "key_id": key_id or "",
            "request_id": _clip(request_id or ""),
            "job_id": _clip(job_id or ""),
            "outcome": _clip(outcome),
            "error_code": _clip(code),
            "what": json.dumps(redact(what or {}), separators=(",", ":"), sort_keys=True, default=str),
        }
        with redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.key, fields, maxlen=self.settings.audit_max_entries, approximate=True)
            if self.settings.audit_retention_days > 0:
                oldest_ms = int((time.time() - self.settings.audit_retention_days * 86400) * 1000)
                pipe.xtrim(self.key, minid=f"{max(oldest_ms, 0)}-0", approximate=True)
            entry_id = pipe.execute()[0]
        return _text(entry_id)

    def length(self) -> int:
        with redis_errors():
            return int(self.redis.xlen(self.key))

    def read(
        self,
        *,
        limit: int = PAGE_DEFAULT,
        cursor: str | None = None,
        key_id: str | None = None,
        action: str | None = None,
        job_id: str | None = None,
    ) -> AuditPage:
        """Newest first, older than `cursor` when given; entries matching every filter given. A
        filtered read looks at most SCAN_MAX entries, then answers with a cursor to go on from."""
        upper = _older_than(cursor) if cursor else "+"
        if upper is None:
            return AuditPage(entries=[], next_cursor=None)
        filters = (("key_id", key_id), ("action", action), ("job_id", job_id))
        wanted = {name: value for name, value in filters if value}
        entries: list[AuditEntry] = []
        scanned = 0
        last_seen: str | None = None
        with redis_errors():
            while len(entries) < limit and scanned < SCAN_MAX:
                count = SCAN_BATCH if wanted else limit - len(entries)
                batch: list[tuple[Any, Any]] = list(
                    self.redis.xrevrange(self.key, max=upper, min="-", count=count) or []
                )
                for raw_id, raw_fields in batch:
                    scanned += 1
                    last_seen = _text(raw_id)
                    entry = _entry(last_seen, raw_fields)
                    if all(getattr(entry, name) == value for name, value in wanted.items()):
                        entries.append(entry)
                        if len(entries) == limit:
                            return AuditPage(entries=entries, next_cursor=last_seen)
                upper = _older_than(last_seen) if last_seen else None
                if len(batch) < count or upper is None:  # the log's oldest entry was reached
                    return AuditPage(entries=entries, next_cursor=None)
        return AuditPage(entries=entries, next_cursor=last_seen)


def _entry(entry_id: str, raw: dict[Any, Any]) -> AuditEntry:
    fields = {_text(name): _text(value) for name, value in raw.items()}
    try:
        what = json.loads(fields.get("what") or "{}")
    except json.JSONDecodeError:
        what = {}
    return AuditEntry(
        id=entry_id,
        ts=fields.get("ts", ""),
        action=fields.get("action", ""),
        key_id=fields.get("key_id", ""),
        request_id=fields.get("request_id", ""),
        job_id=fields.get("job_id", ""),
        outcome=fields.get("outcome", ""),
        error_code=fields.get("error_code", ""),
        what=what if isinstance(what, dict) else {},
    )


def write_safely(audit: AuditLog, action: AuditAction, **entry: Any) -> None:
    """`audit.record`, with a failure logged and counted instead of raised. An action refused because
    Redis is down is not even tried: the log lives in that Redis, and a second connect timeout would
    only slow the 503 down."""
    if entry.get("error_code") in (ErrorCode.QUEUE_UNAVAILABLE, ErrorCode.QUEUE_UNAVAILABLE.value):
        AUDIT_WRITE_FAILURES.labels(action=action).inc()
        log.warning("audit entry not written: Redis is not reachable", extra={"action": action})
        return
    try:
        audit.record(action, **entry)
    except Exception as exc:  # Redis down, or anything else: the action itself must go on
        AUDIT_WRITE_FAILURES.labels(action=action).inc()
        message = exc.message if isinstance(exc, KittyError) else f"{type(exc).__name__}: {exc}"
        log.warning("audit entry not written", extra={"action": action, "error": message})


# --- what the API and the worker call ------------------------------------------------------------
def audit_log_of(request: Request) -> AuditLog | None:
    audit = getattr(request.app.state, "audit", None)
    return audit if isinstance(audit, AuditLog) else None


def audit_event(
    request: Request,
    action: AuditAction,
    *,
    outcome: str,
    job_id: str | None = None,
    error_code: ErrorCode | str | None = None,
    what: dict[str, Any] | None = None,
) -> None:
    """Record `action` for this request: the caller's key id and the request id are taken from the
    request itself. Never raises (see the module's docstring); blocking, so call it from a sync route
    or through `run_in_threadpool`."""
    request.state.audited = True
    audit = audit_log_of(request)
    if audit is None:
        return
    caller = caller_of(request.scope)
    write_safely(
        audit,
        action,
        outcome=outcome,
        key_id=caller.key_id if caller else None,
        request_id=request_id_of(request.scope),
        job_id=job_id,
        error_code=error_code,
        what=what,
    )


def audit_submission(
    request: Request, body: GenerateRequest | RerunRequest, admit: Callable[[], Admitted]
) -> Admitted:
    """Run `admit` (a generate or re-run) and record it: ``submit`` with the new job (outcome
    ``accepted``, or ``replayed`` for an Idempotency-Key replay), or ``refuse`` with the error's code,
    re-raised. Refusals before the route runs (a malformed body) are recorded by `audit_refusal`."""
    audit = audit_log_of(request)
    what = describe_request(body, audit.prompt_policy) if audit else None
    try:
        admitted = admit()
    except KittyError as exc:
        audit_event(request, "refuse", outcome="refused", error_code=exc.code, what=what)
        raise
    except Exception:
        audit_event(request, "refuse", outcome="failed", error_code=ErrorCode.INTERNAL_ERROR, what=what)
        raise
    outcome = "replayed" if admitted.replayed else "accepted"
    audit_event(request, "submit", outcome=outcome, job_id=admitted.job_id, what=what)
    return admitted


def audit_cancel(request: Request, view: JobView) -> JobView:
    """Record a cancel the queue accepted and return its view: outcome ``canceled`` (it was
    queued), ``requested`` (running: it stops at its next step) or ``already-<status>``."""
    if view.status is JobStatus.CANCELED:
        outcome = "canceled"
    elif view.status.is_terminal:
        outcome = f"already-{view.status.value}"
    else:
        outcome = "requested"
    audit_event(request, "cancel", outcome=outcome, job_id=view.job_id)
    return view


def audit_image(request: Request, action: Literal["select", "delete"], key: str) -> None:
    """Record a select or a delete of image `key`, with the job that made it when the gallery index
    still knows it (a delete has removed it by now: its entry names the key alone)."""
    job_id: str | None = None
    gallery = getattr(request.app.state, "gallery", None)
    if action == "select" and gallery is not None:
        try:
            item = gallery.get(key)
            job_id = item.job_id if item is not None else None
        except Exception:  # the lookup is a nicety; the entry is written without it
            job_id = None
    outcome = "selected" if action == "select" else "deleted"
    audit_event(request, action, outcome=outcome, job_id=job_id, what={"key": _clip(key)})


SUBMIT_PATHS = frozenset({"/api/images/generate", "/api/images/rerun", "/api/images/upscale"})
CANCEL_PATH = re.compile(r"^/api/images/jobs/([^/]+)/cancel$")
SELECT_PATH = "/api/images/select"
DELETE_PREFIX = "/api/images/items/"


def refused_action(method: str, path: str) -> tuple[AuditAction, str | None, dict[str, Any]] | None:
    """The audited action a refused request was (with its job id and what), or None for a route the
    log does not cover."""
    if method == "POST" and path in SUBMIT_PATHS:
        return "refuse", None, {}
    if method == "POST" and path == SELECT_PATH:
        return "select", None, {}
    if method == "POST" and (match := CANCEL_PATH.match(path)):
        return "cancel", match.group(1), {}
    if method == "DELETE" and path.startswith(DELETE_PREFIX):
        return "delete", None, {"key": _clip(path.removeprefix(DELETE_PREFIX))}
    return None


async def audit_refusal(request: Request, code: ErrorCode, body: Any = None) -> None:
    """For the error handlers: record an error answer to an audited route (submit, cancel, select,
    delete) unless its route recorded it already. `body`: the request body when the handler has it
    (a validation error carries it), described like an accepted one."""
    if getattr(request.state, "audited", False):
        return
    refused = refused_action(request.method, request.url.path)
    audit = audit_log_of(request)
    if refused is None or audit is None:
        return
    action, job_id, what = refused
    if isinstance(body, dict) and action == "refuse":
        what = describe(body, audit.prompt_policy)
    await run_in_threadpool(
        audit_event, request, action, outcome="refused", job_id=job_id, error_code=code, what=what
    )


def record_job_end(job: Job | None, spec: RenderSpec, status: str, settings: Settings) -> None:
    """For the worker, where a job's final state is written: ``done`` (outcome ``stored``, or
    ``spooled`` while its images wait for storage) or ``error`` (``failed`` or ``canceled``, with the
    recorded error's code). Key id and request id come from the job's meta. Never raises."""
    if job is None:
        return
    meta: dict[str, Any] = job.meta or {}
    if status == "done":
        action: AuditAction = "done"
        outcome = "spooled" if meta.get(UPLOAD_META) == "pending" else "stored"
        code = ""
    else:
        action, outcome = "error", "canceled" if status == "canceled" else "failed"
        error = meta.get("error")
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
    write_safely(
        AuditLog(job.connection, settings),
        action,
        outcome=outcome,
        key_id=meta.get("key_id"),
        request_id=meta.get("request_id"),
        job_id=job.id,
        error_code=code,
        what=describe_spec(spec, settings.audit_prompts),
    )


def recent_entries(redis: Redis, settings: Settings, limit: int = BUNDLE_ENTRIES) -> list[dict[str, Any]]:
    """The newest entries for the diagnostics bundle, prompts reduced to hashes (see `for_bundle`)."""
    page = AuditLog(redis, settings).read(limit=limit)
    return [for_bundle(entry) for entry in page.entries]
