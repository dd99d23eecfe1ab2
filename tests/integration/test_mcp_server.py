"""`kitty-mcp` driven by the MCP client library: the venv's console script on stdio, against a real
images-service on a loopback port (keys on), with a real worker draining the queue in this process.

It proves the assistant path end to end: tools listed, an image generated and waited for, listed and
selected to an imageRef, and a wrong key answered as a tool error carrying UNAUTHORIZED."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from services.images_service.app import create_app
from tests.support.asgi_server import serve_asgi
from tests.support.harness import MODEL, Harness

KEY = "mcp-4b7e2c9a1d3f5e60"
SCRIPT = Path(sys.executable).parent / "kitty-mcp"
CALL_TIMEOUT_S = 60.0


def run_draining(harness: Harness, session: Callable[[], Any]) -> Any:
    """Run the MCP session in a thread while this (main) thread drains the queue with a real worker,
    in burst mode again and again: RQ's worker installs signal handlers, so it needs the main thread."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = session()
        except BaseException as exc:  # handed to the main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="mcp-session", daemon=True)
    thread.start()
    while thread.is_alive():
        harness.work()
        thread.join(timeout=0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def params(url: str, key: str) -> StdioServerParameters:
    return StdioServerParameters(command=str(SCRIPT), env={"KITTY_GATEWAY_URL": url, "KITTY_API_KEY": key})


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None, text_of(result)
    return dict(result.structured_content)


def test_an_assistant_generates_lists_and_selects_through_kitty_mcp(
    harness_with: Callable[..., Harness],
) -> None:
    harness = harness_with(api_keys=f"{KEY}:pro")
    service = create_app(harness.settings, store=harness.store)

    async def session(url: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Client(params(url, KEY), read_timeout_seconds=CALL_TIMEOUT_S) as client:
            seen["tools"] = {tool.name for tool in (await client.list_tools()).tools}
            seen["queued"] = structured(
                await client.call_tool(
                    "generate_image", {"prompt": "a red fox", "model": MODEL, "wait": False}
                )
            )
            seen["waited"] = structured(
                await client.call_tool("generate_image", {"prompt": "an owl", "model": MODEL, "seed": 7})
            )
            seen["status"] = structured(
                await client.call_tool("job_status", {"job_id": seen["queued"]["job_id"]})
            )
            seen["latest"] = structured(await client.call_tool("list_latest_images", {"limit": 5}))
            key = seen["latest"]["items"][0]["key"]
            seen["selected"] = structured(await client.call_tool("select_image", {"key": key}))
            seen["missing"] = await client.call_tool("select_image", {"key": "no/such/image.png"})
        return seen

    with serve_asgi(service, lifespan="on") as url:
        seen = run_draining(harness, lambda: anyio.run(session, url))

    assert seen["tools"] == {"generate_image", "job_status", "list_latest_images", "select_image"}
    assert seen["queued"]["status"] == "queued" and seen["queued"]["images"] == []

    waited = seen["waited"]
    assert waited["status"] == "done", waited
    [image] = waited["images"]
    assert image["seed"] == 7
    assert image["imageRef"]["downloadUrl"] and image["imageRef"]["storageUri"]

    # The first job was drained alongside the second: its status now carries its images too.
    assert seen["status"]["status"] == "done"
    assert len(seen["status"]["images"]) == 1

    items = seen["latest"]["items"]
    assert {item["key"] for item in items} >= {image["key"], seen["status"]["images"][0]["key"]}
    assert seen["selected"]["imageRef"]["storageUri"]

    missing = seen["missing"]
    assert missing.is_error
    assert "NOT_FOUND" in text_of(missing) or "VALIDATION" in text_of(missing), text_of(missing)


def test_a_wrong_key_is_a_tool_error_with_unauthorized_and_its_remediation(
    harness_with: Callable[..., Harness],
) -> None:
    harness = harness_with(api_keys=f"{KEY}:pro")
    service = create_app(harness.settings, store=harness.store)

    async def session(url: str) -> list[CallToolResult]:
        async with Client(
            params(url, "not-a-real-key-000000"), read_timeout_seconds=CALL_TIMEOUT_S
        ) as client:
            return [
                await client.call_tool("generate_image", {"prompt": "a red fox"}),
                await client.call_tool("list_latest_images", {}),
            ]

    with serve_asgi(service, lifespan="on") as url:
        results = anyio.run(session, url)

    for result in results:
        assert result.is_error
        text = text_of(result)
        assert "UNAUTHORIZED" in text, text
        assert "Remediation:" in text, text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_streamable_http_transport_serves_the_same_tools(harness_with: Callable[..., Harness]) -> None:
    """`kitty-mcp --http` as an assistant platform runs it: a long-lived process on loopback that
    clients reach at /mcp, generating through our API with the key it was started with."""
    harness = harness_with(api_keys=f"{KEY}:pro")
    service = create_app(harness.settings, store=harness.store)
    port = free_port()

    async def session(mcp_url: str) -> dict[str, Any]:
        async with Client(mcp_url, read_timeout_seconds=CALL_TIMEOUT_S) as client:
            return {
                "tools": {tool.name for tool in (await client.list_tools()).tools},
                "waited": structured(
                    await client.call_tool("generate_image", {"prompt": "a heron", "model": MODEL, "seed": 3})
                ),
            }

    with serve_asgi(service, lifespan="on") as url:
        env = {**os.environ, "KITTY_GATEWAY_URL": url, "KITTY_API_KEY": KEY}
        server = subprocess.Popen(
            [str(SCRIPT), "--http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    assert server.poll() is None, server.stderr.read() if server.stderr else ""
                    assert time.monotonic() < deadline, "kitty-mcp --http did not listen within 30 s"
                    time.sleep(0.1)
            seen = run_draining(harness, lambda: anyio.run(session, f"http://127.0.0.1:{port}/mcp"))
        finally:
            server.terminate()
            server.wait(timeout=10)

    assert seen["tools"] == {"generate_image", "job_status", "list_latest_images", "select_image"}
    waited = seen["waited"]
    assert waited["status"] == "done", waited
    assert waited["images"][0]["seed"] == 3 and waited["images"][0]["imageRef"]["storageUri"]
