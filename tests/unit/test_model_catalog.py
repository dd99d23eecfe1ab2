"""The verified model catalog: `kitty-images models add|verify` (local folders, single files and
downloads from a real HTTP server on loopback), the pickle policy, what GET /api/images/models
shows, and pinned models in the worker's model cache."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from services.images_service.admin import cli
from services.images_service.catalog import manifest_digest
from services.images_service.engines.diffusers.cache import ModelCache, Resident
from services.images_service.models import ModelEntry, ModelRegistry
from services.images_service.settings import Settings, get_settings
from tests.support.harness import Harness

WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 64
"""Bytes standing in for a .safetensors file: the catalog hashes them and never loads them."""
TAMPERED = WEIGHTS[:-1] + b"\x00"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    """Runs `kitty-images ARGS` against a models.yaml and data dir in `tmp_path` (no .env)."""
    monkeypatch.chdir(tmp_path)
    env = {"MODELS_YAML": str(tmp_path / "models.yaml"), "IMAGES_DATA_DIR": str(tmp_path / "var")}
    get_settings.cache_clear()

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["models", *args], env=env, catch_exceptions=False)

    yield run
    get_settings.cache_clear()


def registered(tmp_path: Path) -> dict[str, Any]:
    models_yaml = tmp_path / "models.yaml"
    """The ``models:`` section `kitty-images models add` wrote."""
    if not models_yaml.exists():
        return {}
    return dict((yaml.safe_load(models_yaml.read_text()) or {}).get("models") or {})


def diffusers_folder(root: Path) -> Path:
    folder = root / "my-sd15"
    (folder / "unet").mkdir(parents=True)
    (folder / "text_encoder").mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(WEIGHTS)
    (folder / "text_encoder" / "model.safetensors").write_bytes(WEIGHTS[::-1])
    (folder / "text_encoder" / "config.json").write_text("{}")
    return folder


@pytest.fixture
def web() -> Iterator[Callable[[str, bytes], str]]:
    """A loopback HTTP server: ``web(path, body)`` serves `body` at `path` and returns its URL."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(path: str, body: bytes) -> str:
        files[path] = body
        return f"http://127.0.0.1:{server.server_port}{path}"

    yield serve
    server.shutdown()
    server.server_close()


# --- models add: local ----------------------------------------------------------------------------


def test_a_local_folder_is_registered_with_every_weight_files_digest(
    tmp_path: Path, operator: Callable[..., Result]
) -> None:
    folder = diffusers_folder(tmp_path)

    result = operator("add", "mine", str(folder), "--license", "creativeml-openrail-m", "--family", "sd15")

    assert result.exit_code == 0, result.output
    entry = registered(tmp_path)["mine"]
    assert entry["sha256"] == {
        "text_encoder/model.safetensors": sha(WEIGHTS[::-1]),
        "unet/diffusion_pytorch_model.safetensors": sha(WEIGHTS),
    }
    model = ModelRegistry(tmp_path / "models.yaml").get("mine")
    assert (model.source, model.is_local, model.license, model.family) == (
        str(folder),
        True,
        "creativeml-openrail-m",
        "sd15",
    )
    assert operator("verify", "mine").exit_code == 0

    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(TAMPERED)
    (folder / "unet" / "extra.safetensors").write_bytes(WEIGHTS)
    verify = operator("verify")
    assert verify.exit_code == 1
    assert f"expected {sha(WEIGHTS)}, got {sha(TAMPERED)}" in verify.output
    assert "extra.safetensors: a weight file that is not recorded" in verify.output


def test_a_folders_sha256_is_its_manifest_digest_as_sha256sum_prints_it(
    tmp_path: Path, operator: Callable[..., Result]
) -> None:
    folder = diffusers_folder(tmp_path)
    digests = {
        "text_encoder/model.safetensors": sha(WEIGHTS[::-1]),
        "unet/diffusion_pytorch_model.safetensors": sha(WEIGHTS),
    }
    manifest = manifest_digest(digests)
    if shutil.which("sha256sum") and shutil.which("find"):  # the README's recipe gives the same digest
        recipe = (
            "find . -name '*.safetensors' | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum"
        )
        printed = subprocess.run(recipe, shell=True, cwd=folder, capture_output=True, text=True, check=True)
        assert printed.stdout.split()[0] == manifest

    wrong = operator("add", "mine", str(folder), "--license", "mit", "--sha256", "0" * 64)
    assert wrong.exit_code == 1 and "did not match" in wrong.output and manifest in wrong.output
    assert "mine" not in registered(tmp_path)
    assert folder.exists()  # the operator's own files are never deleted

    assert (
        operator("add", "mine", str(folder), "--license", "mit", "--sha256", manifest.upper()).exit_code == 0
    )


def test_a_single_safetensors_file_is_checked_against_its_sha256(
    tmp_path: Path, operator: Callable[..., Result]
) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(WEIGHTS)

    wrong = operator("add", "one", str(file), "--license", "mit", "--sha256", sha(TAMPERED))
    assert wrong.exit_code == 1
    assert f"expected {sha(TAMPERED)}, got {sha(WEIGHTS)}" in wrong.output
    assert "one" not in registered(tmp_path)

    assert operator("add", "one", str(file), "--license", "mit", "--sha256", sha(WEIGHTS)).exit_code == 0
    assert registered(tmp_path)["one"]["sha256"] == sha(WEIGHTS)
    assert operator("verify", "one").exit_code == 0


def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path, operator: Callable[..., Result]) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(WEIGHTS)
    refused = operator("add", "old", str(ckpt), "--license", "mit")
    assert refused.exit_code == 1 and "pickle" in refused.output and "--allow-pickle" in refused.output

    folder = diffusers_folder(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(WEIGHTS)
    assert operator("add", "dir", str(folder), "--license", "mit").exit_code == 1
    assert registered(tmp_path) == {}

    allowed = operator("add", "old", str(ckpt), "--license", "mit", "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output
    assert registered(tmp_path)["old"]["allow_pickle"] is True
    assert ModelRegistry(tmp_path / "models.yaml").get("old").allow_pickle


def test_something_that_is_not_a_model_is_refused(tmp_path: Path, operator: Callable[..., Result]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert "not a weight file" in operator("add", "x", str(tmp_path / "notes.txt"), "--license", "mit").output
    assert "model_index.json" in operator("add", "x", str(tmp_path / "empty"), "--license", "mit").output
    assert "does not exist" in operator("add", "x", str(tmp_path / "nope"), "--license", "mit").output
    assert (
        "not a SHA-256"
        in operator("add", "x", str(tmp_path / "empty"), "--license", "m", "--sha256", "ab").output
    )


# --- models add: guided-generation add-ons ------------------------------------------------------


def addons(tmp_path: Path, section: str) -> dict[str, Any]:
    return dict((yaml.safe_load((tmp_path / "models.yaml").read_text()) or {}).get(section) or {})


def test_a_controlnet_folder_is_registered_with_its_type_family_and_digests(
    tmp_path: Path, operator: Callable[..., Result]
) -> None:
    folder = tmp_path / "canny"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "ControlNetModel"}')
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(WEIGHTS)
    args = ("add", "canny15", str(folder), "--license", "openrail", "--kind", "controlnet")
    args += ("--family", "sd15")

    untyped = operator(*args)
    assert untyped.exit_code == 1 and "needs 'type'" in untyped.output
    assert not (tmp_path / "models.yaml").exists() or not addons(tmp_path, "controlnets")

    result = operator(*args, "--control-type", "canny")
    assert result.exit_code == 0, result.output
    entry = addons(tmp_path, "controlnets")["canny15"]
    assert (entry["type"], entry["base"], entry["license"]) == ("canny", "sd15", "openrail")
    assert entry["sha256"] == {"diffusion_pytorch_model.safetensors": sha(WEIGHTS)}
    registry = ModelRegistry(tmp_path / "models.yaml")
    assert registry.addon("controlnets", "canny15").path == str(folder)
    assert registered(tmp_path) == {}  # no checkpoint was registered
    assert operator("verify", "canny15").exit_code == 0

    (folder / "diffusion_pytorch_model.safetensors").write_bytes(TAMPERED)
    failed = operator("verify")
    assert failed.exit_code == 1 and "canny15 (controlnets): FAILED" in failed.output


def test_an_ip_adapters_image_encoder_is_hashed_and_verified_too(
    tmp_path: Path, operator: Callable[..., Result]
) -> None:
    adapter = tmp_path / "ip-adapter.safetensors"
    adapter.write_bytes(WEIGHTS)
    encoder = tmp_path / "image_encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    (encoder / "model.safetensors").write_bytes(WEIGHTS[::-1])
    args = ("add", "ip15", str(adapter), "--license", "apache-2.0", "--kind", "ip-adapter")

    not_a_model = operator(*args, "--image-encoder", str(tmp_path))
    assert not_a_model.exit_code == 1 and "no config.json" in not_a_model.output
    result = operator(*args, "--image-encoder", str(encoder), "--family", "sd15")
    assert result.exit_code == 0, result.output
    entry = addons(tmp_path, "ip_adapters")["ip15"]
    assert entry["image_encoder_sha256"] == {"model.safetensors": sha(WEIGHTS[::-1])}
    assert operator("verify", "ip15").exit_code == 0

    (encoder / "model.safetensors").write_bytes(TAMPERED)
    tampered = operator("verify", "ip15")
    assert tampered.exit_code == 1 and "image encoder: model.safetensors: expected" in tampered.output


def test_an_upscaler_download_is_verified_and_a_pickle_never_accepted(
    tmp_path: Path, operator: Callable[..., Result], web: Callable[[str, bytes], str]
) -> None:
    url = web("/files/x4.safetensors", WEIGHTS)
    base = ("add", "esr", url, "--license", "bsd-3", "--kind", "upscaler", "--scale", "4")

    assert operator(*base, "--sha256", sha(TAMPERED)).exit_code == 1
    assert list((tmp_path / "var" / "models" / "upscalers").iterdir()) == []
    result = operator(*base, "--sha256", sha(WEIGHTS))
    assert result.exit_code == 0, result.output
    entry = addons(tmp_path, "upscalers")["esr"]
    assert (entry["scale"], entry["sha256"], entry["source"]) == (4, sha(WEIGHTS), url)

    ckpt = tmp_path / "x2.pth"
    ckpt.write_bytes(WEIGHTS)
    refused = operator("add", "old", str(ckpt), "--license", "mit", "--kind", "upscaler", "--allow-pickle")
    assert refused.exit_code == 1 and "pickle" in refused.output
    assert "old" not in addons(tmp_path, "upscalers")


# --- models add: downloads ------------------------------------------------------------------------


def test_a_download_with_the_right_digest_is_registered(
    tmp_path: Path, operator: Callable[..., Result], web: Callable[[str, bytes], str]
) -> None:
    url = web("/files/model.safetensors", WEIGHTS)

    result = operator(
        "add", "web", url, "--license", "openrail++", "--family", "sdxl", "--sha256", sha(WEIGHTS)
    )

    assert result.exit_code == 0, result.output
    models_dir = tmp_path / "var" / "models"
    assert (models_dir / "web.safetensors").read_bytes() == WEIGHTS
    assert [p.name for p in models_dir.iterdir()] == ["web.safetensors"]  # no temporary file left
    entry = registered(tmp_path)["web"]
    assert entry["source"] == url and entry["sha256"] == sha(WEIGHTS) and entry["license"] == "openrail++"
    model = ModelRegistry(tmp_path / "models.yaml").get("web")
    assert (model.source, model.origin, model.family) == (str(models_dir / "web.safetensors"), url, "sdxl")


def test_a_tampered_download_is_deleted_and_reported(
    tmp_path: Path, operator: Callable[..., Result], web: Callable[[str, bytes], str]
) -> None:
    url = web("/files/model.safetensors", TAMPERED)

    result = operator("add", "web", url, "--license", "mit", "--sha256", sha(WEIGHTS))

    assert result.exit_code == 1
    assert "did not match" in result.output
    assert f"expected {sha(WEIGHTS)}, got {sha(TAMPERED)}" in result.output
    assert list((tmp_path / "var" / "models").iterdir()) == []  # deleted, temporary file included
    assert "web" not in registered(tmp_path)


def test_a_failed_download_registers_nothing(
    tmp_path: Path, operator: Callable[..., Result], web: Callable[[str, bytes], str]
) -> None:
    missing = web("/files/other.safetensors", WEIGHTS).replace("other", "missing")
    result = operator("add", "web", missing, "--license", "mit", "--sha256", sha(WEIGHTS))
    assert result.exit_code == 1 and "could not download" in result.output and "404" in result.output
    assert list((tmp_path / "var" / "models").iterdir()) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/model.safetensors", "s3://b/m"])
def test_only_http_urls_are_downloaded(url: str, tmp_path: Path, operator: Callable[..., Result]) -> None:
    result = operator("add", "web", url, "--license", "mit", "--sha256", sha(WEIGHTS))
    assert result.exit_code == 1 and "http(s)" in result.output
    assert registered(tmp_path) == {}


def test_a_download_needs_a_digest_and_a_safe_format(
    operator: Callable[..., Result], web: Callable[[str, bytes], str]
) -> None:
    no_digest = operator("add", "web", web("/m.safetensors", WEIGHTS), "--license", "mit")
    assert no_digest.exit_code == 1 and "needs --sha256" in no_digest.output
    pickle = operator("add", "web", web("/m.ckpt", WEIGHTS), "--license", "mit", "--sha256", sha(WEIGHTS))
    assert pickle.exit_code == 1 and "pickle" in pickle.output


# --- models.yaml and GET /api/images/models ---------------------------------------------------------


def test_source_beside_path_is_provenance_and_alone_is_the_location(tmp_path: Path) -> None:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(
        "models:\n"
        "  a: {path: /m/a.safetensors, source: 'https://x/a.safetensors', sha256: ABC}\n"
        "  b: {source: /m/b}\n"
    )
    entries = ModelRegistry(models_yaml).entries()
    assert (entries["a"].source, entries["a"].origin, entries["a"].sha256) == (
        "/m/a.safetensors",
        "https://x/a.safetensors",
        "abc",
    )
    assert (entries["b"].source, entries["b"].origin) == ("/m/b", None)


def test_the_models_route_shows_license_family_and_digests_never_paths(
    tmp_path: Path, harness_with: Callable[..., Harness]
) -> None:
    models_yaml = tmp_path / "catalog.yaml"
    models_yaml.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "mine": {
                        "path": str(tmp_path / "secret-dir"),
                        "source": "https://example.com/secret-url.safetensors",
                        "license": "creativeml-openrail-m",
                        "family": "sd15",
                        "sha256": {"unet/diffusion_pytorch_model.safetensors": sha(WEIGHTS)},
                    }
                }
            }
        )
    )

    body = harness_with(models_yaml=models_yaml).client.get("/api/images/models").json()

    mine = body["models"][0]
    assert (mine["license"], mine["family"]) == ("creativeml-openrail-m", "sd15")
    assert mine["sha256"] == {"unet/diffusion_pytorch_model.safetensors": sha(WEIGHTS)}
    assert "secret" not in str(body)


# --- pinning ----------------------------------------------------------------------------------------


def test_pinned_models_parse_from_the_environment() -> None:
    settings = Settings(_env_file=None, IMAGES_PINNED_MODELS=" a, b ,,")  # type: ignore[call-arg]
    assert settings.pinned_model_names == frozenset({"a", "b"})
    assert Settings(_env_file=None).pinned_model_names == frozenset()  # type: ignore[call-arg]


def fake_cache(size: int, pinned: frozenset[str] = frozenset()) -> tuple[ModelCache, list[str]]:
    """A ModelCache whose loads are recorded instead of run."""
    cache = ModelCache(torch.device("cpu"), torch.float32, size=size, compile_mode=None, pinned=pinned)
    loads: list[str] = []

    def load(entry: ModelEntry, auto_class: Any) -> Resident:
        loads.append(entry.name)
        return Resident(entry.name, entry.source, object(), object, {}, frozenset())

    cache._load = load  # type: ignore[method-assign]
    cache.free_memory = lambda: None  # type: ignore[method-assign]
    return cache, loads


def entry(name: str) -> ModelEntry:
    return ModelEntry(name=name, source=f"/models/{name}", is_local=True)


def test_the_unpinned_cache_evicts_the_least_recently_used() -> None:
    cache, loads = fake_cache(size=2)
    for name in ("a", "b", "a", "c"):
        cache.base(entry(name))
    assert cache.names() == ["a", "c"] and loads == ["a", "b", "c"]


def test_a_pinned_model_is_never_evicted() -> None:
    cache, loads = fake_cache(size=2, pinned=frozenset({"a"}))
    for name in ("a", "b", "c", "d"):
        cache.base(entry(name))
    assert cache.names() == ["a", "d"] and loads == ["a", "b", "c", "d"]
    cache.base(entry("a"))
    assert loads == ["a", "b", "c", "d"]  # still resident: not loaded again


def test_a_cache_full_of_pinned_models_loads_beyond_its_size() -> None:
    cache, _ = fake_cache(size=1, pinned=frozenset({"a", "b"}))
    cache.base(entry("a"))
    cache.base(entry("b"))
    assert cache.names() == ["a", "b"]  # over size rather than a refused job
    cache.base(entry("c"))
    cache.base(entry("d"))
    assert cache.names() == ["a", "b", "d"]  # the unpinned one leaves first
