"""kitty-cli as a user meets it: data on stdout, one clear error line on stderr, exit codes, and the
requests it sends, against a scripted API behind ``httpx.MockTransport``."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.shell_completion import BashComplete
from click.testing import CliRunner, Result

REPO_ROOT = Path(__file__).resolve().parents[2]
try:
    import kitty_cli  # noqa: F401
except ImportError:  # not installed: import it from the source tree, as `pip install -e .` would
    sys.path.insert(0, str(REPO_ROOT / "cli"))

from kitty_cli.context import CliState  # noqa: E402
from kitty_cli.main import cli  # noqa: E402
from kitty_cli.render import ProgressLine  # noqa: E402

from services.contracts import ApiError, ImagesClient, JobView  # noqa: E402
from services.contracts.client import ServerSentEvent, iter_sse  # noqa: E402

GATEWAY = "http://gateway.test:8080"
IMAGE_KEYS = ["images/20240501_120300_cccccccc.png", "images/20240501_120200_bbbbbbbb.png"]


def error_body(code: str, message: str, remediation: list[str]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "remediation": remediation, "detail": None}}


def job_view(status: str, step: int = 0, total: int = 0, **extra: Any) -> dict[str, Any]:
    return {"job_id": "job-1", "status": status, "progress": {"step": step, "total": total}, **extra}


DONE_RESULT = {
    "png_key": IMAGE_KEYS[0],
    "meta_key": IMAGE_KEYS[0].replace(".png", ".json"),
    "images": [{"key": key, "meta_key": key.replace(".png", ".json")} for key in IMAGE_KEYS],
}
LATEST = {
    "items": [
        {
            "key": "images/20240501_120300_cccccccc.png",
            "size": 1_572_864,
            "last_modified": "2024-05-01T12:03:00+00:00",
            "prompt": "a watercolor fox\nin the snow, \x1b[31mred\x1b[0m scarf, soft light over the hills",
            "model": "sdxl_base",
            "width": 1024,
            "height": 768,
            "seed": 7,
            "preset": "photoreal",
            "quality": "pro",
        },
        {
            "key": "images/20240501_120200_bbbbbbbb.png",
            "size": 2048,
            "last_modified": "2024-05-01T12:02:00+00:00",
            "prompt": "雪の中の狐",
            "model": "tiny-sd15",
            "width": 64,
            "height": 64,
        },
        {  # an image indexed by an older service: no card fields
            "key": "images/20240501_120100_aaaaaaaa.png",
            "size": 512,
            "last_modified": "2024-05-01T12:01:00+00:00",
        },
    ]
}

MODELS = {
    "models": [
        {
            "name": "sdxl_base",
            "local": True,
            "refiner": "sdxl_refiner",
            "defaults": {"width": 1024, "height": 1024, "steps": 30, "cfg": 7.0},
        },
        {"name": "tiny-sd15", "local": True, "defaults": {"width": 64, "height": 64, "steps": 4}},
        {"name": "flux_schnell", "local": False, "defaults": {"steps": 4, "cfg": 0.0}},
    ],
    "default": "tiny-sd15",
}

QUALITIES = {
    "low": {"steps": 20, "cfg": 6.0},
    "standard": {"steps": 30, "cfg": 7.0},
    "pro": {"steps": 50, "cfg": 8.0},
}
PRESETS = {
    "presets": [
        {
            "name": "photoreal",
            "title": "Photoreal portrait",
            "description": "A natural-looking photograph of a person. No plastic skin.",
            "prompt_template": "RAW photo, {prompt}, natural skin texture",
            "negative_prompt": "plastic skin",
            "defaults": {"width": 832, "height": 1024, "quality": "standard"},
            "qualities": QUALITIES,
            "inputs": {"prompt": {"type": "text", "required": True, "description": "who"}},
        },
        {
            "name": "cinematic",
            "title": "Cinematic still",
            "description": "A frame from a film.",
            "prompt_template": "cinematic film still, {prompt}",
            "negative_prompt": "flat",
            "defaults": {"width": 1024, "height": 576, "quality": "standard"},
            "qualities": QUALITIES,
            "engines": ["diffusers", "comfyui"],
            "inputs": {
                "prompt": {"type": "text", "required": True, "description": "the shot"},
                "reference_image": {"type": "image", "required": False, "description": "a look"},
            },
            "requires_consent": True,
            "safety_notes": ["Ask first."],
            "failure_modes": [{"code": "ENGINE_TIMEOUT", "when": "too slow", "remediation": ["Use low."]}],
            "steps": [
                {"kind": "upscale", "scale": 2},
                {"kind": "postprocess", "ops": [{"op": "film_grain"}]},
            ],
        },
        {
            "name": "storyboard",
            "title": "Storyboard frame",
            "description": "A quick grayscale sketch of a shot.",
            "prompt_template": "storyboard panel, {prompt}",
            "negative_prompt": "color",
            "defaults": {"width": 1024, "height": 576, "quality": "low"},
            "qualities": QUALITIES,
        },
    ]
}

ENGINES = {
    "engines": [
        {
            "engine_id": "diffusers",
            "status": "ready",
            "detail": "2 models registered",
            "version": None,
            "last_check": "2024-05-01T12:00:00+00:00",
            "workers": 1,
        },
        {
            "engine_id": "comfyui",
            "status": "offline",
            "detail": "ComfyUI is not reachable at http://127.0.0.1:8188",
            "version": None,
            "last_check": "2024-05-01T12:00:00+00:00",
            "workers": 0,
        },
    ]
}


def sse(views: list[dict[str, Any]]) -> bytes:
    """The service's event stream for ``views``, with a keep-alive comment and a foreign event mixed in."""
    frames = [": keep-alive\n\n", "event: ping\ndata: {}\n\n"]
    frames += [f"event: job\ndata: {json.dumps(view)}\n\n" for view in views]
    return "".join(frames).encode()


def breaking_stream(views: list[dict[str, Any]]) -> Iterator[bytes]:
    """An event stream whose connection drops after ``views``."""
    yield sse(views)
    raise httpx.ReadError("connection reset by peer")


DOWNLOAD_HOST = "minio.test"


def png_bytes(key: str) -> bytes:
    return b"\x89PNG fake " + key.encode()


class FakeApi:
    """A scripted gateway: job views are served in order, the last one repeating; requests are kept.

    ``events`` says how ``/jobs/job-1/events`` answers: ``"stream"`` (every job view as an event),
    ``"404"`` (an older service without the route), or ``"break"`` (the first ``break_after`` views,
    then a dropped connection).
    """

    def __init__(
        self,
        job_views: list[dict[str, Any]] | None = None,
        *,
        events: str = "stream",
        break_after: int = 1,
        cancel_view: dict[str, Any] | None = None,
    ) -> None:
        self.job_views = list(job_views or [job_view("done", result=DONE_RESULT)])
        self.events = events
        self.break_after = break_after
        self.cancel_view = cancel_view or job_view("canceled")
        self.requests: list[httpx.Request] = []

    def next_view(self) -> dict[str, Any]:
        return self.job_views.pop(0) if len(self.job_views) > 1 else self.job_views[0]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.url.host == DOWNLOAD_HOST:
            return httpx.Response(200, content=png_bytes(path.lstrip("/")))
        if path in ("/api/images/generate", "/api/images/rerun", "/api/images/upscale"):
            return httpx.Response(202, json={"job_id": "job-1", "status": "queued"})
        if path == "/api/images/jobs/job-1":
            return httpx.Response(200, json=self.next_view())
        if path == "/api/images/jobs/job-1/events" and self.events != "404":
            if self.events == "break":
                streamed = [self.next_view() for _ in range(self.break_after)]
                return httpx.Response(
                    200, headers={"content-type": "text/event-stream"}, content=breaking_stream(streamed)
                )
            views = [self.job_views.pop(0) for _ in range(len(self.job_views) - 1)] + self.job_views
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(views))
        if path == "/api/images/jobs/job-1/cancel":
            return httpx.Response(200, json=self.cancel_view)
        if path == "/api/images/jobs":
            failed = {**job_view("error"), "job_id": "job-2", "request": {"prompt": "a red fox"}}
            failed["error"] = {"code": "ENGINE_ERROR", "message": "boom", "remediation": []}
            return httpx.Response(200, json={"jobs": [failed]})
        if path == "/api/images/jobs/job-2/retry":
            return httpx.Response(202, json={"job_id": "job-3", "status": "queued"})
        if path.startswith("/api/images/jobs/"):
            return httpx.Response(404, json=error_body("JOB_NOT_FOUND", "no such job", ["Check the id."]))
        if path == "/api/images/latest":
            limit = int(request.url.params.get("limit", 36))
            return httpx.Response(200, json={"items": LATEST["items"][:limit]})
        if path == "/api/images/select":
            key = json.loads(request.content)["key"]
            return httpx.Response(
                200,
                json={
                    "imageRef": {
                        "downloadUrl": f"http://{DOWNLOAD_HOST}/{key}?sig=x",
                        "storageUri": f"s3://kitty/{key}",
                    }
                },
            )
        if path.startswith("/api/images/items/") and request.method == "DELETE":
            return httpx.Response(204)
        if path == "/api/images/engines":
            return httpx.Response(200, json=ENGINES)
        if path == "/api/images/models":
            return httpx.Response(200, json=MODELS)
        if path == "/api/images/presets":
            return httpx.Response(200, json=PRESETS)
        if path == "/api/images/uploads" and request.method == "POST":
            number = sum(1 for r in self.requests if r.url.path == path)
            content_type = request.headers["content-type"]
            key = f"uploads/20240501_130000_0000000{number}.{content_type.split('/')[1]}"
            body = {
                "key": key,
                "width": 64,
                "height": 64,
                "content_type": content_type,
                "size": len(request.content),
            }
            return httpx.Response(201, json=body)
        return httpx.Response(404, json=error_body("NOT_FOUND", "no route", []))

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def run(args: list[str], handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Result:
    made: list[tuple[str, str | None]] = []

    def make_client(base_url: str, api_key: str | None) -> ImagesClient:
        made.append((base_url, api_key))
        return ImagesClient(base_url, api_key, transport=httpx.MockTransport(handler))

    state = CliState(make_client=make_client, poll_interval=0)
    return CliRunner().invoke(cli, ["--url", GATEWAY, *args], obj=state, **kwargs)


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_generate_no_wait_prints_the_job_id() -> None:
    api = FakeApi()

    result = run(["images.generate", "a red fox", "--no-wait", "--width", "512", "--steps", "4"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout == "job-1\n"
    assert api.bodies("/api/images/generate") == [{"prompt": "a red fox", "width": 512, "steps": 4}]


def test_generate_sends_every_option_under_its_wire_name() -> None:
    api = FakeApi()
    args = ["--model", "sd15_base", "--height", "768", "--cfg", "6.5", "--seed", "7", "--negative", "blurry"]
    args += ["--num-images", "2", "--engine", "diffusers", "--scheduler", "euler_a", "--refiner"]

    result = run(["images.generate", "a fox", "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "a fox",
            "model": "sd15_base",
            "height": 768,
            "cfg": 6.5,
            "seed": 7,
            "negative_prompt": "blurry",
            "num_images": 2,
            "engine": "diffusers",
            "scheduler": "euler_a",
            "refiner": True,
        }
    ]


PROGRESSING = [
    job_view("queued"),
    job_view("started", 1, 3),
    job_view("started", 3, 3),
    job_view("done", 3, 3, result=DONE_RESULT),
]


def test_generate_follows_the_event_stream_and_prints_the_keys() -> None:
    api = FakeApi(list(PROGRESSING))

    result = run(["images.generate", "a red fox"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    assert result.stderr.splitlines()[:3] == [
        "queued   job job-1",
        "started  [##########--------------------] 1/3  33%",
        "started  [##############################] 3/3 100%",
    ]
    assert "\r" not in result.stderr  # not a terminal: plain lines
    assert api.paths() == ["/api/images/generate", "/api/images/jobs/job-1/events"]  # no polling
    events = api.requests[1]
    assert events.headers["accept"] == "text/event-stream"
    assert events.extensions["timeout"]["read"] > 15  # the service's keep-alive interval


def test_generate_polls_when_the_service_has_no_event_stream() -> None:
    api = FakeApi(list(PROGRESSING), events="404")

    result = run(["images.generate", "a red fox"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    assert "1/3" in result.stderr and "3/3" in result.stderr
    assert api.paths()[1] == "/api/images/jobs/job-1/events"
    assert api.paths()[2:] == ["/api/images/jobs/job-1"] * 4


def test_generate_keeps_following_by_polling_when_the_stream_drops() -> None:
    api = FakeApi(list(PROGRESSING), events="break", break_after=2)

    result = run(["images.generate", "a red fox"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    progress = result.stderr.splitlines()
    assert [line.split()[0] for line in progress] == ["queued", "started", "started", "done"]
    assert api.paths()[2:] == ["/api/images/jobs/job-1"] * 2  # the rest came by polling
    assert "Error" not in result.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_redraws_one_line_on_a_terminal() -> None:
    screen = Terminal()
    progress = ProgressLine(screen)
    for view in PROGRESSING:
        progress(JobView.model_validate(view))
    progress.finish()

    drawn = screen.getvalue()
    assert drawn.count("\n") == 1 and drawn.endswith("\n")
    frames = drawn.rstrip("\n").split("\r")[1:]
    assert [frame.split()[0] for frame in frames] == ["queued", "started", "started", "done"]
    assert len(frames[-1]) >= len(frames[-2])  # a shorter line is padded over the longer one


NO_WORKER = "a worker: none serves engine 'comfyui' now; start one with `images-worker --engine comfyui`"
WAITING = [
    job_view("queued", engine="comfyui", waiting_for=NO_WORKER),
    job_view("queued", engine="comfyui", waiting_for="its turn: 1 job ahead"),
    job_view("started", 1, 3, engine="comfyui"),
    job_view("done", 3, 3, engine="comfyui", result=DONE_RESULT),
]


def test_generate_says_on_stderr_what_a_queued_job_waits_for_each_time_it_changes() -> None:
    result = run(["images.generate", "a red fox"], FakeApi(list(WAITING)))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    assert result.stderr.splitlines() == [
        "queued   job job-1",  # once: the second view changed only what it waits for
        f"  waiting for {NO_WORKER}",
        "  waiting for its turn: 1 job ahead",
        "started  [##########--------------------] 1/3  33%",
        "done     job job-1",
    ]


def test_progress_line_on_a_terminal_keeps_each_reason_above_the_redrawn_line() -> None:
    screen = Terminal()
    progress = ProgressLine(screen)
    for view in WAITING:
        progress(JobView.model_validate(view))
    progress.finish()

    kept = screen.getvalue().split("\n")
    assert [line.split("\r")[-1].rstrip() for line in kept[:2]] == [
        f"  waiting for {NO_WORKER}",
        "  waiting for its turn: 1 job ahead",
    ]
    frames = kept[2].split("\r")[1:]
    assert [frame.split()[0] for frame in frames] == ["queued", "started", "done"]
    assert kept[3:] == [""]


def test_generate_json_prints_the_final_job_view() -> None:
    result = run(["images.generate", "a red fox", "--json"], FakeApi())

    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["status"] == "done"
    assert [image["key"] for image in view["result"]["images"]] == IMAGE_KEYS


def test_generate_error_job_exits_1_with_code_and_remediation() -> None:
    failed = job_view(
        "error",
        error={
            "code": "MODEL_NOT_FOUND",
            "message": "no model named 'nope'",
            "remediation": ["List models with `kitty-images models list`."],
            "detail": None,
        },
    )

    result = run(["images.generate", "a fox", "--model", "nope"], FakeApi([failed]))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Error [MODEL_NOT_FOUND]: no model named 'nope'" in result.stderr
    assert "  → List models with `kitty-images models list`." in result.stderr
    assert_no_traceback(result)


def test_generate_canceled_job_exits_1() -> None:
    result = run(["images.generate", "a fox"], FakeApi([job_view("canceled")]))

    assert result.exit_code == 1
    assert "Error [CANCELED]" in result.stderr


def test_generate_uploads_local_inputs_and_sends_their_keys(tmp_path: Path) -> None:
    photo, mask = tmp_path / "photo.JPG", tmp_path / "mask.png"
    photo.write_bytes(b"jpeg bytes")
    mask.write_bytes(b"png bytes")
    api = FakeApi()
    args = ["--image", str(photo), "--mask", str(mask), "--strength", "0.6"]
    args += ["--lora", "film_grain:0.8", "--lora", "watercolor"]

    result = run(["images.generate", "a fox in autumn", "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    uploads = [r for r in api.requests if r.url.path == "/api/images/uploads"]
    assert [(r.headers["content-type"], r.content) for r in uploads] == [
        ("image/jpeg", b"jpeg bytes"),
        ("image/png", b"png bytes"),
    ]
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "a fox in autumn",
            "image": "uploads/20240501_130000_00000001.jpeg",
            "mask": "uploads/20240501_130000_00000002.png",
            "strength": 0.6,
            "loras": [{"name": "film_grain", "weight": 0.8}, {"name": "watercolor"}],  # weight: the default
        }
    ]
    assert f"Uploaded {photo} as uploads/" in result.stderr


def test_generate_image_takes_a_gallery_number_or_a_key() -> None:
    api = FakeApi()

    by_number = run(["images.generate", "again", "--no-wait", "--image", "2"], api)
    by_key = run(["images.generate", "again", "--no-wait", "--image", "images/x.png"], api)

    assert by_number.exit_code == by_key.exit_code == 0, by_number.output + by_key.output
    assert [body["image"] for body in api.bodies("/api/images/generate")] == [IMAGE_KEYS[1], "images/x.png"]
    assert "/api/images/uploads" not in api.paths()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--mask", "mask.png"], "need `image`"),
        (["--image", "photo.gif"], "not a PNG, JPEG or WebP"),
        (["--image", "photo.png", "--strength", "1.5"], "strength"),
        (["--lora", "grain:heavy"], "NAME:WEIGHT"),
        (["--lora", "grain:3"], "NAME:WEIGHT"),
        (["--image", "missing.png"], "no such file 'missing.png'"),
        (["--image", "./photos/missing.jpg"], "no such file"),
        (["--image", "photo.png", "--mask", "~/masks/missing.png"], "no such file"),
    ],
)
def test_generate_refuses_bad_inputs_before_uploading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("mask.png", "photo.gif", "photo.png"):
        (tmp_path / name).write_bytes(b"bytes")
    api = FakeApi()

    result = run(["images.generate", "a fox", *args], api)

    assert result.exit_code != 0
    assert words in result.output
    assert api.requests == []
    assert_no_traceback(result)


def test_generate_rejects_bad_options_before_queueing() -> None:
    api = FakeApi()

    result = run(["images.generate", "a fox", "--width", "100"], api)

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [VALIDATION_ERROR]: width")
    assert api.requests == []


# --- guided generation and upscaling --------------------------------------------------------------
def test_generate_sends_a_control_a_reference_with_consent_and_the_hires_fix(tmp_path: Path) -> None:
    pose, face = tmp_path / "pose.png", tmp_path / "face.webp"
    pose.write_bytes(b"skeleton png")
    face.write_bytes(b"face webp")
    api = FakeApi()
    args = ["--control-image", str(pose), "--control-type", "pose", "--control-weight", "0.8"]
    args += ["--control-start", "0.1", "--control-end", "0.9"]
    args += ["--reference-image", str(face), "--reference-weight", "0.7", "--consent"]
    args += ["--hires-scale", "1.5", "--hires-strength", "0.4"]

    result = run(["images.generate", "a dancer on a stage", "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    uploads = [r for r in api.requests if r.url.path == "/api/images/uploads"]
    assert [(r.headers["content-type"], r.content) for r in uploads] == [
        ("image/png", b"skeleton png"),
        ("image/webp", b"face webp"),
    ]
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "a dancer on a stage",
            "controls": [
                {
                    "image": "uploads/20240501_130000_00000001.png",
                    "type": "pose",
                    "weight": 0.8,
                    "start": 0.1,
                    "end": 0.9,
                }
            ],
            "reference_image": "uploads/20240501_130000_00000002.webp",
            "reference_weight": 0.7,
            "consent": True,
            "hires": {"scale": 1.5, "strength": 0.4},
        }
    ]
    assert f"Uploaded {pose} as uploads/" in result.stderr and f"Uploaded {face} as uploads/" in result.stderr


def test_generate_guide_inputs_take_keys_and_numbers_and_leave_defaults_to_the_service() -> None:
    api = FakeApi()
    args = ["--control-image", "uploads/edges.png", "--control-type", "canny"]
    args += ["--reference-image", "2", "--hires"]

    result = run(["images.generate", "a fox", "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "a fox",
            "controls": [{"image": "uploads/edges.png", "type": "canny"}],  # weight, start, end: defaults
            "reference_image": IMAGE_KEYS[1],  # image 2 of images.latest
            "hires": {},  # the service's scale 2 and strength 0.5
        }
    ]
    assert "/api/images/uploads" not in api.paths()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--control-image", "edges.png"],
            "--control-image needs --control-type: one of canny, depth, pose, scribble",
        ),
        (["--control-type", "depth"], "--control-type needs --control-image"),
        (["--control-weight", "0.5"], "--control-weight needs --control-image"),
        (["--reference-weight", "0.5"], "--reference-weight needs --reference-image"),
        (["--control-image", "edges.png", "--control-type", "sketch"], "'sketch' is not one of"),
        (
            ["--control-image", "edges.png", "--control-type", "canny", "--control-weight", "3"],
            "--control-weight: Input should be less than or equal to 2",
        ),
        (
            [
                "--control-image",
                "edges.png",
                "--control-type",
                "canny",
                "--control-start",
                "0.8",
                "--control-end",
                "0.2",
            ],
            "must be below `end`",
        ),
        (["--reference-image", "face.gif"], "not a PNG, JPEG or WebP"),
        (["--reference-image", "missing.png"], "no such file 'missing.png'"),
        (["--hires-scale", "8"], "--hires-scale: Input should be less than or equal to 4"),
    ],
)
def test_generate_refuses_bad_guide_options_before_uploading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("edges.png", "face.gif"):
        (tmp_path / name).write_bytes(b"bytes")
    api = FakeApi()

    result = run(["images.generate", "a fox", *args], api)

    assert result.exit_code != 0
    assert words in result.output
    assert api.requests == []
    assert_no_traceback(result)


def test_upscale_by_number_queues_the_key_follows_the_job_and_prints_the_new_key() -> None:
    api = FakeApi(list(PROGRESSING))

    result = run(["images.upscale", "2", "--scale", "4"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    assert f"Upscaling #2: {LATEST['items'][1]['key']}" in result.stderr
    assert "started  [##############################] 3/3 100%" in result.stderr
    assert api.bodies("/api/images/upscale") == [{"key": LATEST["items"][1]["key"], "scale": 4}]
    assert api.paths()[-1] == "/api/images/jobs/job-1/events"


def test_upscale_by_key_with_a_model_no_wait_prints_the_job_id() -> None:
    api = FakeApi()

    result = run(["images", "upscale", IMAGE_KEYS[0], "--model", "realesrgan_x2", "--no-wait"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout == "job-1\n" and result.stderr == ""
    assert api.bodies("/api/images/upscale") == [{"key": IMAGE_KEYS[0], "scale": 2, "model": "realesrgan_x2"}]
    assert api.paths() == ["/api/images/upscale"]


def test_upscale_out_saves_the_new_image_and_a_bad_scale_queues_nothing(tmp_path: Path) -> None:
    api = FakeApi()
    out = tmp_path / "big.png"

    saved = run(["images.upscale", IMAGE_KEYS[0], "--out", str(out)], api)
    refused = run(["images.upscale", IMAGE_KEYS[0], "--scale", "3"], api)

    assert saved.exit_code == 0, saved.output
    assert out.read_bytes() == png_bytes(IMAGE_KEYS[0])
    assert refused.exit_code == 2 and "'3' is not one of '2', '4'" in refused.stderr
    assert len(api.bodies("/api/images/upscale")) == 1


def test_upscale_refusal_is_one_clear_line() -> None:
    def refusing(request: httpx.Request) -> httpx.Response:
        body = error_body("KEY_NOT_FOUND", "no image 'images/gone.png'", ["List images with images.latest."])
        return httpx.Response(404, json=body)

    result = run(["images.upscale", "images/gone.png"], refusing)

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [KEY_NOT_FOUND]: no image 'images/gone.png'")
    assert_no_traceback(result)


def test_client_upscale_posts_the_request_and_answers_the_job() -> None:
    api = FakeApi()
    with ImagesClient(GATEWAY, transport=httpx.MockTransport(api)) as client:
        view = client.upscale("images/a.png", scale=4)

    assert (view.job_id, view.status.value) == ("job-1", "queued")
    assert api.bodies("/api/images/upscale") == [{"key": "images/a.png", "scale": 4}]


def test_api_error_from_the_gateway_is_one_clear_line() -> None:
    def rejecting(request: httpx.Request) -> httpx.Response:
        body = error_body("UNAUTHORIZED", "missing or wrong API key", ["Set KITTY_API_KEY."])
        return httpx.Response(401, json=body)

    result = run(["images.latest"], rejecting)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error [UNAUTHORIZED]: missing or wrong API key",
        "  → Set KITTY_API_KEY.",
    ]
    assert_no_traceback(result)


def test_engine_offline_refusal_shows_its_message_and_remediation() -> None:
    message = "engine 'comfyui' cannot run jobs now: no worker serves it and its server is not available"
    steps = ["Start the comfyui server, then a worker for it: `images-worker --engine comfyui`."]

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json=error_body("ENGINE_OFFLINE", message, steps))

    result = run(["images.generate", "a fox", "--engine", "comfyui"], refusing)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"Error [ENGINE_OFFLINE]: {message}", f"  → {steps[0]}"]
    assert_no_traceback(result)


def columns(text: str) -> int:
    """Terminal columns of ``text`` (CJK characters take two), measured independently of the CLI."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def test_latest_numbers_newest_first_in_aligned_columns() -> None:
    result = run(["images.latest", "--limit", "3"], FakeApi())

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["#", "CREATED", "(UTC)", "MODEL", "SIZE", "PRESET", "PROMPT", "KEY"]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert [row.split()[-1] for row in rows] == [item["key"] for item in LATEST["items"]]
    assert rows[0].split()[1:6] == ["2024-05-01", "12:03:00", "sdxl_base", "1024x768", "photoreal/pro"]
    assert rows[1].split()[3:7] == ["tiny-sd15", "64x64", "-", "雪の中の狐"]
    assert rows[2].split()[3:7] == ["-", "-", "-", "-"]  # an older item without card fields
    spans = [cell_spans(line) for line in (header, *rows)]
    assert all(len(line_spans) == 7 for line_spans in spans)
    for column in (1, 2, 4, 5, 6):  # CREATED, MODEL, PRESET, PROMPT, KEY: left-aligned, start together
        assert len({line_spans[column][0] for line_spans in spans}) == 1, header.split()[column]
    for column in (0, 3):  # #, SIZE: right-aligned, end together
        assert len({line_spans[column][1] for line_spans in spans}) == 1


def cell_spans(line: str) -> list[tuple[int, int]]:
    """(first, past-last) terminal column of each cell; cells are split by two or more spaces."""
    return [
        (columns(line[: m.start()]), columns(line[: m.end()])) for m in re.finditer(r"\S+(?: \S+)*", line)
    ]


def test_latest_shows_a_one_line_prompt_excerpt_without_control_characters() -> None:
    result = run(["images.latest"], FakeApi())

    first = result.stdout.splitlines()[1]
    prompt = first[first.index("a watercolor") : first.index("images/")].rstrip()
    assert prompt.startswith("a watercolor fox in the snow, ")  # the newline became a space
    assert "\x1b" not in result.stdout
    assert prompt.endswith("…") and columns(prompt) <= 40
    assert len(result.stdout.splitlines()) == 4


def test_latest_with_no_images_says_how_to_make_one_on_stderr() -> None:
    def empty(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": []})

    result = run(["images.latest"], empty)

    assert result.exit_code == 0
    assert result.stdout == ""
    assert "images.generate" in result.stderr


def test_latest_json_is_the_listing() -> None:
    api = FakeApi()

    result = run(["images.latest", "--limit", "2", "--json"], api)

    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert [item["key"] for item in items] == [item["key"] for item in LATEST["items"][:2]]
    assert api.requests[0].url.params["limit"] == "2"


def test_select_by_index_resolves_the_key_from_the_newest_first_listing() -> None:
    api = FakeApi()

    result = run(["images.select", "2"], api)

    assert result.exit_code == 0, result.output
    chosen = LATEST["items"][1]["key"]
    assert int(api.requests[0].url.params["limit"]) >= 2
    assert api.bodies("/api/images/select") == [{"key": chosen}]
    assert json.loads(result.stdout) == {
        "imageRef": {
            "downloadUrl": f"http://{DOWNLOAD_HOST}/{chosen}?sig=x",
            "storageUri": f"s3://kitty/{chosen}",
        }
    }


def test_select_by_key_skips_the_listing() -> None:
    api = FakeApi()
    key = "images/20240501_120100_aaaaaaaa.png"

    result = run(["images.select", key], api)

    assert result.exit_code == 0, result.output
    assert [r.url.path for r in api.requests] == ["/api/images/select"]
    assert json.loads(result.stdout)["imageRef"]["storageUri"] == f"s3://kitty/{key}"


def test_select_asks_for_a_delivery_format_only_when_one_is_chosen() -> None:
    api = FakeApi()
    key = "images/20240501_120100_aaaaaaaa.png"

    assert run(["images.select", key, "--format", "webp", "--quality", "80"], api).exit_code == 0
    assert run(["images.select", key, "--format", "jpeg"], api).exit_code == 0
    assert api.bodies("/api/images/select") == [
        {"key": key, "format": "webp", "quality": 80},
        {"key": key, "format": "jpeg"},
    ]
    refused = run(["images.select", key, "--format", "gif"], api)
    assert refused.exit_code == 2 and "gif" in refused.output


def test_select_past_the_end_of_the_listing_exits_1() -> None:
    result = run(["images.select", "9"], FakeApi())

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [KEY_NOT_FOUND]: there is no image #9")


def test_jobs_shows_the_job_and_its_images() -> None:
    human = run(["images.jobs", "job-1"], FakeApi())
    raw = run(["images.jobs", "job-1", "--json"], FakeApi())

    assert human.exit_code == 0, human.output
    assert "done" in human.stdout and IMAGE_KEYS[1] in human.stdout
    assert json.loads(raw.stdout)["job_id"] == "job-1"


def test_jobs_says_what_a_queued_job_waits_for() -> None:
    queued = run(["images.jobs", "job-1"], FakeApi([WAITING[0]]))
    started = run(["images.jobs", "job-1"], FakeApi([WAITING[2]]))

    assert queued.exit_code == 0, queued.output
    assert queued.stdout.splitlines()[:3] == [
        "job          job-1",
        "status       queued",
        f"waiting for  {NO_WORKER}",
    ]
    assert "waiting for" not in started.stdout


def test_jobs_shows_each_step_of_a_pipeline() -> None:
    steps = [
        {
            "index": 0,
            "kind": "generate",
            "job_id": "a" * 32,
            "status": "done",
            "progress": {"step": 4, "total": 4},
        },
        {
            "index": 1,
            "kind": "postprocess",
            "job_id": "b" * 32,
            "status": "error",
            "progress": {"step": 0, "total": 1},
            "error": {"code": "ENGINE_ERROR", "message": "boom"},
        },
    ]
    view = job_view("error", 4, 5, steps=steps, error={"code": "ENGINE_ERROR", "message": "boom"})

    result = run(["images.jobs", "job-1"], FakeApi([view]))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"step 1    generate      done 4/4  {'a' * 32}" in lines  # kinds padded to contact_sheet's
    assert f"step 2    postprocess   error 0/1 [ENGINE_ERROR]  {'b' * 32}" in lines


def test_jobs_shows_the_worker_and_a_storyboards_fan_in() -> None:
    steps = [
        {"index": i, "kind": "shot", "job_id": str(i) * 32, "status": "done", "after": []} for i in range(2)
    ]
    steps.append(
        {"index": 2, "kind": "contact_sheet", "job_id": "c" * 32, "status": "queued", "after": [0, 1]}
    )
    view = job_view("started", 4, 5, steps=steps)
    view["worker"], view["warm"] = "w-1", True

    lines = run(["images.jobs", "job-1"], FakeApi([view])).stdout.splitlines()

    assert "worker    w-1 (model warm)" in lines
    assert f"step 3    contact_sheet queued after 1, 2  {'c' * 32}" in lines


def test_jobs_unknown_id_exits_1() -> None:
    result = run(["images.jobs", "nope"], FakeApi())

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [JOB_NOT_FOUND]")


def test_gateway_url_and_api_key_come_from_the_environment() -> None:
    api = FakeApi()
    made: list[tuple[str, str | None]] = []

    def make_client(base_url: str, api_key: str | None) -> ImagesClient:
        made.append((base_url, api_key))
        return ImagesClient(base_url, api_key, transport=httpx.MockTransport(api))

    env = {"KITTY_GATEWAY_URL": "http://gw.example:9000", "KITTY_API_KEY": "s3cret"}
    result = CliRunner().invoke(cli, ["images.latest"], obj=CliState(make_client=make_client), env=env)

    assert result.exit_code == 0, result.output
    assert made == [("http://gw.example:9000", "s3cret")]
    assert str(api.requests[0].url).startswith("http://gw.example:9000/api/images/latest")
    assert api.requests[0].headers["x-api-key"] == "s3cret"


def test_gateway_down_exits_1_with_one_clear_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = CliRunner().invoke(cli, ["--url", f"http://127.0.0.1:{port}", "images.latest"], obj=CliState())

    assert result.exit_code == 1
    first, *steps = result.stderr.splitlines()
    assert first.startswith("Error [UPSTREAM_UNAVAILABLE]: ")
    assert f"127.0.0.1:{port}" in first
    assert steps and all(step.startswith("  → ") for step in steps)
    assert result.stdout == ""
    assert_no_traceback(result)


def test_unexpected_failure_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KITTY_DEBUG", raising=False)

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    result = run(["images.latest"], broken)

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [INTERNAL_ERROR]: unexpected RuntimeError: boom")
    assert_no_traceback(result)


def test_importing_the_cli_loads_neither_torch_nor_the_images_service() -> None:
    code = (
        "import sys, kitty_cli.main; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('services.images_service')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'cli'}"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_engines_prints_an_aligned_matrix_and_json() -> None:
    result = run(["images.engines"], FakeApi())
    assert result.exit_code == 0, result.output
    header, diffusers, comfyui = result.stdout.splitlines()
    assert header.split()[:4] == ["ENGINE", "STATUS", "WORKERS", "VERSION"]
    assert diffusers.split()[:3] == ["diffusers", "ready", "1"]
    assert comfyui.split()[:3] == ["comfyui", "offline", "0"] and "not reachable" in comfyui
    assert header.index("STATUS") == diffusers.index("ready") == comfyui.index("offline")

    as_json = run(["images.engines", "--json"], FakeApi())
    assert json.loads(as_json.stdout) == ENGINES


# --- generate --out -------------------------------------------------------------------------------
def test_generate_out_downloads_every_image_next_to_the_file(tmp_path: Path) -> None:
    api = FakeApi()
    out = tmp_path / "fox.png"

    result = run(
        ["--api-key", "s3cret", "images.generate", "a fox", "--num-images", "2", "--out", str(out)], api
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS  # stdout stays data
    second = tmp_path / "fox-2.png"
    assert out.read_bytes() == png_bytes(IMAGE_KEYS[0])
    assert second.read_bytes() == png_bytes(IMAGE_KEYS[1])
    assert f"Saved {out} " in result.stderr and f"Saved {second} " in result.stderr
    downloads = [r for r in api.requests if r.url.host == DOWNLOAD_HOST]
    assert [r.url.params["sig"] for r in downloads] == ["x", "x"]
    assert all("x-api-key" not in r.headers for r in downloads)  # the key stays with the gateway


def test_generate_json_with_out_keeps_stdout_parseable(tmp_path: Path) -> None:
    result = run(["images.generate", "a fox", "--json", "--out", str(tmp_path / "fox.png")], FakeApi())

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "done"
    assert (tmp_path / "fox.png").exists() and "Saved" in result.stderr


def test_generate_out_is_refused_before_queueing_when_it_cannot_be_written(tmp_path: Path) -> None:
    api = FakeApi()

    missing_dir = run(["images.generate", "a fox", "--out", str(tmp_path / "nope" / "fox.png")], api)
    no_wait = run(["images.generate", "a fox", "--out", str(tmp_path / "fox.png"), "--no-wait"], api)

    assert missing_dir.exit_code == 2 and "does not exist" in missing_dir.stderr
    assert no_wait.exit_code == 2 and "--no-wait" in no_wait.stderr
    assert api.requests == []


def test_generate_failed_job_writes_no_file(tmp_path: Path) -> None:
    result = run(
        ["images.generate", "a fox", "--out", str(tmp_path / "fox.png")], FakeApi([job_view("canceled")])
    )

    assert result.exit_code == 1
    assert list(tmp_path.iterdir()) == []


# --- jobs, cancel ---------------------------------------------------------------------------------
def test_jobs_wait_follows_the_job_to_its_end() -> None:
    api = FakeApi(list(PROGRESSING))

    result = run(["images.jobs", "job-1", "--wait"], api)

    assert result.exit_code == 0, result.output
    assert "3/3" in result.stderr
    assert "done" in result.stdout and IMAGE_KEYS[0] in result.stdout


def test_cancel_a_queued_job_prints_canceled() -> None:
    api = FakeApi()

    result = run(["images.cancel", "job-1"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout == "canceled\n"
    assert result.stderr == "Canceled job job-1.\n"
    assert [(r.method, r.url.path) for r in api.requests] == [("POST", "/api/images/jobs/job-1/cancel")]


def test_cancel_a_running_job_says_it_stops_at_the_next_step_and_can_wait_for_it() -> None:
    running = job_view("started", 2, 8)

    asked = run(["images.cancel", "job-1"], FakeApi(cancel_view=running))
    waited = run(["images.cancel", "job-1", "--wait"], FakeApi([job_view("canceled")], cancel_view=running))

    assert asked.stdout == "started\n" and "stops at its next step" in asked.stderr
    assert waited.exit_code == 0, waited.output
    assert waited.stdout == "canceled\n" and "stopped: canceled" in waited.stderr


def test_cancel_a_finished_job_leaves_it_done() -> None:
    result = run(
        ["images.cancel", "job-1", "--json"], FakeApi(cancel_view=job_view("done", result=DONE_RESULT))
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "done"
    assert "already ended (done)" in result.stderr


def test_cancel_unknown_job_exits_1() -> None:
    result = run(["images.cancel", "nope"], FakeApi())

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [JOB_NOT_FOUND]")


# --- models, delete -------------------------------------------------------------------------------
def test_models_marks_the_default_and_shows_source_refiner_size_and_steps() -> None:
    result = run(["images.models"], FakeApi())

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "DEFAULT", "SOURCE", "REFINER", "SIZE", "STEPS", "DESCRIPTION"]
    assert [row.split() for row in rows] == [
        ["sdxl_base", "-", "local", "sdxl_refiner", "1024x1024", "30"],
        ["tiny-sd15", "yes", "local", "-", "64x64", "4"],
        ["flux_schnell", "-", "hub", "-", "-", "4"],
    ]
    assert json.loads(run(["images.models", "--json"], FakeApi()).stdout)["default"] == "tiny-sd15"


# --- presets, quality, scheduler names, re-run ---------------------------------------------------
def test_presets_lists_name_title_size_and_qualities_with_the_default_marked() -> None:
    result = run(["images.presets"], FakeApi())

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert [cell for cell in re.split(r"\s{2,}", header)] == [
        "NAME",
        "TITLE",
        "SIZE",
        "QUALITIES (steps/cfg, * default)",
        "INPUTS (* required)",
        "AFTER",
    ]
    assert [re.split(r"\s{2,}", row) for row in rows] == [
        ["photoreal", "Photoreal portrait", "832x1024", "low 20/6, standard* 30/7, pro 50/8", "prompt*", "-"],
        [
            "cinematic",
            "Cinematic still",
            "1024x576",
            "low 20/6, standard* 30/7, pro 50/8",
            "prompt*, reference_image, consent*",
            "upscale → postprocess",
        ],
        ["storyboard", "Storyboard frame", "1024x576", "low* 20/6, standard 30/7, pro 50/8", "-", "-"],
    ]
    listed = json.loads(run(["images", "presets", "--json"], FakeApi()).stdout)
    assert listed["presets"][0]["prompt_template"] == "RAW photo, {prompt}, natural skin texture"


def test_presets_name_shows_everything_about_one_preset() -> None:
    result = run(["images.presets", "cinematic"], FakeApi())

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "cinematic: Cinematic still",
        "  A frame from a film.",
        "  template: cinematic film still, {prompt}",
        "  engines (in order): diffusers, comfyui",
        "  input prompt (text, required): the shot",
        "  input reference_image (image, optional): a look",
        "  consent: required (--consent)",
        "  then upscale: scale=2",
        "  then postprocess: ops=[{'op': 'film_grain'}]",
        "  safety: Ask first.",
        "  if ENGINE_TIMEOUT (too slow): Use low.",
    ]
    missing = run(["images.presets", "nope"], FakeApi())
    assert missing.exit_code == 2 and "photoreal, cinematic, storyboard" in missing.output


def test_generate_sends_preset_quality_and_an_a1111_scheduler_name() -> None:
    api = FakeApi()
    args = ["--preset", "photoreal", "--quality", "pro", "--scheduler", "dpm++ 2m karras"]

    result = run(["images.generate", "an old fisherman", "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "an old fisherman",
            "preset": "photoreal",
            "quality": "pro",
            "scheduler": "dpmpp_2m_karras",  # A1111's name, any case, sent as ours
        }
    ]


def test_generate_refuses_an_unknown_quality_before_queueing() -> None:
    api = FakeApi()

    result = run(["images.generate", "a fox", "--quality", "ultra"], api)

    assert result.exit_code == 2
    assert "'ultra' is not one of 'low', 'standard', 'pro'" in result.stderr
    assert api.requests == []


def test_rerun_by_number_reruns_that_key_follows_it_and_prints_the_new_keys() -> None:
    api = FakeApi(list(PROGRESSING))

    result = run(["images.rerun", "2"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    assert f"Re-running #2: {LATEST['items'][1]['key']}" in result.stderr
    assert "started  [##############################] 3/3 100%" in result.stderr
    assert api.bodies("/api/images/rerun") == [{"key": LATEST["items"][1]["key"]}]
    assert api.paths()[-1] == "/api/images/jobs/job-1/events"


@pytest.mark.parametrize(
    ("args", "body"),
    [
        (["--seed", "42"], {"seed": 42}),
        (["--new-seed"], {"new_seed": True}),
    ],
)
def test_rerun_by_key_with_another_seed(args: list[str], body: dict[str, Any]) -> None:
    api = FakeApi()
    key = IMAGE_KEYS[0]

    result = run(["images", "rerun", key, "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    assert result.stdout == "job-1\n" and result.stderr == ""
    assert api.bodies("/api/images/rerun") == [{"key": key, **body}]
    assert api.paths() == ["/api/images/rerun"]  # a key needs no listing


def test_rerun_json_and_out_work_as_for_generate(tmp_path: Path) -> None:
    api = FakeApi()
    out = tmp_path / "again.png"

    result = run(["images.rerun", IMAGE_KEYS[0], "--json", "--out", str(out)], api)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "done"
    assert out.read_bytes() == png_bytes(IMAGE_KEYS[0])


def test_rerun_refuses_a_seed_and_a_new_seed_together() -> None:
    api = FakeApi()

    result = run(["images.rerun", "1", "--seed", "3", "--new-seed"], api)

    assert result.exit_code == 2
    assert "--seed and --new-seed exclude each other" in result.stderr
    assert api.requests == []


def test_rerun_of_a_failed_job_exits_1_with_its_reason() -> None:
    failed = job_view(
        "error",
        error={"code": "ENGINE_ERROR", "message": "boom", "remediation": ["Retry."], "detail": None},
    )

    result = run(["images.rerun", IMAGE_KEYS[0]], FakeApi([failed]))

    assert result.exit_code == 1
    assert "Error [ENGINE_ERROR]: boom" in result.stderr


def test_delete_with_yes_deletes_the_numbered_image() -> None:
    api = FakeApi()

    result = run(["images.delete", "2", "--yes"], api)

    assert result.exit_code == 0, result.output
    deleted = [r for r in api.requests if r.method == "DELETE"]
    assert [r.url.path for r in deleted] == [f"/api/images/items/{LATEST['items'][1]['key']}"]
    assert result.stdout == ""
    assert f"Deleted {LATEST['items'][1]['key']}" in result.stderr


def test_delete_asks_first_and_does_nothing_when_declined() -> None:
    key = str(LATEST["items"][0]["key"])
    declined_api, accepted_api = FakeApi(), FakeApi()

    declined = run(["images.delete", key], declined_api, input="n\n")
    accepted = run(["images", "delete", key], accepted_api, input="y\n")

    assert declined.exit_code == 1
    assert f"Delete {key}" in declined.stderr and "Aborted" in declined.stderr
    assert [r for r in declined_api.requests if r.method == "DELETE"] == []
    assert accepted.exit_code == 0, accepted.output
    assert [r.method for r in accepted_api.requests] == ["DELETE"]


def test_delete_of_a_missing_key_is_one_clear_line() -> None:
    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=error_body("KEY_NOT_FOUND", "no image with key 'x'", []))

    result = run(["images.delete", "images/20240101_000000_00000000.png", "-y"], missing)

    assert result.exit_code == 1
    assert result.stderr == "Error [KEY_NOT_FOUND]: no image with key 'x'\n"


# --- the group form, help, completion -------------------------------------------------------------
IMAGE_COMMANDS = [
    "generate",
    "rerun",
    "upscale",
    "latest",
    "select",
    "jobs",
    "retry",
    "cancel",
    "pause",
    "resume",
    "front",
    "models",
    "presets",
    "engines",
    "delete",
]


def test_images_group_offers_the_same_commands() -> None:
    group = cli.commands["images"]
    assert isinstance(group, click.Group)
    assert sorted(group.commands) == sorted(IMAGE_COMMANDS)
    for name in IMAGE_COMMANDS:
        assert group.commands[name] is cli.commands[f"images.{name}"]

    dotted, grouped = FakeApi(), FakeApi()
    first = run(["images.generate", "a fox", "--seed", "3"], dotted)
    second = run(["images", "generate", "a fox", "--seed", "3"], grouped)
    assert (first.exit_code, first.stdout, first.stderr) == (second.exit_code, second.stdout, second.stderr)
    assert dotted.paths() == grouped.paths()
    assert dotted.bodies("/api/images/generate") == grouped.bodies("/api/images/generate")


@pytest.mark.parametrize(
    "args", [[f"images.{name}"] for name in IMAGE_COMMANDS] + [["images"], ["completion"], []]
)
def test_help_has_examples_with_their_line_breaks(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    examples = lines.index("  Examples:")
    assert lines[examples + 1].lstrip().startswith(("kitty-cli", "eval", "JOB=", "curl"))
    assert lines[examples + 2].lstrip().startswith(("kitty-cli", "eval", "JOB=", "curl"))  # not rewrapped


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script_for_the_shell(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])

    assert result.exit_code == 0, result.output
    assert "_KITTY_CLI_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout  # the protocol value the script sends back
    assert "kitty-cli" in result.stdout


def test_completion_defaults_to_the_login_shell() -> None:
    result = CliRunner().invoke(cli, ["completion"], env={"SHELL": "/usr/bin/zsh"})

    assert result.exit_code == 0, result.output
    assert "compdef" in result.stdout


def completions(
    args: list[str], incomplete: str, handler: Callable[[httpx.Request], httpx.Response]
) -> list[Any]:
    """What a shell would be offered after ``kitty-cli ARGS INCOMPLETE<Tab>``."""
    state = CliState(
        make_client=lambda url, key: ImagesClient(url, key, transport=httpx.MockTransport(handler))
    )
    completer = BashComplete(cli, {"obj": state}, "kitty-cli", "_KITTY_CLI_COMPLETE")
    return completer.get_completions(args, incomplete)


def test_completion_offers_commands_image_numbers_keys_and_models() -> None:
    api = FakeApi()

    commands = [c.value for c in completions([], "images.s", api)]
    numbers = [(c.value, c.help) for c in completions(["--url", GATEWAY, "images.select"], "", api)]
    keys = [c.value for c in completions(["images", "delete"], "images/20240501_1202", api)]
    models = [c.value for c in completions(["images.generate", "x", "--model"], "t", api)]
    presets = [(c.value, c.help) for c in completions(["images.generate", "x", "--preset"], "", api)]

    assert commands == ["images.select"]
    assert [n for n, _ in numbers] == ["1", "2", "3"] and numbers[1][1] == "雪の中の狐"
    assert keys == [LATEST["items"][1]["key"]]
    assert models == ["tiny-sd15"]
    assert presets == [
        ("photoreal", "Photoreal portrait"),
        ("cinematic", "Cinematic still"),
        ("storyboard", "Storyboard frame"),
    ]
    assert str(api.requests[0].url).startswith(GATEWAY)


def test_completion_offers_nothing_when_the_gateway_is_down() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    assert completions(["images.select"], "", down) == []


# --- the client ------------------------------------------------------------------------------------
def test_sse_parser_follows_the_spec() -> None:
    lines = [
        ": keep-alive",
        "",
        "event: job",
        'data: {"a":',
        "data:1}",
        "id: 7",
        "",
        "data: unnamed",
        "retry: 100",
        "",
        "event: job",
        "",  # no data: not dispatched
        "event: cut",
        "data: the stream ended before the blank line",
    ]

    events = list(iter_sse(lines))

    assert events == [
        None,
        ServerSentEvent("job", '{"a":\n1}', "7"),
        ServerSentEvent("message", "unnamed", "7"),
    ]


def test_client_events_yields_job_views_and_raises_on_errors() -> None:
    api = FakeApi(list(PROGRESSING))
    with ImagesClient(GATEWAY, transport=httpx.MockTransport(api)) as client:
        views = list(client.events("job-1"))
        with pytest.raises(ApiError) as missing:
            list(client.events("nope"))

    assert [v.status.value for v in views] == ["queued", "started", "started", "done"]
    assert missing.value.info.code.value == "JOB_NOT_FOUND"


def test_client_events_of_a_dropped_stream_raises_upstream_unavailable() -> None:
    api = FakeApi(list(PROGRESSING), events="break", break_after=1)
    with ImagesClient(GATEWAY, transport=httpx.MockTransport(api)) as client:
        seen = []
        with pytest.raises(ApiError) as dropped:
            for view in client.events("job-1"):
                seen.append(view.status.value)

    assert seen == ["queued"]
    assert dropped.value.info.code.value == "UPSTREAM_UNAVAILABLE"


def test_client_latest_pages_with_a_cursor_and_delete_takes_a_204() -> None:
    api = FakeApi()
    with ImagesClient(GATEWAY, transport=httpx.MockTransport(api)) as client:
        client.latest(5)
        client.latest(limit=5, cursor="0001714564980000|images/a.png")
        client.delete("images/20240501_120100_aaaaaaaa.png")  # a 204: no body to parse

    first, paged, deleted = api.requests
    assert "cursor" not in first.url.params
    assert paged.url.params["cursor"] == "0001714564980000|images/a.png"
    assert (deleted.method, deleted.url.path) == (
        "DELETE",
        "/api/images/items/images/20240501_120100_aaaaaaaa.png",
    )


def test_client_download_sends_the_api_key_only_to_its_own_origin() -> None:
    api = FakeApi()

    def serve(request: httpx.Request) -> httpx.Response:
        api.requests.append(request)
        return httpx.Response(200, content=b"png")

    with ImagesClient(GATEWAY, "s3cret", transport=httpx.MockTransport(serve)) as client:
        assert client.download(f"{GATEWAY}/api/images/files/images/a.png?sig=1") == b"png"
        assert client.download(f"http://{DOWNLOAD_HOST}/kitty/images/a.png?X-Amz-Signature=1") == b"png"

    own, foreign = api.requests
    assert own.headers["x-api-key"] == "s3cret"
    assert "x-api-key" not in foreign.headers


def test_client_wait_gives_up_after_its_timeout() -> None:
    api = FakeApi([job_view("started", 1, 3)], events="404")
    with ImagesClient(GATEWAY, transport=httpx.MockTransport(api)) as client:
        with pytest.raises(TimeoutError, match="still started"):
            client.wait("job-1", timeout=0.05, interval=0.01)


def test_jobs_without_an_id_lists_the_callers_jobs_and_retry_resubmits_one() -> None:
    api = FakeApi()
    listed = run(["images.jobs", "--status", "error", "--limit", "5"], api)
    assert listed.exit_code == 0, listed.output
    assert "job-2" in listed.output and "ENGINE_ERROR" in listed.output and "a red fox" in listed.output
    [request] = [r for r in api.requests if r.url.path == "/api/images/jobs"]
    assert dict(request.url.params) == {"status": "error", "limit": "5"}

    retried = run(["images.retry", "job-2", "--steps", "12"], api)
    assert retried.exit_code == 0, retried.output
    assert retried.output.strip() == "job-3"
    assert api.bodies("/api/images/jobs/job-2/retry") == [{"steps": 12}]


def test_input_sets_a_presets_inputs_by_name(tmp_path: Path) -> None:
    api = FakeApi()
    photo = tmp_path / "harbour.png"
    photo.write_bytes(b"png bytes")
    args = ["--preset", "upscale_denoise", "--input", f"image={photo}", "--input", "strength=0.4"]
    args += ["--input", "consent=true", "--input", "negative_prompt=fog"]

    result = run(["images.generate", "a harbour", "--no-wait", *args], api)

    assert result.exit_code == 0, result.output
    assert api.bodies("/api/images/generate") == [
        {
            "prompt": "a harbour",
            "preset": "upscale_denoise",
            "image": "uploads/20240501_130000_00000001.png",
            "strength": 0.4,
            "consent": True,
            "negative_prompt": "fog",
        }
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--input", "strength"], "'strength' is not NAME=VALUE"),
        (["--strength", "0.5", "--input", "strength=0.4"], "sets `strength` twice"),
        (["--input", "colour=red"], "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_input_is_refused_before_anything_is_queued(args: list[str], words: str) -> None:
    api = FakeApi()
    result = run(["images.generate", "a harbour", "--no-wait", *args], api)
    assert result.exit_code != 0
    assert words in result.output
    assert api.bodies("/api/images/generate") == []
