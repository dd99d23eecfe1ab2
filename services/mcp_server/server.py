"""The MCP server: four tools over `ImagesClient`, served on stdio (default) or streamable HTTP.

Tools run the blocking client in a worker thread, so one slow `generate_image` that waits for its
job does not stall other calls on the streamable HTTP transport. API errors become MCP tool errors
(``is_error``) whose text starts with our error code and lists the remediation, so an assistant can
tell the user what to do (set a key, pick another model) instead of seeing a generic failure."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from services.contracts import ApiError, ErrorInfo, ImagesClient, JobStatus, JobView

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
"""The gateway `make run` starts; the same default as `kitty-cli`."""

URL_ENV, KEY_ENV = "KITTY_GATEWAY_URL", "KITTY_API_KEY"
"""The variables `kitty-cli` reads too, so one environment configures both."""

DEFAULT_WAIT_S = 120.0
"""How long `generate_image` waits for its job by default; past it the job keeps running and the
assistant follows it with `job_status`."""

MAX_WAIT_S = 600.0
"""An MCP call should not hang for ever; longer jobs are followed with `job_status`."""

DEFAULT_HTTP_PORT = 8765

INSTRUCTIONS = (
    "Generate images with KITTY. `generate_image` queues a job and, by default, waits for it and "
    "returns imageRefs (downloadUrl, storageUri) of its images. If it comes back still queued or "
    "running, call `job_status` later. `list_latest_images` shows recent images; `select_image` "
    "gives the imageRef of one by its key."
)

ClientFactory = Callable[[], ImagesClient]
T = TypeVar("T")


def client_from_env() -> ImagesClient:
    """A client configured as `kitty-cli` is: KITTY_GATEWAY_URL and KITTY_API_KEY."""
    return ImagesClient(os.environ.get(URL_ENV) or DEFAULT_GATEWAY_URL, os.environ.get(KEY_ENV) or None)


def error_text(info: ErrorInfo) -> str:
    """``CODE: message`` then one ``- remediation`` line each: what `kitty-cli` prints, as tool text."""
    lines = [f"{info.code.value}: {info.message}"]
    if info.remediation:
        lines.append("Remediation:")
        lines += [f"- {step}" for step in info.remediation]
    return "\n".join(lines)


def _image_refs(client: ImagesClient, view: JobView) -> list[dict[str, Any]]:
    """Each image of a finished job with its imageRef (selected here, so the assistant can link it)."""
    if view.result is None:
        return []
    refs = []
    for image in view.result.images:
        ref = client.select(image.key).image_ref
        refs.append({"key": image.key, "seed": image.seed, "imageRef": ref.model_dump()})
    return refs


def _job_answer(client: ImagesClient, view: JobView) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "job_id": view.job_id,
        "status": view.status.value,
        "progress": view.progress.model_dump(),
        "images": _image_refs(client, view) if view.status is JobStatus.DONE else [],
    }
    if view.error is not None:
        answer["error"] = error_text(view.error)
    return answer


class KittyTools:
    """The tools' bodies as plain blocking methods (easy to test, run in a thread by the server)."""

    def __init__(self, make_client: ClientFactory = client_from_env) -> None:
        self._make_client = make_client

    def _with_client(self, call: Callable[[ImagesClient], T]) -> T:
        try:
            with self._make_client() as client:
                return call(client)
        except ApiError as exc:
            raise ToolError(error_text(exc.info)) from exc

    def generate_image(
        self,
        prompt: str,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        wait: bool = True,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> dict[str, Any]:
        fields = {"model": model, "width": width, "height": height, "steps": steps, "seed": seed}
        body = {"prompt": prompt, **{name: value for name, value in fields.items() if value is not None}}

        def run(client: ImagesClient) -> dict[str, Any]:
            # A dict, not GenerateRequest: the service validates and answers VALIDATION_ERROR itself.
            queued = client.generate(body)
            if not wait:
                return {"job_id": queued.job_id, "status": queued.status.value, "images": []}
            try:
                view = client.wait(queued.job_id, timeout=min(max(timeout_s, 0.0), MAX_WAIT_S))
            except TimeoutError:
                view = client.job(queued.job_id)
            return _job_answer(client, view)

        return self._with_client(run)

    def job_status(self, job_id: str) -> dict[str, Any]:
        return self._with_client(lambda client: _job_answer(client, client.job(job_id)))

    def list_latest_images(self, limit: int = 10) -> dict[str, Any]:
        def run(client: ImagesClient) -> dict[str, Any]:
            view = client.latest(limit=limit)
            items = [
                {
                    "key": item.key,
                    "prompt": item.prompt,
                    "model": item.model,
                    "seed": item.seed,
                    "last_modified": item.last_modified,
                }
                for item in view.items
            ]
            return {"items": items, "next_cursor": view.next_cursor}

        return self._with_client(run)

    def select_image(self, key: str) -> dict[str, Any]:
        return self._with_client(lambda client: {"imageRef": client.select(key).image_ref.model_dump()})


async def _in_thread(call: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(call)


def build_server(make_client: ClientFactory = client_from_env) -> MCPServer:
    """The MCP server; `make_client` is called once per tool call (tests pass their own)."""
    tools = KittyTools(make_client)
    server: MCPServer = MCPServer("kitty-images", instructions=INSTRUCTIONS)

    @server.tool()
    async def generate_image(
        prompt: str,
        model: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        seed: int | None = None,
        wait: bool = True,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> dict[str, Any]:
        """Generate an image from a text prompt. With wait (the default) it returns when the job ends
        or after timeout_s seconds, with each image's key and imageRef (downloadUrl, storageUri);
        otherwise at once with the job id to follow with job_status."""
        return await _in_thread(
            partial(tools.generate_image, prompt, model, width, height, steps, seed, wait, timeout_s)
        )

    @server.tool()
    async def job_status(job_id: str) -> dict[str, Any]:
        """A generation job's status and progress; when it succeeded, its images with imageRefs."""
        return await _in_thread(partial(tools.job_status, job_id))

    @server.tool()
    async def list_latest_images(limit: int = 10) -> dict[str, Any]:
        """The caller's newest images (key, prompt, model, seed), newest first; limit 1-500."""
        return await _in_thread(partial(tools.list_latest_images, limit))

    @server.tool()
    async def select_image(key: str) -> dict[str, Any]:
        """The imageRef (downloadUrl, storageUri) of an image, by the key a listing or job gave."""
        return await _in_thread(partial(tools.select_image, key))

    return server


def main(argv: Sequence[str] | None = None) -> None:
    """`kitty-mcp`: stdio for an assistant that spawns it; ``--http`` to serve streamable HTTP."""
    parser = argparse.ArgumentParser(prog="kitty-mcp", description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp, not stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="HTTP port (default 8765)")
    args = parser.parse_args(argv)
    server = build_server()
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run("stdio")


__all__ = ["KittyTools", "build_server", "client_from_env", "error_text", "main"]
