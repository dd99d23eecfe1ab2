"""(4) The GPU path: seconds per image for a full-size SDXL (1024×1024, 30 steps) and SD 1.5
(512×512, 50 steps) on CUDA, with the worker's own speed-ups, step by step:

1. half precision (bf16 where the GPU has it, else fp16) and SDPA attention: how a pipeline loads;
2. plus fused QKV projections and a channels-last UNet (`acceleration.accelerate`, what workers do);
3. plus ``torch.compile`` of the UNet (IMAGES_TORCH_COMPILE), with its compile time.

The pipelines are built from the models' published configurations (written inline below) with
random weights: the time of a step does not depend on the weights, and no model hub is needed. The
prompt goes through both text encoders as token ids (no tokenizer), so encoding is timed too.
Needs only torch, diffusers and transformers; the speed-ups are loaded from the worker's own
`services/images_service/engines/acceleration.py` by path, so nothing else of the project is
imported. Prints a table and saves JSON under `bench/results/`.

    python -m bench.gpu_sdxl                       # CUDA: eager variants, then compiled
    python -m bench.gpu_sdxl --compile none        # without torch.compile
    python -m bench.gpu_sdxl --cpu-smoke           # any machine: scaled-down models, 1 step
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/gpu_sdxl.py` as well as `python -m bench.gpu_sdxl`
    sys.path.insert(0, str(REPO))

from bench.report import Goal, Measurement, machine_info, render_table, write_results  # noqa: E402

ACCELERATION = REPO / "services" / "images_service" / "engines" / "acceleration.py"

SDXL_GOAL = Goal("<=", 1.0, "s")
"""The issue's goal on an H200: one 1024×1024 SDXL image in 30 steps within a second."""

SDXL_SIZE, SDXL_STEPS = 1024, 30
SD15_SIZE, SD15_STEPS = 512, 50
GUIDANCE = 7.0
"""Classifier-free guidance on, as in every real request: the UNet runs a batch of two."""

BATCH = 4
"""SD 1.5 is also timed as one batch of 4 images, to show what batching gains on a GPU."""

TOKENS = 77
"""CLIP's context: prompts are padded to 77 tokens, so every prompt costs the same."""

# --- the published configurations ----------------------------------------------------------------
# stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/ config.json
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
SDXL_VAE: dict[str, Any] = {
    "sample_size": 1024,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
CLIP_VIT_L: dict[str, Any] = {  # openai/clip-vit-large-patch14's text tower (SD 1.5, SDXL encoder 1)
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": TOKENS,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
CLIP_BIGG: dict[str, Any] = {  # laion/CLIP-ViT-bigG-14's text tower (SDXL encoder 2)
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": TOKENS,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
# stable-diffusion-v1-5/stable-diffusion-v1-5: unet/ and vae/ config.json
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
SD15_VAE: dict[str, Any] = {**SDXL_VAE, "sample_size": 512, "scaling_factor": 0.18215, "force_upcast": True}
SCHEDULER: dict[str, Any] = {  # both models' scheduler config (SD 1.5 ships PNDM; Euler costs the same)
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

PUBLISHED_PARAMETERS = {
    "sdxl_unet": 2_567_463_684,
    "sd15_unet": 859_520_964,
    "vae": 83_653_863,
    "clip_vit_l": 123_060_480,
    "clip_bigg": 694_659_840,
}
"""Parameter counts of the published models: a configuration above that builds to another count
is not the published one (checked by ``--cpu-smoke`` on the meta device, no memory needed)."""


def shrunk(config: dict[str, Any], *, text: bool = False) -> dict[str, Any]:
    """The same architecture, scaled down for ``--cpu-smoke``: few channels, few layers."""
    small = copy.deepcopy(config)
    if text:
        small.update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
        small["projection_dim"] = 32
        return small
    blocks = len(small["block_out_channels"])
    small["block_out_channels"] = tuple(32 * (i + 1) for i in range(blocks))
    small["norm_num_groups"] = 8
    small["layers_per_block"] = 1
    if "attention_head_dim" in small:
        small["attention_head_dim"] = 8
    if "transformer_layers_per_block" in small:
        small["transformer_layers_per_block"] = 1
    if "cross_attention_dim" in small:
        small["cross_attention_dim"] = 64 if small.get("addition_embed_type") else 32
    if small.get("addition_embed_type") == "text_time":
        small["addition_time_embed_dim"] = 8
        small["projection_class_embeddings_input_dim"] = 6 * 8 + 32
    return small


# --- building ---------------------------------------------------------------------------------------
def load_acceleration() -> ModuleType:
    """The worker's `acceleration` module, loaded from its file (no package import needed)."""
    spec = importlib.util.spec_from_file_location("kitty_acceleration", ACCELERATION)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {ACCELERATION}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pick_dtype(torch: Any, device: Any) -> Any:
    """As the engine's `pick_dtype`: bf16 where the GPU has it natively, else fp16; fp32 off CUDA."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def build(family: str, device: Any, dtype: Any, *, smoke: bool) -> Any:
    """A pipeline of `family` ("sdxl" or "sd15") with random weights, made on `device` directly."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def cfg(config: dict[str, Any], text: bool = False) -> dict[str, Any]:
        return shrunk(config, text=text) if smoke else config

    torch.manual_seed(0)
    pipe: Any
    with torch.device(device):
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**cfg(SDXL_VAE)),
                text_encoder=CLIPTextModel(CLIPTextConfig(**cfg(CLIP_VIT_L, True))),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfg(CLIP_BIGG, True))),
                tokenizer=None,
                tokenizer_2=None,
                unet=UNet2DConditionModel(**cfg(SDXL_UNET)),
                scheduler=EulerDiscreteScheduler(**SCHEDULER),
                force_zeros_for_empty_prompt=True,
                add_watermarker=False,
            )
        else:
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**cfg(SD15_VAE)),
                text_encoder=CLIPTextModel(CLIPTextConfig(**cfg(CLIP_VIT_L, True))),
                tokenizer=None,
                unet=UNet2DConditionModel(**cfg(SD15_UNET)),
                scheduler=EulerDiscreteScheduler(**SCHEDULER),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_published_configs() -> dict[str, int]:
    """Build each full-size model on the meta device (no memory) and compare its parameter count
    with the published model's; raise on a mismatch."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        counts = {
            "sdxl_unet": parameter_count(UNet2DConditionModel(**SDXL_UNET)),
            "sd15_unet": parameter_count(UNet2DConditionModel(**SD15_UNET)),
            "vae": parameter_count(AutoencoderKL(**SDXL_VAE)),
            "clip_vit_l": parameter_count(CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L))),
            "clip_bigg": parameter_count(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))),
        }
    wrong = {k: (v, PUBLISHED_PARAMETERS[k]) for k, v in counts.items() if v != PUBLISHED_PARAMETERS[k]}
    if wrong:
        raise RuntimeError(f"configurations differ from the published models (built, published): {wrong}")
    return counts


# --- rendering --------------------------------------------------------------------------------------
def text_embeddings(pipe: Any, ids: Any) -> dict[str, Any]:
    """What the pipeline's `encode_prompt` computes from token ids: the penultimate hidden states
    (both encoders', concatenated, for SDXL) and SDXL's pooled projection, for the prompt (row 0)
    and the negative prompt (row 1)."""
    import torch

    if hasattr(pipe, "text_encoder_2"):
        first = pipe.text_encoder(ids, output_hidden_states=True)
        second = pipe.text_encoder_2(ids, output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second.text_embeds
        return {
            "prompt_embeds": hidden[:1],
            "negative_prompt_embeds": hidden[1:],
            "pooled_prompt_embeds": pooled[:1],
            "negative_pooled_prompt_embeds": pooled[1:],
        }
    hidden = pipe.text_encoder(ids)[0]
    return {"prompt_embeds": hidden[:1], "negative_prompt_embeds": hidden[1:]}


def renderer(pipe: Any, size: int, steps: int, images: int = 1) -> Callable[[], Any]:
    """One image request as a worker runs it: encode, denoise with guidance, decode, to PIL."""
    import torch

    device = pipe.unet.device
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, TOKENS), device=device)

    def render() -> Any:
        with torch.inference_mode():
            return pipe(
                **text_embeddings(pipe, ids),
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=GUIDANCE,
                num_images_per_prompt=images,
                generator=[torch.Generator("cpu").manual_seed(i) for i in range(images)],
            ).images

    return render


def seconds_per_call(render: Callable[[], Any], *, warmup: int, repeats: int) -> list[float]:
    import torch

    for _ in range(warmup):
        render()
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        render()  # PIL output: the images are on the host when it returns
        samples.append(time.perf_counter() - started)
    return samples


@dataclass
class Options:
    compile_modes: list[str]
    warmup: int
    repeats: int
    smoke: bool
    skip_sd15: bool
    out: Path | None


def run(options: Options, save: Callable[[list[Measurement]], Path]) -> list[Measurement]:
    import torch

    accel = load_acceleration()
    smoke = options.smoke
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if smoke:
        # The accelerate() path is CUDA-only; in the smoke run it is applied as on CUDA, on the CPU.
        counts = check_published_configs()
        print(f"published configurations check out: {counts}", flush=True)
    dtype = pick_dtype(torch, device)
    sdxl_size, sdxl_steps = (64, 1) if smoke else (SDXL_SIZE, SDXL_STEPS)
    sd15_size, sd15_steps = (64, 1) if smoke else (SD15_SIZE, SD15_STEPS)
    tuning_device = torch.device("cuda") if smoke else device  # smoke: exercise the CUDA code path
    results: list[Measurement] = []

    def record(m: Measurement) -> None:
        results.append(m)
        print(f"  {m.label}: {m.value} {m.unit} {m.note}", flush=True)
        save(results)

    def sdxl_row(key: str, label: str, samples: list[float], goal: Goal | None = None, **detail: Any) -> None:
        record(
            Measurement(
                key=key,
                label=label,
                value=round(statistics.median(samples), 4),
                unit="s",
                goal=goal,
                detail={"samples_s": [round(s, 4) for s in samples], **detail},
            )
        )

    what = f"SDXL {sdxl_size}×{sdxl_size}, {sdxl_steps} steps"
    started = time.perf_counter()
    pipe = build("sdxl", device, dtype, smoke=smoke)
    print(
        f"built SDXL ({parameter_count(pipe.unet):,} UNet parameters) in "
        f"{time.perf_counter() - started:.1f} s on {device} as {dtype}",
        flush=True,
    )
    render = renderer(pipe, sdxl_size, sdxl_steps)
    attention = accel.attention_processors(pipe.unet)
    base = seconds_per_call(render, warmup=options.warmup, repeats=options.repeats)
    sdxl_row("gpu.sdxl.plain", f"{what}: {_dtype(dtype)} + SDPA", base, attention=attention)

    applied = accel.accelerate(pipe, tuning_device, None)
    tuned = seconds_per_call(render, warmup=options.warmup, repeats=options.repeats)
    sdxl_row("gpu.sdxl.tuned", f"{what}: + fused QKV, channels-last", tuned, applied=applied)
    best = min(statistics.median(base), statistics.median(tuned))

    def record_best(source: str) -> None:
        """The goal's row: the fastest variant so far (re-saved as compiled variants come in)."""
        results[:] = [m for m in results if m.key != "gpu.sdxl.best"]
        record(
            Measurement(
                key="gpu.sdxl.best",
                label=f"{what}, s/image, fastest variant",
                value=round(best, 4),
                unit="s",
                goal=None if smoke else SDXL_GOAL,
                note=source,
                detail={"device": _device_name(torch, device), "dtype": _dtype(dtype)},
            )
        )

    record_best("eager")

    # SD 1.5 before the compiled SDXL variants: compiling can take minutes, and a run cut short
    # by a time limit should still have these.
    if not options.skip_sd15:
        sd15 = f"SD 1.5 {sd15_size}×{sd15_size}, {sd15_steps} steps"
        small = build("sd15", device, dtype, smoke=smoke)
        small_applied = accel.accelerate(small, tuning_device, None)
        single = seconds_per_call(
            renderer(small, sd15_size, sd15_steps), warmup=options.warmup, repeats=options.repeats
        )
        sdxl_row(
            "gpu.sd15.tuned",
            f"{sd15}: {_dtype(dtype)}, SDPA, fused QKV, channels-last",
            single,
            applied=small_applied,
        )
        batched = seconds_per_call(
            renderer(small, sd15_size, sd15_steps, BATCH), warmup=1, repeats=max(1, options.repeats // 2)
        )
        per_image = statistics.median(batched) / BATCH
        record(
            Measurement(
                key="gpu.sd15.batch_gain",
                label=f"{sd15}: {BATCH} single images ÷ one batch of {BATCH}",
                value=round(statistics.median(single) * BATCH / statistics.median(batched), 2),
                unit="×",
                note=f"{per_image:.3f} s/image batched",
                detail={"batch_s": [round(s, 4) for s in batched]},
            )
        )
        del small
        _free(torch)

    for mode in options.compile_modes:
        if smoke:
            print(f"  (torch.compile {mode} skipped in the smoke run)", flush=True)
            continue
        torch._dynamo.reset()
        accel.compile_denoiser(pipe.unet, mode)
        started = time.perf_counter()
        render()  # compiles
        render()
        compile_s = time.perf_counter() - started
        compiled = seconds_per_call(render, warmup=options.warmup, repeats=options.repeats)
        sdxl_row(
            f"gpu.sdxl.compiled.{mode}",
            f"{what}: + torch.compile {mode}",
            compiled,
            compile_and_first_two_calls_s=round(compile_s, 1),
        )
        if statistics.median(compiled) < best:
            best = statistics.median(compiled)
            record_best(f"torch.compile {mode}")
    del pipe, render
    _free(torch)
    return results


def _dtype(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _device_name(torch: Any, device: Any) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _free(torch: Any) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_sdxl", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--compile",
        default="max-autotune-no-cudagraphs",
        help="torch.compile modes to time, comma-separated, or 'none' (default: %(default)s)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run on the CPU with scaled-down models and 1 step: checks the script, times nothing",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: bench/results/<date>_gpu_<machine>.json)"
    )
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "bench/gpu_sdxl.py times SDXL on CUDA, and this machine has no CUDA device "
            f"(torch {torch.__version__}). Run it on a GPU machine, or pass --cpu-smoke to check that "
            "the script runs here (scaled-down models, 1 step, nothing timed).",
            file=sys.stderr,
        )
        return 2
    warnings.filterwarnings("ignore", message=".*invalid value encountered.*")  # random weights: NaNs
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    modes = [] if args.compile.strip().lower() in ("", "none", "0", "off") else args.compile.split(",")
    accel = load_acceleration()
    for mode in modes:
        if mode not in accel.COMPILE_MODES:
            parser.error(f"unknown torch.compile mode {mode!r}; one of {', '.join(accel.COMPILE_MODES)}")
    options = Options(modes, args.warmup, args.repeats, args.cpu_smoke, args.skip_sd15, args.out)
    if options.smoke:
        options.warmup, options.repeats = 0, 1

    device = "cpu" if options.smoke else torch.cuda.get_device_name(0)
    machine = machine_info(None if options.smoke else device)
    machine["torch"] = torch.__version__
    machine["cuda"] = torch.version.cuda
    started = datetime.now(UTC)
    kind = "gpu-smoke" if options.smoke else "gpu"

    def save(measurements: list[Measurement]) -> Path:
        return write_results(measurements, machine, started=started, kind=kind, path=options.out)

    print(f"GPU bench on {device}: torch {torch.__version__}", flush=True)
    measurements = run(options, save)
    path = save(measurements)
    print()
    print(render_table(measurements))
    print(f"\nsaved {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
