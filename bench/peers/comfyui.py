"""The real ComfyUI (v0.3.64's unmodified source in shared/peers/ComfyUI) as a peer to test and
measure against: its own virtual environment, built once and cached under ``var/``; a server on CPU
in a folder of its own; a checkpoint it converts itself from a diffusers model. The test suite's
fixture (tests/support/peers/real_comfyui.py) and `make bench`'s peer section use it.

Where the source is: ``KITTY_COMFYUI_SOURCE``, else ``../shared/peers/ComfyUI`` beside the repo.

    python -m bench.peers.comfyui            # build the venv alone; print how long it took
    python -m bench.peers.comfyui --relock   # re-resolve comfyui-requirements.lock
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.common.processes import ProcessHandle, free_port, log_tail, start_process

SOURCE_ENV = "KITTY_COMFYUI_SOURCE"
"""Where ComfyUI's source is; set means required: a broken build or start fails the tests."""

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "peers" / "ComfyUI"
"""shared/ lies beside the repository, in a developer's tree and in CI's fresh clone alike."""

VENV_ROOT = Path(os.environ.get("KITTY_COMFYUI_VENV_ROOT") or REPO_ROOT / "var" / "comfyui-venv")
"""Where ComfyUI's venvs are built, one per recipe hash (KITTY_COMFYUI_VENV_ROOT: a cache outside
the checkout, so a fresh clone on the same machine reuses it; .ci/run sets one)."""
MODELS_CACHE = Path(os.environ.get("KITTY_MODELS_CACHE") or REPO_ROOT / "var" / "models")
"""Where the full-size random SD1.5, its converted checkpoint and ControlNet are kept between runs
(KITTY_MODELS_CACHE: a cache outside the checkout; each is rebuilt when older than its source)."""

TORCH_PIN = "torch==2.13.0"
"""Our build (pyproject's `worker` extra): pip takes the CPU wheel from this machine's disk. It is a
constraint for every install, so no requirement can pull another torch (a CUDA one) in."""

PEER_LOCK = Path(__file__).with_name("comfyui-requirements.lock")
"""The versions the venv was tested with, as constraints for every install into it (like our own
requirements.lock), so each day's CI builds the same peer; `--relock` rewrites it."""

NOT_FROM_REQUIREMENTS = frozenset({"torch", "torchvision", "torchaudio", "spandrel"})
"""Left out of ComfyUI's requirements.txt: torch is pinned above; the torchvision that matches it
here is a CUDA build that fails to import (the shim below stands in); torchaudio is optional (two
audio node files fail to import, harmlessly); spandrel is installed without its torchvision."""

EXTRA_PACKAGES = ("requests", "websocket-client", "six", "typing_extensions")
"""Imported by ComfyUI but not in its requirements (six and typing_extensions: for the shims)."""

NO_DEPS_PACKAGES = ("spandrel",)
"""Installed with ``--no-deps``: their other dependencies are already in."""

TORCHVISION_SHIM = "torchvision==0.1.6"
TORCHVISION_SHIM_DIR = "torchvision-shim"
"""The old pure-Python torchvision, in a folder of the venv put first on PYTHONPATH: ComfyUI's core
import path imports torchvision unguarded, and nothing on a checkpoint-free graph's path calls it."""

RECIPE_VERSION = "2"
"""Bump to rebuild every cached venv after changing how it is built."""

BUILD_TIMEOUT_S = 900.0
"""The whole venv build: ~3 min on two busy cores with most wheels on this machine's disk (torch
unpacked alone takes over a minute); the rest of the ~1.7 GB comes from PyPI."""

START_TIMEOUT_S = 120.0
"""First 200 on /system_stats: 3–6 s on an idle machine; CI's two cores are busy with the suite."""

LOG_TAIL_CHARS = 6000
"""How much of the build or server log goes into a failure's message."""


@dataclass(frozen=True)
class RealComfyUI:
    """A running ComfyUI: its URL and its folders (what a test may look into)."""

    url: str
    input_dir: Path
    output_dir: Path
    models_dir: Path
    handle: ProcessHandle

    def log(self) -> str:
        return self.handle.log()


class ComfyUIUnavailable(RuntimeError):
    """The venv could not be built or the server did not start; the message has the log's tail."""


def find_source() -> tuple[Path | None, bool]:
    """ComfyUI's source folder (None when there is none) and whether it was asked for explicitly."""
    configured = os.environ.get(SOURCE_ENV)
    if configured:
        return Path(configured).resolve(), True
    return (DEFAULT_SOURCE if (DEFAULT_SOURCE / "main.py").is_file() else None), False


def recipe_hash(source: Path, *, locked: bool = True) -> str:
    """What the venv depends on: ComfyUI's requirements, the lock, our pins and the Python."""
    digest = hashlib.sha256()
    digest.update((source / "requirements.txt").read_bytes())
    if locked:  # the pins, not the comments
        pins = [line for line in PEER_LOCK.read_text().splitlines() if not line.startswith("#")]
        digest.update("\n".join(pins).encode())
    recipe = [RECIPE_VERSION, TORCH_PIN, TORCHVISION_SHIM, *sorted(NOT_FROM_REQUIREMENTS)]
    recipe += [*EXTRA_PACKAGES, *NO_DEPS_PACKAGES, f"{sys.version_info.major}.{sys.version_info.minor}"]
    digest.update("\n".join(recipe).encode())
    return digest.hexdigest()[:16]


def requirement_name(line: str) -> str:
    """The distribution name of a requirements.txt line, normalised (``""`` for comments)."""
    text = line.split("#", 1)[0].strip()
    for separator in "<>=!~;[ ":
        text = text.split(separator, 1)[0]
    return text.lower().replace("_", "-")


class _VenvBuild:
    """One build of the venv: every pip call logged to one file, all within one deadline."""

    def __init__(self, venv: Path, log_path: Path, *, locked: bool = True) -> None:
        self.venv, self.log_path, self.locked = venv, log_path, locked
        self.python = venv / "bin" / "python"
        self.constraints = venv / "kitty-constraints.txt"
        self.deadline = time.monotonic() + BUILD_TIMEOUT_S

    def failure(self, what: str) -> ComfyUIUnavailable:
        return ComfyUIUnavailable(
            f"building ComfyUI's venv failed: {what}; log {self.log_path}:\n"
            + log_tail(self.log_path, LOG_TAIL_CHARS)
        )

    def run(self, command: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=max(1.0, self.deadline - time.monotonic()),
                check=False,
            )
        if result.returncode != 0:
            raise self.failure(f"{command[2 if command[1] == '-m' else 0]} exited {result.returncode}")

    def pip(self, *args: str) -> None:
        # The constraints file keeps torch at our build through every later resolution.
        self.run([str(self.python), "-m", "pip", "install", "-c", str(self.constraints), *args])

    def build(self, source: Path) -> None:
        self.run([sys.executable, "-m", "venv", str(self.venv)])
        pins = PEER_LOCK.read_text() if self.locked else ""
        self.constraints.write_text(TORCH_PIN + "\n" + pins)
        requirements = self.venv / "kitty-requirements.txt"
        kept = [
            line
            for line in (source / "requirements.txt").read_text().splitlines()
            if requirement_name(line) and requirement_name(line) not in NOT_FROM_REQUIREMENTS
        ]
        requirements.write_text("\n".join(kept) + "\n")
        self.pip(TORCH_PIN)  # alone first: the CPU build is in before anything resolves against it
        self.pip("-r", str(requirements), *EXTRA_PACKAGES)
        self.pip("--no-deps", *NO_DEPS_PACKAGES)
        self.pip("--no-deps", "--target", str(self.venv / TORCHVISION_SHIM_DIR), TORCHVISION_SHIM)
        self.run([str(self.python), "-c", "import torch, sys; sys.exit(torch.version.cuda is not None)"])


def ensure_venv(source: Path, root: Path = VENV_ROOT, *, locked: bool = True) -> Path:
    """The venv for `source`'s requirements, built unless a complete one is cached. A file lock
    keeps two pytest processes from building the same one at once. `locked`: with PEER_LOCK's
    versions (always, but for `--relock`)."""
    key = recipe_hash(source, locked=locked) + ("" if locked else "-unlocked")
    venv = root / key
    ready = venv / ".kitty-complete"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build cut short
        log_path = root / f"{key}.build.log"
        log_path.write_text(f"building ComfyUI's venv for {source} into {venv}\n")
        build = _VenvBuild(venv, log_path, locked=locked)
        try:
            build.build(source)
        except (OSError, subprocess.SubprocessError) as exc:
            raise build.failure(str(exc)) from exc
        ready.write_text(key + "\n")
        return venv


def start_comfyui(source: Path, venv: Path, workdir: Path, env: dict[str, str] | None = None) -> RealComfyUI:
    """ComfyUI on a free loopback port, writing only under `workdir` (the source stays read-only);
    `env` is added to its environment (e.g. OMP_NUM_THREADS)."""
    folders = {name: workdir / name for name in ("base", "output", "input", "temp", "user")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(("PYTHON", "VIRTUAL_ENV"))
    }
    environment.update(env or {})
    environment.update(
        PYTHONPATH=str(venv / TORCHVISION_SHIM_DIR),
        # The source is read-only: its bytecode is cached beside the venv, for the next start.
        PYTHONPYCACHEPREFIX=str(venv / "pycache"),
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="1",
    )
    command = [
        str(venv / "bin" / "python"),
        str(source / "main.py"),
        *("--cpu", "--listen", "127.0.0.1", "--port", str(port)),
        "--disable-auto-launch",
        "--disable-all-custom-nodes",
        *("--base-directory", str(folders["base"])),
        *("--output-directory", str(folders["output"])),
        *("--input-directory", str(folders["input"])),
        *("--temp-directory", str(folders["temp"])),
        *("--user-directory", str(folders["user"])),
        *("--database-url", f"sqlite:///{folders['user'] / 'comfyui.db'}"),
    ]
    log_path = workdir / "comfyui.log"
    try:
        handle = start_process(
            command, environment, f"{url}/system_stats", log_path, cwd=workdir, timeout=START_TIMEOUT_S
        )
    except RuntimeError as exc:
        raise ComfyUIUnavailable(f"ComfyUI did not start: {exc}") from exc
    return RealComfyUI(url, folders["input"], folders["output"], folders["base"] / "models", handle)


PROMPT_TIMEOUT_S = 900.0
"""One prompt's longest wait: a full-size checkpoint converted or rendered on two busy cores."""


def run_prompt(
    server: RealComfyUI, graph: dict[str, Any], timeout: float = PROMPT_TIMEOUT_S
) -> dict[str, Any]:
    """Queue `graph` with `POST /prompt` and wait until its history entry is complete; returns that
    entry. Raises `ComfyUIUnavailable` (with the server log's tail) on node errors, a failed run or
    the timeout."""
    response = httpx.post(f"{server.url}/prompt", json={"prompt": graph}, timeout=30, trust_env=False)
    if response.status_code != 200 or response.json().get("node_errors"):
        raise ComfyUIUnavailable(f"ComfyUI refused the prompt: {response.status_code} {response.text[:2000]}")
    prompt_id = str(response.json()["prompt_id"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = httpx.get(f"{server.url}/history/{prompt_id}", timeout=30, trust_env=False).json()
        status = entry.get(prompt_id, {}).get("status") or {}
        if status.get("completed"):
            return dict(entry[prompt_id])
        if status.get("status_str") == "error":
            raise ComfyUIUnavailable(
                f"prompt {prompt_id} failed: {status.get('messages')}\n{log_tail(server.handle.log_path)}"
            )
        time.sleep(0.05)
    raise ComfyUIUnavailable(f"prompt {prompt_id} not done after {timeout:.0f} s")


def checkpoint_path(diffusers_dir: Path, cache_dir: Path) -> Path:
    """Where the checkpoint converted from `diffusers_dir` is cached."""
    return cache_dir / f"{diffusers_dir.name}.safetensors"


def checkpoint_is_current(diffusers_dir: Path, cache_dir: Path) -> bool:
    """Whether the cached checkpoint exists and is newer than the model it was converted from."""
    cached = checkpoint_path(diffusers_dir, cache_dir)
    model_index = diffusers_dir / "model_index.json"
    return cached.is_file() and cached.stat().st_mtime >= model_index.stat().st_mtime


def convert_checkpoint(server: RealComfyUI, diffusers_dir: Path, cache_dir: Path) -> Path:
    """`diffusers_dir` (a diffusers SD1.5 folder) as a single-file fp16 checkpoint, cached in
    `cache_dir`. The conversion is ComfyUI's own, through its API (DiffusersLoader →
    CheckpointSave); its fp32 output is cast to fp16, as checkpoints ship. The text encoder is then
    checked and, where ComfyUI lost it, put back (`repair_text_encoder`)."""
    name = diffusers_dir.name
    cached = checkpoint_path(diffusers_dir, cache_dir)
    if checkpoint_is_current(diffusers_dir, cache_dir):
        repair_text_encoder(cached, diffusers_dir)  # a checkpoint cached before the repair existed
        return cached
    linked = server.models_dir / "diffusers" / name
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.unlink(missing_ok=True)
    linked.symlink_to(diffusers_dir.resolve(), target_is_directory=True)
    prefix = f"kitty-convert/{name}"
    saver = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": prefix}
    run_prompt(
        server,
        {
            "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": name}},
            "2": {"class_type": "CheckpointSave", "inputs": saver},
        },
    )
    saved = sorted((server.output_dir / "kitty-convert").glob(f"{name}_*.safetensors"))
    if not saved:
        raise ComfyUIUnavailable(f"CheckpointSave wrote no {prefix}_*.safetensors")
    _to_fp16(saved[-1], cached)
    saved[-1].unlink()
    repair_text_encoder(cached, diffusers_dir)
    return cached


def link_checkpoint(server: RealComfyUI, checkpoint: Path) -> str:
    """`checkpoint` linked into `server`'s checkpoints folder; returns its ``ckpt_name``."""
    target = server.models_dir / "checkpoints" / checkpoint.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.symlink_to(checkpoint.resolve())
    return checkpoint.name


CHECKPOINT_TEXT_PREFIX = "cond_stage_model.transformer.text_model."
"""Where a single-file SD1.5 checkpoint keeps the CLIP text model's tensors."""


def repair_text_encoder(checkpoint: Path, diffusers_dir: Path) -> None:
    """Make `checkpoint`'s CLIP text model `diffusers_dir`'s, when ComfyUI's conversion lost it.

    transformers 5 saves a CLIPTextModel without its ``text_model.`` key prefix; ComfyUI 0.3.64's
    DiffusersLoader expects the prefix, leaves every text encoder weight uninitialised and
    CheckpointSave writes that memory out (NaN, zeros): every prompt then encodes to NaN and every
    render is black. A no-op once the checkpoint holds the model's own text encoder (a conversion
    from a folder saved with the prefix, or an earlier repair)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = diffusers_dir / "text_encoder" / "model.safetensors"
    probe = "embeddings.position_embedding.weight"
    with safe_open(source, "pt") as model, safe_open(checkpoint, "pt") as converted:
        names = list(model.keys())
        expected = model.get_tensor(probe if probe in names else f"text_model.{probe}")
        if converted.get_tensor(CHECKPOINT_TEXT_PREFIX + probe).half().equal(expected.half()):
            return
    text_model = load_file(source)
    tensors = load_file(checkpoint)
    for name, tensor in text_model.items():
        tensors[CHECKPOINT_TEXT_PREFIX + name.removeprefix("text_model.")] = tensor.half()
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    save_file(tensors, partial)
    partial.replace(checkpoint)  # whole or absent; newer than the model, so still current


def install_checkpoint(server: RealComfyUI, diffusers_dir: Path, cache_dir: Path) -> str:
    """Convert (unless cached) and link: `diffusers_dir` as a checkpoint `server` can load."""
    return link_checkpoint(server, convert_checkpoint(server, diffusers_dir, cache_dir))


def _to_fp16(source: Path, target: Path) -> None:
    """Every fp32 tensor of a safetensors file as fp16, written whole or not at all."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(source)
    halved = {key: t.half() if t.dtype == torch.float32 else t for key, t in tensors.items()}
    partial = target.with_name(target.name + ".partial")
    save_file(halved, partial)
    partial.replace(target)


def relock(source: Path) -> None:
    """Build from ComfyUI's requirements with nothing but torch pinned, and write what pip chose
    (run the real-ComfyUI tests against it before committing the new lock)."""
    venv = ensure_venv(source, locked=False)
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    header = [line for line in PEER_LOCK.read_text().splitlines() if line.startswith("#")]
    kept = [line for line in frozen if requirement_name(line) not in {"torch", "pip", "setuptools", "wheel"}]
    PEER_LOCK.write_text("\n".join(header + kept) + "\n")


if __name__ == "__main__":
    found, _ = find_source()
    if found is None:
        sys.exit(f"no ComfyUI source: set {SOURCE_ENV}")
    started = time.monotonic()
    if sys.argv[1:] == ["--relock"]:
        relock(found)
        print(f"wrote {PEER_LOCK}", f"{time.monotonic() - started:.0f} s")
    else:
        print(ensure_venv(found), f"{time.monotonic() - started:.0f} s")
