"""The body of an AUTOMATIC1111 render, built from a `RenderSpec` alone: no I/O. txt2img, or
img2img when the job has an input image (inpainting with its mask); the hires fix (txt2img's
``enable_hr``); ControlNet units for the sd-webui-controlnet extension (``alwayson_scripts``).

Inpainting asks for what our diffusers engine does: white repaints, the masked area starts from the
original pixels (``inpainting_fill`` 1) at the whole picture's resolution, and A1111 pastes the
original back outside the mask.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from services.contracts import A1111_SAMPLERS, ControlInput, RenderSpec

from ...errors import ValidationFailed
from ..remote import png_bytes
from ..server_base import JobInputs

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"

INPAINTING_FILL_ORIGINAL = 1
"""A1111's ``inpainting_fill``: 0 fill, 1 original, 2 latent noise, 3 latent nothing."""

RESIZE_JUST_RESIZE = 0
"""A1111's ``resize_mode``: the input is scaled to the job's size (which we derive from the input's
own aspect ratio when the request gives none)."""

CONTROLNET_SCRIPT = "controlnet"
"""The sd-webui-controlnet extension's name among ``alwayson_scripts``."""

CONTROL_MODULE = "none"
"""The unit's preprocessor: none, since we send the finished map (`control_maps.control_map`)."""

CONTROL_RESIZE_MODE = "Just Resize"
"""The unit's ``resize_mode``: our map is at the job's size already; nothing is cropped."""

CONTROL_MODE = "Balanced"
"""The unit's ``control_mode`` (the extension's default): the prompt and the map weigh as usual."""

HIRES_CONTROL = "Both"
"""The unit's ``hr_option``: it steers the hires fix's second pass too, as in our other engines."""

DEFAULT_HIRES_UPSCALER = "Lanczos"
"""``hr_upscaler`` when `HiresFix.upscaler` is absent: the wire's "absent: Lanczos resampling"."""


@dataclass(frozen=True)
class ControlUnit:
    """One of the spec's controls as the server takes it: its map and the extension's model name."""

    control: ControlInput
    picture: Image.Image
    """The map, at the job's size."""
    model: str
    """The model as ``/controlnet/model_list`` lists it: ``control_v11p_sd15_canny [d14c016b]``."""


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


def control_args(units: Sequence[ControlUnit]) -> dict[str, Any]:
    """``alwayson_scripts`` steering the render with `units` (the extension's ``ControlNetUnit``
    fields, from its ``internal_controlnet/args.py``); empty without any."""
    if not units:
        return {}
    args = [
        {
            "enabled": True,
            "image": encode_png(unit.picture),
            "module": CONTROL_MODULE,
            "model": unit.model,
            "weight": unit.control.weight,
            "guidance_start": unit.control.start,
            "guidance_end": unit.control.end,
            "resize_mode": CONTROL_RESIZE_MODE,
            "control_mode": CONTROL_MODE,
            "pixel_perfect": False,
            "processor_res": -1,
            "threshold_a": -1,
            "threshold_b": -1,
            "hr_option": HIRES_CONTROL,
        }
        for unit in units
    ]
    return {"alwayson_scripts": {CONTROLNET_SCRIPT: {"args": args}}}


def hires_fields(spec: RenderSpec) -> dict[str, Any]:
    """txt2img's hires fix for ``spec.hires`` (empty without one). A1111 makes the second pass
    ``int(side * hr_scale)`` big, where our output size rounds down to a multiple of 8: where the
    two differ, ``hr_resize_x``/``hr_resize_y`` ask for our size exactly."""
    hires = spec.hires
    if hires is None:
        return {}
    fields: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": hires.scale,
        "hr_upscaler": hires.upscaler or DEFAULT_HIRES_UPSCALER,
        "denoising_strength": hires.strength,
        "hr_second_pass_steps": hires.steps or 0,  # 0: the first pass's steps, as ours
    }
    width, height = spec.output_size
    if (width, height) != (int(spec.width * hires.scale), int(spec.height * hires.scale)):
        fields.update(hr_resize_x=width, hr_resize_y=height)
    return fields


def render_request(
    spec: RenderSpec,
    task_id: str,
    checkpoint: str | None,
    inputs: JobInputs,
    controls: Sequence[ControlUnit] = (),
) -> tuple[str, dict[str, Any]]:
    """The route and body of the render: txt2img, or img2img with `inputs`, the job's picture and
    mask already at the job's size (`read_job_inputs`); steered by `controls`, one per
    ``spec.controls``."""
    if len(controls) != len(spec.controls):
        raise ValueError(f"the spec has {len(spec.controls)} controls; {len(controls)} units were given")
    payload = base_payload(spec, task_id, checkpoint) | control_args(controls)
    if spec.image is None:
        return TXT2IMG, payload | hires_fields(spec)
    if spec.hires is not None:
        raise ValidationFailed(
            "AUTOMATIC1111 runs the hires fix on text-to-image only: img2img has none",
            remediation=["Send the request without `hires`, or without `image`."],
        )
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
