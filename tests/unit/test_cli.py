"""kitty-cli as a user meets it: data on stdout, one clear error line on stderr, exit codes, and the
requests it sends, against a scripted API behind ``httpx.MockTransport``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

REPO_ROOT = Path(__file__).resolve().parents[2]
try:
    import kitty_cli  # noqa: F401
except ImportError:  # not installed: import it from the source tree, as `pip install -e .` would
    sys.path.insert(0, str(REPO_ROOT / "cli"))

from kitty_cli.context import CliState  # noqa: E402
from kitty_cli.main import cli  # noqa: E402

from services.contracts import ImagesClient  # noqa: E402

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
        },
        {
            "key": "images/20240501_120200_bbbbbbbb.png",
            "size": 2048,
            "last_modified": "2024-05-01T12:02:00+00:00",
        },
        {
            "key": "images/20240501_120100_aaaaaaaa.png",
            "size": 512,
            "last_modified": "2024-05-01T12:01:00+00:00",
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


class FakeApi:
    """A scripted gateway: job views are served in order, the last one repeating; requests are kept."""

    def __init__(self, job_views: list[dict[str, Any]] | None = None) -> None:
        self.job_views = list(job_views or [job_view("done", result=DONE_RESULT)])
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/api/images/generate":
            return httpx.Response(202, json={"job_id": "job-1", "status": "queued"})
        if path == "/api/images/jobs/job-1":
            view = self.job_views.pop(0) if len(self.job_views) > 1 else self.job_views[0]
            return httpx.Response(200, json=view)
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
                        "downloadUrl": f"http://minio.test/{key}?sig=x",
                        "storageUri": f"s3://kitty/{key}",
                    }
                },
            )
        if path == "/api/images/engines":
            return httpx.Response(200, json=ENGINES)
        return httpx.Response(404, json=error_body("NOT_FOUND", "no route", []))

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]


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


def test_generate_waits_through_progress_and_prints_the_keys() -> None:
    api = FakeApi(
        [
            job_view("queued"),
            job_view("started", 1, 3),
            job_view("started", 3, 3),
            job_view("done", 3, 3, result=DONE_RESULT),
        ]
    )

    result = run(["images.generate", "a red fox"], api)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == IMAGE_KEYS
    assert "queued" in result.stderr
    assert "1/3" in result.stderr and "3/3" in result.stderr


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


def test_generate_rejects_bad_options_before_queueing() -> None:
    api = FakeApi()

    result = run(["images.generate", "a fox", "--width", "100"], api)

    assert result.exit_code == 1
    assert result.stderr.startswith("Error [VALIDATION_ERROR]: width")
    assert api.requests == []


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


def test_latest_numbers_newest_first_in_aligned_columns() -> None:
    result = run(["images.latest", "--limit", "3"], FakeApi())

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split()[0] == "#"
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert [row.split()[-1] for row in rows] == [item["key"] for item in LATEST["items"]]
    assert "1.5 MiB" in rows[0] and "2.0 KiB" in rows[1]
    key_column = {row.index("images/") for row in rows}
    assert len(key_column) == 1  # keys start in the same column


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
        "imageRef": {"downloadUrl": f"http://minio.test/{chosen}?sig=x", "storageUri": f"s3://kitty/{chosen}"}
    }


def test_select_by_key_skips_the_listing() -> None:
    api = FakeApi()
    key = "images/20240501_120100_aaaaaaaa.png"

    result = run(["images.select", key], api)

    assert result.exit_code == 0, result.output
    assert [r.url.path for r in api.requests] == ["/api/images/select"]
    assert json.loads(result.stdout)["imageRef"]["storageUri"] == f"s3://kitty/{key}"


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
