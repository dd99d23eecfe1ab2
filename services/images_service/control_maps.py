"""The picture a ControlNet reads, made from a control's input: resized to the render size and, for
a `canny` control that asks for it, turned into an edge map. Torch-free (PIL, numpy, OpenCV), so
every engine, in-process or server, makes the same map from the same input."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from services.contracts import ControlInput

CANNY_LOW_THRESHOLD, CANNY_HIGH_THRESHOLD = 100, 200
"""cv2.Canny's hysteresis thresholds on the 8-bit gray picture: gradients above the high one start
an edge, those above the low one continue it. 100/200 are the ControlNet canny models' training
defaults (lllyasviel's annotator) and A1111's and ComfyUI's preprocessors' defaults."""

CANNY_THRESHOLDS = (CANNY_LOW_THRESHOLD, CANNY_HIGH_THRESHOLD)


def is_preprocessed(control: ControlInput) -> bool:
    """Whether `control_map` computes the map (canny edges) rather than taking the picture as it."""
    return control.type == "canny" and control.preprocess


def control_map(image: Image.Image, control: ControlInput, size: tuple[int, int]) -> Image.Image:
    """The RGB map `control`'s ControlNet reads at `size` (width, height): `image` resized (Lanczos),
    then for a preprocessed canny control its edges, white on black, in all three channels. Other
    types, and canny with ``preprocess=False``, take the picture as the ready map. Deterministic."""
    resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    if not is_preprocessed(control):
        return resized
    gray = cv2.cvtColor(np.asarray(resized), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, CANNY_LOW_THRESHOLD, CANNY_HIGH_THRESHOLD)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
