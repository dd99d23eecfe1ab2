"""The real ComfyUI as a session-scoped pytest fixture (the venv, the server and the checkpoint
conversion live in `bench.peers.comfyui`, which `make bench` uses too).

Where the source is: ``KITTY_COMFYUI_SOURCE``, else ``../shared/peers/ComfyUI`` beside the repo.
No source: the tests that need it are skipped. ``KITTY_COMFYUI_SOURCE`` set (as CI does) and the
venv or the server failing: they fail, with the tail of the build or server log.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.peers.comfyui import (
    BUILD_TIMEOUT_S,
    DEFAULT_SOURCE,
    PROMPT_TIMEOUT_S,
    SOURCE_ENV,
    START_TIMEOUT_S,
    ComfyUIUnavailable,
    RealComfyUI,
    ensure_venv,
    find_source,
    start_comfyui,
)

__all__ = ["BUILD_TIMEOUT_S", "PROMPT_TIMEOUT_S", "START_TIMEOUT_S", "RealComfyUI", "real_comfyui_fixture"]


@pytest.fixture(scope="session", name="real_comfyui")
def real_comfyui_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealComfyUI]:
    """The real ComfyUI for the whole session. Skipped without a source; when the source was named
    by KITTY_COMFYUI_SOURCE, a failed build or start fails every test that uses it."""
    source, required = find_source()
    if source is None:
        pytest.skip(
            f"no ComfyUI source: set {SOURCE_ENV} to a ComfyUI checkout (or put one at {DEFAULT_SOURCE})"
        )
    try:
        if not (source / "main.py").is_file():
            raise ComfyUIUnavailable(f"{SOURCE_ENV}={source} has no main.py")
        server = start_comfyui(source, ensure_venv(source), tmp_path_factory.mktemp("comfyui"))
    except (ComfyUIUnavailable, OSError) as exc:
        unavailable = str(exc)  # reported outside the handler: the message alone, not a chain
    else:
        try:
            yield server
        finally:
            server.handle.stop()
        return
    if required:
        pytest.fail(unavailable, pytrace=False)
    pytest.skip(f"the real ComfyUI is unavailable: {unavailable}")
