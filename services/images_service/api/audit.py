"""`GET /api/images/audit`: the audit log, newest first, for admin keys only.

A key that is not an admin gets the very answer an unknown route gives (404 `NOT_FOUND`): the wire
has no "forbidden" code, and a 404 tells a non-admin nothing about what an admin can read. Without
API keys the route is open, like every other one on a local, loopback-only service.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.exceptions import HTTPException

from services.contracts import ErrorBody

from ..audit import (
    CURSOR_PATTERN,
    JOB_ID_PATTERN,
    KEY_ID_PATTERN,
    PAGE_DEFAULT,
    PAGE_MAX,
    AuditAction,
    AuditLog,
    AuditPage,
)
from ..errors import QueueUnavailable
from .deps import CallerDep

router = APIRouter(
    prefix="/api/images",
    tags=["audit"],
    responses={code: {"model": ErrorBody} for code in (400, 401, 404, 503)},  # type: ignore[misc]
)


async def require_admin(request: Request, caller: CallerDep) -> None:
    """Runs before the query is validated, so a non-admin's malformed query is a 404 too."""
    if request.app.state.keyring.is_enabled and (caller is None or not caller.is_admin):
        raise HTTPException(status_code=404)


def audit_log(request: Request) -> AuditLog:
    audit = getattr(request.app.state, "audit", None)
    if not isinstance(audit, AuditLog):
        raise QueueUnavailable("the audit log is not available: the service has not finished starting")
    return audit


@router.get("/audit", response_model=AuditPage, dependencies=[Depends(require_admin)])
def audit(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    key_id: Annotated[str | None, Query(pattern=KEY_ID_PATTERN)] = None,
    action: AuditAction | None = None,
    job_id: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> AuditPage:
    """Audit entries newest first: submissions and refusals, job completions and failures,
    cancels, deletes and selects, each with its key id, request id, job id, outcome and error code.
    Filter by `key_id`, `action`, `job_id`; `next_cursor` pages to older entries (a filtered page may
    come back short with a cursor: the search stops after 10,000 entries)."""
    return audit_log(request).read(limit=limit, cursor=cursor, key_id=key_id, action=action, job_id=job_id)
