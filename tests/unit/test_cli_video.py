"""kitty-cli's video options as a user meets them: `images.generate --video` sends a video request,
prints the clip's key (its poster on stderr), downloads the MP4 through its videoRef with --out, and
`images.select KEY.mp4` prints the videoRef; against a scripted API behind ``httpx.MockTransport``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.unit.test_cli import DOWNLOAD_HOST, FakeApi, assert_no_traceback, job_view, run

CLIP_KEY = "images/20240501_120300_dddddddd.mp4"
POSTER_KEY = CLIP_KEY.removesuffix(".mp4") + ".poster.webp"
VIDEO_RESULT = {
    "png_key": CLIP_KEY,
    "meta_key": CLIP_KEY.removesuffix(".mp4") + ".json",
    "images": [],
    "videos": [
        {
            "key": CLIP_KEY,
            "poster_key": POSTER_KEY,
            "meta_key": CLIP_KEY.removesuffix(".mp4") + ".json",
            "frames": 16,
            "fps": 8,
            "width": 64,
            "height": 64,
            "seed": 7,
        }
    ],
}


def mp4_bytes(key: str) -> bytes:
    return b"\x00\x00\x00\x18ftypisom fake " + key.encode()


class FakeVideoApi(FakeApi):
    """`FakeApi` whose job renders a clip: `select` on an ``.mp4`` key answers a videoRef, and the
    object store serves the clip's bytes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__([job_view("done", result=VIDEO_RESULT)], **kwargs)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.url.host == DOWNLOAD_HOST and path.endswith(".mp4"):
            self.requests.append(request)
            return httpx.Response(200, content=mp4_bytes(path.lstrip("/")))
        if path == "/api/images/select":
            key = json.loads(request.content)["key"]
            if key.endswith(".mp4"):
                self.requests.append(request)
                poster = key.removesuffix(".mp4") + ".poster.webp"
                ref = {
                    "downloadUrl": f"http://{DOWNLOAD_HOST}/{key}?sig=v",
                    "storageUri": f"s3://kitty/{key}",
                    "posterUrl": f"http://{DOWNLOAD_HOST}/{poster}?sig=v",
                }
                return httpx.Response(200, json={"videoRef": ref})
        return super().__call__(request)


def test_generate_video_sends_the_video_fields_under_their_wire_names() -> None:
    api = FakeVideoApi()
    args = ["images.generate", "a fox running", "--video", "--model", "tiny-animatediff", "--frames", "16"]
    args += ["--fps", "8", "--seed", "7", "--no-wait"]

    result = run(args, api)

    assert result.exit_code == 0, result.output
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "a fox running",
            "kind": "video",
            "model": "tiny-animatediff",
            "frames": 16,
            "fps": 8,
            "seed": 7,
        }
    ]


def test_generate_video_from_a_stored_image_needs_no_prompt_and_sends_the_svd_settings() -> None:
    api = FakeVideoApi()
    key = "images/20240501_120200_bbbbbbbb.png"
    args = ["images.generate", "--video", "--model", "svd", "--image", key, "--motion-bucket-id", "180"]
    args += ["--noise-aug-strength", "0.1", "--no-wait"]

    result = run(args, api)

    assert result.exit_code == 0, result.output
    (body,) = api.bodies("/api/images/generate")
    assert body == {
        "kind": "video",
        "model": "svd",
        "image": key,
        "motion_bucket_id": 180,
        "noise_aug_strength": 0.1,
    }  # no prompt: Stable Video Diffusion refuses one


def test_an_image_job_still_needs_its_prompt() -> None:
    api = FakeApi()

    result = run(["images.generate", "--model", "tiny-sd15"], api)

    assert result.exit_code == 2, result.output
    assert "Missing argument 'PROMPT'" in result.stderr
    assert "/api/images/generate" not in api.paths()


def test_an_image_job_sends_no_kind() -> None:
    api = FakeApi()

    result = run(["images.generate", "a fox", "--no-wait"], api)

    assert result.exit_code == 0, result.output
    assert "kind" not in api.bodies("/api/images/generate")[0]


def test_finished_video_job_prints_the_clip_key_and_its_poster() -> None:
    result = run(["images.generate", "a fox running", "--video"], FakeVideoApi())

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [CLIP_KEY]  # stdout stays data: the clip's key
    assert f"Poster of {CLIP_KEY}: {POSTER_KEY}" in result.stderr


def test_generate_video_out_downloads_the_clip_through_its_video_ref(tmp_path: Path) -> None:
    api = FakeVideoApi()
    out = tmp_path / "clip.mp4"

    result = run(["--api-key", "s3cret", "images.generate", "a fox", "--video", "--out", str(out)], api)

    assert result.exit_code == 0, result.output
    assert out.read_bytes() == mp4_bytes(CLIP_KEY)
    assert f"Saved {out} " in result.stderr
    downloads = [r for r in api.requests if r.url.host == DOWNLOAD_HOST]
    assert [r.url.path for r in downloads] == [f"/{CLIP_KEY}"]
    assert all("x-api-key" not in r.headers for r in downloads)  # the key stays with the gateway


def test_video_options_out_of_range_are_refused_before_queueing() -> None:
    api = FakeVideoApi()

    too_many = run(["images.generate", "a fox", "--video", "--frames", "500"], api)
    without_video = run(["images.generate", "a fox", "--frames", "16"], api)

    assert too_many.exit_code == 1, too_many.output
    assert_no_traceback(too_many)
    assert "frames" in too_many.stderr and "64" in too_many.stderr
    assert without_video.exit_code == 2, without_video.output
    assert "--frames needs --video" in without_video.stderr
    assert "/api/images/generate" not in api.paths()


def test_jobs_shows_a_video_jobs_clip_and_poster() -> None:
    result = run(["images.jobs", "job-1"], FakeVideoApi())

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("video") and CLIP_KEY in line and "16 frames, 8 fps" in line for line in lines)
    assert any(line.startswith("poster") and POSTER_KEY in line for line in lines)
    assert not any(line.startswith("images") for line in lines)


def test_select_a_clip_key_prints_its_video_ref() -> None:
    api = FakeVideoApi()

    result = run(["images.select", CLIP_KEY], api)

    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert set(answer) == {"videoRef"}
    assert answer["videoRef"]["downloadUrl"] == f"http://{DOWNLOAD_HOST}/{CLIP_KEY}?sig=v"
    assert answer["videoRef"]["posterUrl"].endswith(".poster.webp?sig=v")
    assert api.bodies("/api/images/select") == [{"key": CLIP_KEY}]
