"""Pictures for the content gate and watermark tests: a real-looking scene (gradients, waves and
noise: what dwtDct and a classifier need, unlike the fake engine's flat colours), an engine that
renders it, and a stand-in safety checker that flags a known marker."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from services.contracts import RenderSpec
from services.images_service.engines import ProgressFn, RenderedImage, RenderResult
from services.images_service.safety import Verdict

MARKER = (255, 0, 255)
"""Painted in a scene's top-left corner when its prompt contains `FLAG_WORD`."""
MARKER_SIDE = 16
FLAG_WORD = "[marker]"


def scene(width: int = 512, height: int = 512, seed: int = 0) -> Image.Image:
    """A colourful, detailed picture: two gradients, a wave pattern and Gaussian noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * x / width
    green = 255 * y / height
    blue = 128 + 100 * np.sin(x / 23.0 + seed) * np.cos(y / 31.0)
    pixels = np.stack([red, green, blue], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def with_marker(image: Image.Image) -> Image.Image:
    marked = image.copy()
    marked.paste(MARKER, (0, 0, MARKER_SIDE, MARKER_SIDE))
    return marked


def high_frequency(image: Image.Image) -> float:
    """Mean absolute difference between horizontally adjacent pixels: large for a sharp picture with
    noise, near zero once it is blurred."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return float(np.abs(np.diff(pixels, axis=1)).mean())


@dataclass
class SceneEngine:
    """Renders `scene` at the spec's size and seed, with the marker when the prompt asks for it."""

    name: str = "diffusers"
    calls: list[RenderSpec] = field(default_factory=list)
    rendered: list[Image.Image] = field(default_factory=list)

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        self.calls.append(spec)
        progress(0, spec.steps)
        images = []
        for i in range(spec.num_images):
            picture = scene(spec.width, spec.height, spec.seed + i)
            if FLAG_WORD in spec.prompt:
                picture = with_marker(picture)
            self.rendered.append(picture)
            images.append(RenderedImage(picture, spec.seed + i))
        progress(spec.steps, spec.steps)
        return RenderResult(images=images, device="fake", engine_info={}, timings={"render_s": 0.0})

    def close(self) -> None:
        pass


@dataclass
class MarkerChecker:
    """A stand-in safety checker: flags exactly the images whose top-left pixel is the marker."""

    name: str = "stand-in"
    seen: int = 0

    def check(self, image: Image.Image) -> Verdict:
        self.seen += 1
        flagged = image.convert("RGB").getpixel((0, 0)) == MARKER
        return Verdict(flagged=flagged, checker=self.name, label="marker" if flagged else None, score=1.0)
