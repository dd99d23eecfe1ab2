"""A real `images-worker` whose engine sleeps instead of rendering: for measuring the fleet (how jobs
spread over many workers, how often they find their model loaded) where two CPU cores could not
render for eight workers. Everything but the engine is the production worker: RQ, heartbeats,
dispatch, cards, storage, the gallery index.

    python -m bench.sleep_worker [images-worker options]

The engine holds `KITTY_SLEEP_CACHE` models (LRU, default 1); a model it does not hold costs
`KITTY_SLEEP_LOAD_S` (default 1.0) to "load", a render `KITTY_SLEEP_RENDER_S` (default 0.2) spread
over the job's steps. Its images are 64×64 flat colours of the seed, so storing them costs little.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

from PIL import Image

from services.contracts import RenderSpec
from services.images_service.engines import EngineHealth, ProgressFn, RenderedImage, RenderResult


class SleepEngine:
    name = "diffusers"

    def __init__(self, *, load_s: float = 1.0, render_s: float = 0.2, cache_size: int = 1) -> None:
        self.load_s, self.render_s, self.cache_size = load_s, render_s, cache_size
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    @classmethod
    def from_environment(cls) -> SleepEngine:
        return cls(
            load_s=float(os.environ.get("KITTY_SLEEP_LOAD_S", "1.0")),
            render_s=float(os.environ.get("KITTY_SLEEP_RENDER_S", "0.2")),
            cache_size=int(os.environ.get("KITTY_SLEEP_CACHE", "1")),
        )

    def health(self) -> EngineHealth:
        return EngineHealth("ready", "sleep engine")

    def resident_models(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def preload(self, model: str) -> None:
        self._hold(model or "default")

    def _hold(self, model: str) -> float:
        with self._lock:
            if model in self._resident:
                self._resident.move_to_end(model)
                return 0.0
            while len(self._resident) >= self.cache_size:
                self._resident.popitem(last=False)
            self._resident[model] = None
            self.loads += 1
        time.sleep(self.load_s)
        return self.load_s

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        load_s = self._hold(spec.model or "default")
        steps = max(1, spec.steps)
        progress(0, steps)
        for step in range(1, steps + 1):
            time.sleep(self.render_s / steps)
            progress(step, steps)
        images = [
            RenderedImage(Image.new("RGB", (64, 64), ((spec.seed + i) % 256, 80, 160)), spec.seed + i)
            for i in range(spec.num_images)
        ]
        return RenderResult(
            images=images,
            device="sleep",
            engine_info={"load_s": load_s},
            timings={"load_s": load_s, "render_s": self.render_s},
        )

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    from services.images_service.worker import main as worker_main
    from services.images_service.worker import tasks

    engine = SleepEngine.from_environment()

    def make_engine(name: str, *args: Any, **kwargs: Any) -> SleepEngine:
        return engine

    tasks.make_engine = make_engine  # type: ignore[assignment]
    worker_main.main(argv)


if __name__ == "__main__":
    main()
