"""``--preview FILE``: while the CLI waits for a job, each new `preview_step` in the job's views
fetches the live preview and replaces FILE whole (written beside it, then renamed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.unit.test_cli import DONE_RESULT, IMAGE_KEYS, error_body, job_view, run, sse

RUNNING = [
    job_view("queued"),
    job_view("started", 1, 6),
    job_view("started", 2, 6, preview_step=2),
    job_view("started", 3, 6, preview_step=2),  # the same preview: not fetched again
    job_view("started", 4, 6, preview_step=4),
    job_view("done", 6, 6, preview_step=6, result=DONE_RESULT),
]


class PreviewApi:
    """A gateway whose job-1 streams `views`; its preview route answers a new WebP each call (or a
    404 for the calls listed in `missing`)."""

    def __init__(self, views: list[dict[str, Any]], missing: tuple[int, ...] = ()) -> None:
        self.views = views
        self.missing = missing
        self.previews = 0
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if path == "/api/images/generate":
            return httpx.Response(202, json={"job_id": "job-1", "status": "queued"})
        if path == "/api/images/jobs/job-1/events":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(self.views))
        if path == "/api/images/jobs/job-1/preview":
            self.previews += 1
            if self.previews in self.missing:
                return httpx.Response(404, json=error_body("NOT_FOUND", "job job-1 has no preview", []))
            return httpx.Response(
                200, headers={"content-type": "image/webp"}, content=f"RIFF webp {self.previews}".encode()
            )
        if path == "/api/images/jobs/job-1":
            return httpx.Response(200, json=self.views[-1])
        return httpx.Response(404, json=error_body("NOT_FOUND", path, []))


def test_generate_keeps_the_file_as_the_latest_preview_while_it_waits(tmp_path: Path) -> None:
    api = PreviewApi(RUNNING)
    preview = tmp_path / "live.webp"

    result = run(["images.generate", "a fox", "--preview", str(preview)], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    # Steps 2, 4 and 6 each brought a preview; the file holds the last, whole, and nothing else is left.
    assert api.paths.count("/api/images/jobs/job-1/preview") == 3
    assert preview.read_bytes() == b"RIFF webp 3"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["live.webp"]


def test_a_preview_that_is_gone_is_skipped_and_the_next_one_written(tmp_path: Path) -> None:
    api = PreviewApi(RUNNING, missing=(1,))
    preview = tmp_path / "live.webp"

    result = run(["images.generate", "a fox", "--preview", str(preview)], api)

    assert result.exit_code == 0, result.output
    assert preview.read_bytes() == b"RIFF webp 3"


def test_jobs_wait_writes_the_preview_too(tmp_path: Path) -> None:
    api = PreviewApi(RUNNING)
    preview = tmp_path / "live.webp"

    result = run(["images.jobs", "job-1", "--wait", "--preview", str(preview)], api)

    assert result.exit_code == 0, result.output
    assert preview.read_bytes() == b"RIFF webp 3"


def test_a_job_without_previews_leaves_no_file(tmp_path: Path) -> None:
    api = PreviewApi([job_view("started", 1, 2), job_view("done", 2, 2, result=DONE_RESULT)])
    preview = tmp_path / "live.webp"

    result = run(["images.generate", "a fox", "--preview", str(preview)], api)

    assert result.exit_code == 0, result.output
    assert not preview.exists() and "/api/images/jobs/job-1/preview" not in api.paths


def test_preview_needs_waiting_and_a_directory_that_exists(tmp_path: Path) -> None:
    api = PreviewApi(RUNNING)

    no_wait = run(["images.generate", "a fox", "--no-wait", "--preview", str(tmp_path / "p.webp")], api)
    nowhere = run(["images.generate", "a fox", "--preview", str(tmp_path / "missing" / "p.webp")], api)
    no_id = run(["images.jobs", "--preview", str(tmp_path / "p.webp")], api)

    assert no_wait.exit_code == 2 and "--preview is written while waiting" in no_wait.output
    assert nowhere.exit_code == 2 and "does not exist" in nowhere.output
    assert no_id.exit_code == 2 and "give its ID and --wait" in no_id.output
    assert "/api/images/generate" not in api.paths  # refused before anything was queued
