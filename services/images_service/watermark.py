"""An invisible watermark: a short payload (IMAGES_WATERMARK, e.g. ``kitty``) hidden in every stored
image, read back by ``kitty-images verify-watermark FILE``.

The scheme is invisible-watermark's ``dwtDct`` (ShieldMnt/invisible-watermark, `imwatermark`), done
here in numpy alone: the picture's U plane (OpenCV's YUV) goes through one level of the Haar wavelet
transform; each 4×4 block of the low band carries one payload bit, repeated over the whole picture,
in the block's largest coefficient quantised by 36 (a remainder near 9 is a 0, near 27 a 1). Its
decoder (``invisible-watermark -a decode -m dwtDct -t bytes -l BITS``) reads our marks. We do not
depend on the package: it requires opencv-python (the GUI build, which conflicts with NudeNet's
opencv-python-headless and needs libGL in a slim image) and torch, for three lines of cv2.

Like the original, it wants a real picture: at least 256×256 (smaller images are stored unmarked,
with a log line), and flat or clipped areas carry little. Every mark is read back right after it is
made; the sidecar says whether that worked. PNG keeps it exactly; it is not meant to survive heavy
re-encoding, resizing or cropping, and it is not a security feature: anyone can read or remove it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("kitty.images.watermark")

METHOD = "dwtDct"
SCALE = 36.0
"""Quantisation step of the carrying coefficient (invisible-watermark's default for U)."""
BLOCK = 4
"""Side of the low-band blocks that carry one bit each."""
MIN_PIXELS = 256 * 256
"""Below this the library refuses to work, and the repetitions per bit get too few to trust."""
MAX_PAYLOAD_BYTES = 16
"""128 bits: 8 repetitions per bit at the minimum size, 32 at 512×512."""

# OpenCV's COLOR_BGR2YUV (BT.601 analogue YUV) and its inverse, restricted to what U changes.
_Y = (0.299, 0.587, 0.114)
_U_FROM_B_MINUS_Y = 0.492
_B_FROM_U, _G_FROM_U = 2.032, -0.395


def payload_bytes(text: str) -> bytes:
    """IMAGES_WATERMARK's text as the bytes embedded; raises ValueError when it cannot be."""
    data = text.encode("utf-8")
    if not data or len(data) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a watermark payload is 1 to {MAX_PAYLOAD_BYTES} bytes of UTF-8, not {len(data)}")
    return data


def _u_plane(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = _Y[0] * r + _Y[1] * g + _Y[2] * b
    return _U_FROM_B_MINUS_Y * (b - y) + 128.0


def _blocks(u: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The Haar low band of `u` (what ``pywt.dwt2(u, 'haar')[0]`` gives) as (blocks, 16) rows in
    the library's order (row-major), and the block grid's shape."""
    rows, cols = (u.shape[0] // 4) * 4, (u.shape[1] // 4) * 4
    region = u[:rows, :cols]
    low = (region[0::2, 0::2] + region[0::2, 1::2] + region[1::2, 0::2] + region[1::2, 1::2]) / 2.0
    grid = (low.shape[0] // BLOCK, low.shape[1] // BLOCK)
    low = low[: grid[0] * BLOCK, : grid[1] * BLOCK]
    blocks = low.reshape(grid[0], BLOCK, grid[1], BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK * BLOCK)
    return blocks, grid


def _carriers(blocks: np.ndarray) -> np.ndarray:
    """Index, within each block, of the coefficient that carries its bit: the largest in magnitude
    after the first."""
    import numpy as np

    return np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1


def _bits(payload: bytes) -> np.ndarray:
    import numpy as np

    return np.unpackbits(np.frombuffer(payload, dtype=np.uint8))


def embed(image: Image.Image, payload: bytes) -> Image.Image | None:
    """A copy of `image` carrying `payload`, or None when the image is too small to carry it."""
    import numpy as np

    if image.width * image.height < MIN_PIXELS:
        return None
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    blocks, grid = _blocks(_u_plane(rgb))
    bits = _bits(payload)
    wanted = bits[np.arange(len(blocks)) % len(bits)]
    rows = np.arange(len(blocks))
    carriers = _carriers(blocks)
    value = blocks[rows, carriers]
    magnitude = (np.floor(np.abs(value) / SCALE) + 0.25 + 0.5 * wanted) * SCALE
    # Quantising down may leave another coefficient the largest, and the decoder would read that
    # one: go one step up instead (same remainder, so the same bit for any dwtDct decoder).
    runner_up = np.sort(np.abs(blocks[:, 1:]), axis=1)[:, -2]
    magnitude = np.where(magnitude <= runner_up, magnitude + SCALE, magnitude)
    quantised = np.where(value < 0, -magnitude, magnitude)
    delta_low = np.zeros_like(blocks)
    delta_low[rows, carriers] = quantised - value
    # Back to the low band's layout; the inverse Haar spreads a low-band change d over its 2×2
    # pixels as d/2 each, and a change of U alone moves B and G (R depends on Y and V only).
    low_delta = (
        delta_low.reshape(grid[0], grid[1], BLOCK, BLOCK)
        .transpose(0, 2, 1, 3)
        .reshape(grid[0] * BLOCK, grid[1] * BLOCK)
    )
    delta_u = np.repeat(np.repeat(low_delta, 2, axis=0), 2, axis=1) / 2.0
    height, width = delta_u.shape
    marked = rgb.copy()
    marked[:height, :width, 2] += _B_FROM_U * delta_u
    marked[:height, :width, 1] += _G_FROM_U * delta_u
    result = Image.fromarray(np.clip(np.rint(marked), 0, 255).astype(np.uint8), "RGB")
    if alpha is not None:
        result.putalpha(alpha)
    return result


@dataclass(frozen=True)
class Reading:
    found: bool
    matching_bits: int
    total_bits: int
    decoded: bytes
    """What the image carries if it carries a payload of this length."""


def read(image: Image.Image, payload: bytes) -> Reading:
    """Whether `image` carries `payload` (every bit; a random picture matches 40 bits once in 10¹²)."""
    import numpy as np

    bits = _bits(payload)
    if image.width * image.height < MIN_PIXELS:
        return Reading(False, 0, len(bits), b"")
    blocks, _ = _blocks(_u_plane(np.asarray(image.convert("RGB"), dtype=np.float64)))
    value = np.abs(blocks[np.arange(len(blocks)), _carriers(blocks)])
    votes = (np.mod(value, SCALE) > 0.5 * SCALE).astype(np.float64)
    positions = np.arange(len(blocks)) % len(bits)
    ones = np.bincount(positions, weights=votes, minlength=len(bits))
    counts = np.bincount(positions, minlength=len(bits))
    decoded_bits = (ones / np.maximum(counts, 1) > 0.5).astype(np.uint8)
    matching = int((decoded_bits == bits).sum())
    return Reading(matching == len(bits), matching, len(bits), np.packbits(decoded_bits).tobytes())


def mark(image: Image.Image, text: str) -> tuple[Image.Image, dict[str, Any] | None]:
    """`image` watermarked with IMAGES_WATERMARK's `text`, and the sidecar's ``watermark`` record;
    the image unchanged and None when it is too small."""
    payload = payload_bytes(text)
    marked = embed(image, payload)
    if marked is None:
        log.info(
            "image not watermarked: %dx%d is below the %d pixels dwtDct needs",
            image.width,
            image.height,
            MIN_PIXELS,
        )
        return image, None
    verified = read(marked, payload).found
    if not verified:
        log.warning("the watermark of a %dx%d image does not read back", image.width, image.height)
    return marked, {"method": METHOD, "bits": 8 * len(payload), "verified": verified}
