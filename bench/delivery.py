"""HIP-35's output delivery (< 200 ms): from asking for an image to holding its bytes, as a downstream
tool does it. ``POST /api/images/select`` through the gateway answers an imageRef; its
``downloadUrl`` (the filesystem store's signed link, served by the images-service behind the same
gateway) is then fetched whole. One client, one request at a time, on the stack's own store.

The image is a 1024×1024 PNG of the size a Stable Diffusion output has (smooth gradients plus grain,
about 2 MB), written into the store directly: what is timed is delivery, not rendering.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from services.images_service.storage import FilesystemStore
from services.images_service.storage.fs import load_or_create_signing_key
from services.images_service.storage.keys import new_image_key

from .processes import Stack
from .report import Goal, Measurement, percentile, summary

SIDE = 1024
WARMUP = 5
ROUNDS = 60
GOAL = Goal("<", 200.0, "ms")
"""HIP-35: output delivery under 200 ms."""


def sd_sized_png(side: int = SIDE, seed: int = 35) -> bytes:
    """A PNG that compresses like a rendered picture: gradients with a little grain."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))], -1
    )
    rgb += rng.normal(0, 6, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(stack: Stack) -> list[Measurement]:
    data_dir = Path(stack.env["IMAGES_DATA_DIR"])
    store = FilesystemStore(data_dir / "store", load_or_create_signing_key(data_dir, None))
    png = sd_sized_png()
    key = new_image_key("images/", datetime.now(UTC)) + ".png"
    store.put(key, png, "image/png")

    def deliver(http: httpx.Client) -> float:
        started = time.perf_counter()
        ref = http.post("/api/images/select", json={"key": key}).raise_for_status().json()["imageRef"]
        body = http.get(ref["downloadUrl"]).raise_for_status().content
        elapsed = time.perf_counter() - started
        if body != png:
            raise RuntimeError("the delivered bytes differ from the stored image")
        return elapsed

    with httpx.Client(base_url=stack.gateway_url, timeout=30, trust_env=False) as http:
        for _ in range(WARMUP):
            deliver(http)
        samples = [deliver(http) for _ in range(ROUNDS)]
    store.delete(key)
    note = f"select + GET downloadUrl of a {len(png) / 1e6:.1f} MB PNG, {ROUNDS} in a row, filesystem store"
    return [
        Measurement(
            key="delivery.p50",
            label=f"output delivery p50, {SIDE}×{SIDE} PNG through the gateway",
            value=round(percentile(samples, 50) * 1000, 1),
            unit="ms",
            note=note,
            detail={"ms": summary(samples, 1000), "png_bytes": len(png)},
        ),
        Measurement(
            key="delivery.p99",
            label=f"output delivery p99, {SIDE}×{SIDE} PNG through the gateway",
            value=round(percentile(samples, 99) * 1000, 1),
            unit="ms",
            goal=GOAL,
            note=note,
            detail={"ms": summary(samples, 1000), "png_bytes": len(png)},
        ),
    ]
