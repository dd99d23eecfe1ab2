"""The body of an AUTOMATIC1111 render, built from a `RenderSpec` alone: no I/O. txt2img, or
img2img when the job has an input image (inpainting with its mask).

Inpainting asks for what our diffusers engine does: white repaints, the masked area starts from the
original pixels (``inpainting_fill`` 1) at the whole picture's resolution, and A1111 pastes the
original back outside the mask.
"""

from __future__ import annotations

import base64
from typing import Any

from PIL import Image

from services.contracts import A1111_SAMPLERS, RenderSpec

from ..remote import png_bytes
from ..server_base import JobInputs

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"

INPAINTING_FILL_ORIGINAL = 1
"""A1111's ``inpainting_fill``: 0 fill, 1 original, 2 latent noise, 3 latent nothing."""

RESIZE_JUST_RESIZE = 0
"""A1111's ``resize_mode``: the input is scaled to the job's size (which we derive from the input's
own aspect ratio when the request gives none)."""


def sampler_fields(scheduler: str | None) -> dict[str, str]:
    """``sampler_name`` (and ``scheduler``, A1111's sigma schedule) for a wire scheduler name."""
    if not scheduler:
        return {}
    # A name outside the table is passed as is: the server answers "Sampler not found".
    sampler, schedule = A1111_SAMPLERS.get(scheduler, (scheduler, None))
    return {"sampler_name": sampler, "scheduler": schedule} if schedule else {"sampler_name": sampler}


def base_payload(spec: RenderSpec, task_id: str, checkpoint: str | None) -> dict[str, Any]:
    """What txt2img and img2img share: the prompt, the sampling, the batch and our task id."""
    payload: dict[str, Any] = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "seed": spec.seed,
        "steps": spec.steps,
        "cfg_scale": spec.cfg,
        "width": spec.width,
        "height": spec.height,
        "batch_size": spec.num_images,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        "force_task_id": task_id,
        **sampler_fields(spec.scheduler),
    }
    if checkpoint:
        payload["override_settings"] = {"sd_model_checkpoint": checkpoint}
        # The server's checkpoint stays what its own user chose.
        payload["override_settings_restore_afterwards"] = True
    return payload


def encode_png(picture: Image.Image) -> str:
    """A picture as A1111 reads ``init_images`` and ``mask``: base64 of its PNG."""
    return base64.b64encode(png_bytes(picture)).decode("ascii")


def render_request(
    spec: RenderSpec, task_id: str, checkpoint: str | None, inputs: JobInputs
) -> tuple[str, dict[str, Any]]:
    """The route and body of the render: txt2img, or img2img with `inputs`, the job's picture and
    mask already at the job's size (`read_job_inputs`)."""
    payload = base_payload(spec, task_id, checkpoint)
    if spec.image is None:
        return TXT2IMG, payload
    if inputs.image is None or (spec.mask is not None and inputs.mask is None):
        raise ValueError("an image-to-image spec needs its picture (and mask) in `inputs`")
    payload.update(
        init_images=[encode_png(inputs.image)],
        denoising_strength=spec.strength,
        resize_mode=RESIZE_JUST_RESIZE,
        include_init_images=False,
    )
    if spec.mask is not None and inputs.mask is not None:
        payload.update(
            mask=encode_png(inputs.mask),
            inpainting_fill=INPAINTING_FILL_ORIGINAL,
            inpaint_full_res=False,
            inpainting_mask_invert=0,  # white repaints, as in the request
        )
    return IMG2IMG, payload
