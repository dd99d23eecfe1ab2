"""`POST /api/images/upscale`: a stored image made 2 or 4 times larger, as a new image, by a queued job."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.contracts import GenerateView, UpscaleRequest

from ..audit import audit_event
from ..errors import KittyError
from ..submission import upscale
from .deps import JsonBody
from .images import ERRORS, AdmissionDep, accepted

router = APIRouter(prefix="/api/images", tags=["images"], responses=ERRORS)  # type: ignore[arg-type]


@router.post("/upscale", status_code=202, response_model=GenerateView, dependencies=[JsonBody])
def upscale_image(
    body: UpscaleRequest, request: Request, response: Response, admission: AdmissionDep
) -> GenerateView:
    """Enqueue an upscale of image `key` by `scale` (2 or 4) with the upscaler `model` (a models.yaml
    ``upscalers:`` entry; absent: the first registered for that scale, else Lanczos). The result is a
    new image whose sidecar names its `source`. Checked like a generate: the caller must see `key`,
    the result's size is held to its tier, it counts one image of its quota, `Idempotency-Key` holds."""
    what = {
        "upscale_of": body.key[:200],
        "scale": body.scale,
        **({"model": body.model} if body.model else {}),
    }
    try:
        admitted = upscale(body, admission)
    except KittyError as exc:
        audit_event(request, "refuse", outcome="refused", error_code=exc.code, what=what)
        raise
    outcome = "replayed" if admitted.replayed else "accepted"
    audit_event(request, "submit", outcome=outcome, job_id=admitted.job_id, what=what)
    return accepted(admitted, response)
