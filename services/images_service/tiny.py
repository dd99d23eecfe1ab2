"""Tiny random-weight diffusers pipelines built locally (no hub), for demos and tests.

Owns `build_tiny_models`: SD1.5-, SDXL-, SDXL-refiner-, SD3.5- and FLUX.1-schnell-shaped pipelines
small enough to build in a few seconds and render 64x64 in a fraction of a second on a CPU, a LoRA
for the SD1.5 one, and the guided-generation add-ons (ControlNets for SD1.5 and SDXL, an IP-Adapter
for SD1.5), all registered in models.yaml. The images are noise; what they prove is that the whole
path (load, schedule, render, store; image-to-image, inpainting, LoRA, ControlNet, IP-Adapter) works.
torch/diffusers/transformers are imported inside the functions so `kitty-images` stays light.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .models import register_addon, register_lora, register_model

logger = logging.getLogger("kitty.images.tiny")

TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER = "tiny-sd15", "tiny-sdxl", "tiny-sdxl-refiner"
"""Names the tiny models are registered under."""

TINY_LORA = "tiny-lora"
"""Name of the tiny SD1.5 LoRA (registered under ``loras:``)."""

TINY_CANNY, TINY_DEPTH, TINY_SDXL_CANNY = "tiny-canny", "tiny-depth", "tiny-sdxl-canny"
"""Names of the tiny ControlNets (registered under ``controlnets:``): two for SD1.5, one for SDXL."""

TINY_IP_ADAPTER = "tiny-ip"
TINY_UPSCALERS = {"tiny-x2": 2, "tiny-x4": 4}
"""Tiny random Real-ESRGAN RRDBNets (`engines/upscaling.build_tiny_upscaler`), by name → factor."""
"""Name of the tiny SD1.5 IP-Adapter (registered under ``ip_adapters:``)."""

TINY_IP_ADAPTER_FILE = "ip-adapter_tiny.safetensors"
TINY_IMAGE_ENCODER = "image_encoder"
"""The IP-Adapter's weight file and its CLIP vision encoder's folder, as h94/IP-Adapter lays them out."""

CONTROL_EMBEDDING_CHANNELS = (16, 32)
"""The ControlNet's conditioning-image encoder: one downsampling per step after the first, so two
entries halve the picture once, as the tiny VAE (two blocks) does; SD's four entries match its 8x VAE."""

TINY_CONTROL_INIT_STD = 0.05
"""Std of the random weights given to a tiny ControlNet's zero convolutions: a trained ControlNet's
are non-zero; left at zero, the control would add nothing and no test could see it."""

VISION_HIDDEN, VISION_IMAGE_SIZE, VISION_PATCH = 32, 32, 8
"""CLIP vision encoder shape of the tiny IP-Adapter: 16 patches of a 32x32 picture."""

IP_ADAPTER_TOKENS = 4
"""Image tokens the (non-Plus) IP-Adapter projects a CLIP embedding to; diffusers infers the
adapter kind from the keys and assumes 4 for this one."""

TINY_LORA_RANK, TINY_LORA_ALPHA = 4, 16
"""LoRA rank and alpha: a scale of alpha/rank = 4 makes the random update visible in the pixels."""

TINY_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet's attention projections, where real SD LoRAs live too."""

TINY_LORA_FILE = "pytorch_lora_weights.safetensors"
"""diffusers' file name for saved LoRA weights."""

VAE_SCALING_FACTOR = 4.0
"""Latent scale of the tiny VAE: about 1 / the standard deviation of its random encoder's latents, so
scaled latents have unit variance, as Stable Diffusion's 0.18215 gives for its VAE. With the default
the input's latents would sit far below the noise of even the last step, and image-to-image could
not keep anything of its input. (Text-to-image renders change with it too: other noise, still noise.)"""

VAE_POSTERIOR_LOGVAR = -20.0
"""Bias of the encoder's log-variance outputs: a random encoder would otherwise give a posterior so
wide that image-to-image samples noise rather than the input's latents. Real VAEs' is tiny too. Only
the encoder sees it, so text-to-image renders are unaffected."""

TINY_DEFAULTS: dict[str, Any] = {"width": 64, "height": 64, "steps": 20, "cfg": 7.0}
"""Registered defaults: 64x64 keeps a tiny render well under a second on a CPU."""

TINY_SEED = 0
"""Seed set before each component so two builds hold identical weights."""

TEXT_HIDDEN, TEXT_LAYERS, TEXT_HEADS, TEXT_INTERMEDIATE = 32, 2, 4, 37
"""CLIP text model shape: the smallest that still exercises every layer type."""

TEXT_PROJECTION_DIM = 32
"""Pooled-embedding size of SDXL's second text encoder; enters the UNet's `text_time` embedding."""

SDXL_TIME_EMBED_DIM = 8
"""`addition_time_embed_dim`: each of the six size/crop ids is embedded to this width."""

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
"""CLIP's context length; prompts are padded or truncated to it."""


def _byte_level_chars() -> list[str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def make_tiny_tokenizer() -> Any:
    """A CLIP tokenizer over a hand-written byte-level vocabulary: every input encodes, nothing is fetched.

    Vocabulary: the 256 byte symbols, their end-of-word forms, one merge (so the BPE path is used),
    then the two special tokens.
    """
    from transformers import CLIPTokenizer

    chars = _byte_level_chars()
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars), "at</w>", BOS_TOKEN, EOS_TOKEN]:
        vocab[token] = len(vocab)
    merges = [("a", "t</w>")]
    # The `tokenizers` BPE model takes merges as pairs; transformers' annotation says strings.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)  # type: ignore[arg-type]


def _text_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_INTERMEDIATE,
        num_attention_heads=TEXT_HEADS,
        num_hidden_layers=TEXT_LAYERS,
        max_position_embeddings=MODEL_MAX_LENGTH,
        layer_norm_eps=1e-05,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _seeded(factory: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    torch.manual_seed(TINY_SEED)
    return factory(*args, **kwargs)


def _vae(latent_channels: int = 4, scaling_factor: float = VAE_SCALING_FACTOR, **config: Any) -> Any:
    """The tiny VAE (one latent per 2x2 pixels): SD1.5/SDXL's shape by default; 16
    `latent_channels` and `config` (no quant convs) make SD3's and Flux's."""
    import torch
    from diffusers import AutoencoderKL

    vae = _seeded(
        AutoencoderKL,
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        sample_size=64,
        scaling_factor=scaling_factor,
        **config,
    )
    # The encoder's last layer (quant_conv) gives the posterior's means, then its log-variances.
    last = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    latent = vae.config.latent_channels
    with torch.no_grad():
        last.weight[latent:].zero_()
        last.bias[latent:].fill_(VAE_POSTERIOR_LOGVAR)
    return vae


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    # SD1.5/SDXL's own noise schedule, so scheduler swaps behave as on the real models.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _sd15_pipeline() -> Any:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = make_tiny_tokenizer()
    unet = _seeded(
        UNet2DConditionModel,
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
    )
    return _sd15_of(unet, _vae(), _seeded(CLIPTextModel, _text_config(tokenizer)), tokenizer)


def _sd15_of(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> Any:
    """An SD1.5 pipeline of these parts, with SD's noise schedule and no safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _sdxl_components() -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = make_tiny_tokenizer()
    unet = _seeded(
        UNet2DConditionModel,
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 2),
        # six size/crop ids, each embedded to SDXL_TIME_EMBED_DIM, plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + TEXT_PROJECTION_DIM,
        # the two encoders' hidden states are concatenated
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=1,
    )
    return {
        "vae": _vae(),
        "text_encoder": _seeded(CLIPTextModel, _text_config(tokenizer)),
        "text_encoder_2": _seeded(
            CLIPTextModelWithProjection, _text_config(tokenizer, projection_dim=TEXT_PROJECTION_DIM)
        ),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "unet": unet,
        "scheduler": _scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
        "force_zeros_for_empty_prompt": True,
        # invisible-watermark is an optional package; a tiny model has no use for it
        "add_watermarker": False,
    }


FLOW_LATENT_CHANNELS = 16
"""Latent channels of SD3's and Flux's VAE (SD1.5/SDXL's have 4)."""

FLOW_VAE_SCALING_FACTOR, FLOW_VAE_SHIFT = 3.0, -0.06
"""Latent scale and shift of the tiny 16-channel VAE: about 1 / the standard deviation and the mean
of its random encoder's latents (as `VAE_SCALING_FACTOR` is for the 4-channel one), the part SD3's
and Flux's real VAEs give `scaling_factor` and `shift_factor`."""

T5_HIDDEN, T5_LAYERS, T5_HEADS, T5_KV, T5_FF = 64, 2, 4, 16, 37
"""T5 text encoder shape. Its width is SD3's `joint_attention_dim`: the two CLIPs' hidden states
(2 x `TEXT_HIDDEN`) are padded to it there, so it is at least as wide as they are together."""

T5_MAX_LENGTH = 512
"""The T5 tokenizer's context length (Flux pads prompts to 512 tokens, SD3 to 256)."""

T5_PAD, T5_EOS, T5_UNK, T5_SPACE = "<pad>", "</s>", "<unk>", "\u2581"
"""T5's special tokens (ids 0, 1, 2, as in t5-v1_1) and the sentencepiece word marker."""

SD3_HEADS, SD3_HEAD_DIM, SD3_LAYERS = 4, 8, 2
"""SD3 transformer shape: 32 wide, two joint blocks, the first an SD3.5 dual-attention one."""

FLUX_HEADS, FLUX_HEAD_DIM, FLUX_ROPE_AXES = 2, 16, (4, 4, 8)
"""Flux transformer shape: 32 wide; the rotary embedding's axes (text id, row, column) sum to the
head width, as Flux's (16, 56, 56) sum to 128."""

TINY_SD3, TINY_FLUX = "tiny-sd3", "tiny-flux"
"""Names of the tiny flow-matching models: SD3.5-shaped and FLUX.1-schnell-shaped."""

TINY_SD3_DEFAULTS: dict[str, Any] = {"width": 64, "height": 64, "steps": 4, "cfg": 4.5}
TINY_FLUX_DEFAULTS: dict[str, Any] = {"width": 64, "height": 64, "steps": 4, "cfg": 0.0}
"""Registered defaults: SD3.5's cfg 4.5; schnell's 4 steps and no guidance (it ignores cfg)."""


def make_tiny_t5_tokenizer() -> Any:
    """A T5 tokenizer (sentencepiece Unigram, as t5-v1_1's) over a hand-written vocabulary of the
    special tokens, the word marker and the printable ASCII characters: every ASCII prompt encodes
    (anything else as <unk>), nothing is fetched, and sentencepiece need not be installed."""
    from transformers import T5Tokenizer  # tokenizers-backed: transformers 5's T5TokenizerFast

    pieces = [(token, 0.0) for token in (T5_PAD, T5_EOS, T5_UNK)]
    pieces.append((T5_SPACE, -2.0))
    pieces.extend((chr(code), -3.0) for code in range(ord("!"), ord("~") + 1))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _t5_encoder(tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_HIDDEN,
        d_kv=T5_KV,
        d_ff=T5_FF,
        num_layers=T5_LAYERS,
        num_heads=T5_HEADS,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _seeded(T5EncoderModel, config)


def _flow_vae() -> Any:
    return _vae(
        latent_channels=FLOW_LATENT_CHANNELS,
        scaling_factor=FLOW_VAE_SCALING_FACTOR,
        shift_factor=FLOW_VAE_SHIFT,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _sd3_pipeline() -> Any:
    """An SD3.5-shaped pipeline: two CLIPs with projections and a T5, a 16-channel VAE, an MMDiT with
    a dual-attention block and RMS-normed q/k, and SD3's flow-matching Euler (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, t5_tokenizer = make_tiny_tokenizer(), make_tiny_t5_tokenizer()
    clip_config = _text_config(tokenizer, projection_dim=TEXT_PROJECTION_DIM)
    transformer = _seeded(
        SD3Transformer2DModel,
        sample_size=32,
        patch_size=2,
        in_channels=FLOW_LATENT_CHANNELS,
        out_channels=FLOW_LATENT_CHANNELS,
        num_layers=SD3_LAYERS,
        attention_head_dim=SD3_HEAD_DIM,
        num_attention_heads=SD3_HEADS,
        joint_attention_dim=T5_HIDDEN,
        caption_projection_dim=SD3_HEADS * SD3_HEAD_DIM,
        # the two CLIPs' pooled (projected) embeddings, concatenated
        pooled_projection_dim=2 * TEXT_PROJECTION_DIM,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    # Two encoders of one config, seeded alike, would be the same model twice: seed the second apart.
    import torch

    text_encoder = _seeded(CLIPTextModelWithProjection, clip_config)
    torch.manual_seed(TINY_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_flow_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=_t5_encoder(t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )


def _flux_pipeline() -> Any:
    """A FLUX.1-schnell-shaped pipeline: CLIP (pooled) and T5, a 16-channel VAE whose latents are
    packed 2x2 (64 channels in), double- and single-stream blocks, no guidance embedding (schnell is
    timestep-distilled: it takes no cfg), and a flow-matching Euler without shift, as schnell's."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, t5_tokenizer = make_tiny_tokenizer(), make_tiny_t5_tokenizer()
    transformer = _seeded(
        FluxTransformer2DModel,
        patch_size=1,
        in_channels=4 * FLOW_LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=FLUX_HEAD_DIM,
        num_attention_heads=FLUX_HEADS,
        joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=FLUX_ROPE_AXES,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
        ),
        vae=_flow_vae(),
        text_encoder=_seeded(CLIPTextModel, _text_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(t5_tokenizer),
        tokenizer_2=t5_tokenizer,
    )


RANDOM_SD15 = "random-sd15"
"""Name of the full-size SD1.5 with random weights (`kitty-images models random-sd15`)."""

RANDOM_SD15_DEFAULTS: dict[str, Any] = {"width": 256, "height": 256, "steps": 4, "cfg": 7.0}
"""Registered defaults: small enough for a CPU to render in seconds a step."""

CLIP_VOCAB_SIZE = 49408
"""CLIP ViT-L/14's vocabulary: the text encoder's embedding table has this many rows, like the real
one's (the tiny tokenizer uses only its first few hundred)."""


def _random_sd15_pipeline() -> Any:
    """SD1.5's published shapes (UNet 859.5 M, VAE 83.7 M, CLIP-L 123.1 M parameters) with random
    weights: what a real checkpoint costs to load and to run, and what peers that detect a model's
    family from its tensor shapes (ComfyUI) accept as SD1.5."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = make_tiny_tokenizer()
    # UNet2DConditionModel's defaults are SD1.x's blocks, channels, layers and heads.
    unet = _seeded(UNet2DConditionModel, sample_size=64, cross_attention_dim=768)
    vae = _seeded(
        AutoencoderKL,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _sd15_of(unet, vae, _seeded(CLIPTextModel, text_config), tokenizer)


def build_random_sd15(out_dir: Path, models_yaml: Path | None = None, *, force: bool = False) -> Path:
    """A full-size SD1.5 with random weights, saved as diffusers saves a model (fp16 safetensors,
    2.1 GB) under `out_dir/random-sd15`, and registered in `models_yaml` when given. For sizing a
    machine and comparing engines without a download; it renders noise. About a minute to build
    on two cores; a folder already built is kept unless `force`."""
    import time

    import torch

    from .engines.diffusers_engine import quiet_libraries

    quiet_libraries()
    folder = Path(out_dir).resolve() / RANDOM_SD15
    if force or not _is_built(folder):
        started = time.perf_counter()
        pipe = _random_sd15_pipeline().to(dtype=torch.float16)
        partial = folder.with_name(folder.name + ".partial")
        pipe.save_pretrained(partial)
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        partial.rename(folder)  # whole or absent: a build cut short leaves no model_index.json
        logger.info("built %s in %s (%.0f s)", RANDOM_SD15, folder, time.perf_counter() - started)
    if models_yaml is not None:
        entry = {
            "path": str(folder),
            "family": "sd15",
            "defaults": dict(RANDOM_SD15_DEFAULTS),
            "description": "SD1.5's full size, random weights (kitty-images models random-sd15): noise",
        }
        register_model(Path(models_yaml), RANDOM_SD15, entry)
    return folder


def _is_built(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def build_tiny_lora(sd15_dir: Path, out_dir: Path) -> Path:
    """A LoRA for the tiny SD1.5 UNet with random, non-zero weights (so it visibly changes a render),
    saved as diffusers saves trained ones; returns its folder."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(sd15_dir, subfolder="unet")
    torch.manual_seed(TINY_SEED)
    # init_lora_weights=False: both A and B random; the default (B = 0) would change nothing.
    config = LoraConfig(
        r=TINY_LORA_RANK,
        lora_alpha=TINY_LORA_ALPHA,
        target_modules=list(TINY_LORA_TARGETS),
        init_lora_weights=False,
    )
    unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=get_peft_model_state_dict(unet), weight_name=TINY_LORA_FILE
    )
    return out_dir


def build_tiny_controlnet(model_dir: Path, out_dir: Path) -> Path:
    """A ControlNet for the tiny pipeline saved at `model_dir` (SD1.5 or SDXL): its UNet's encoder
    copied as diffusers' `ControlNetModel.from_unet` does, with seeded random zero convolutions so
    it visibly steers a render; saved as a diffusers folder at `out_dir`, which is returned."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONTROL_EMBEDDING_CHANNELS
    )
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
    generator = torch.Generator().manual_seed(TINY_SEED)
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * TINY_CONTROL_INIT_STD)
    controlnet.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_ip_adapter(model_dir: Path, out_dir: Path) -> Path:
    """An IP-Adapter for the tiny pipeline saved at `model_dir`: a tiny CLIP vision encoder under
    `out_dir/image_encoder` and the adapter's weights in `out_dir/ip-adapter_tiny.safetensors`, keyed
    as h94/IP-Adapter's files are (``image_proj.proj``/``image_proj.norm``, then ``ip_adapter.N.
    to_k_ip``/``to_v_ip`` for the Nth attention processor, cross-attention ones odd). Returns the
    weight file."""
    import math

    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    out_dir = Path(out_dir)
    vision_config = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=TEXT_INTERMEDIATE,
        num_attention_heads=TEXT_HEADS,
        num_hidden_layers=TEXT_LAYERS,
        image_size=VISION_IMAGE_SIZE,
        patch_size=VISION_PATCH,
        projection_dim=VISION_HIDDEN,
    )
    _seeded(CLIPVisionModelWithProjection, vision_config).save_pretrained(out_dir / TINY_IMAGE_ENCODER)

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    cross_dim = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(TINY_SEED)

    def random(rows: int, cols: int) -> Any:
        # nn.Linear's scale: the adapter's attention adds about as much as the text's does.
        return torch.randn(rows, cols, generator=generator) / math.sqrt(cols)

    weights: dict[str, Any] = {
        "image_proj.proj.weight": random(IP_ADAPTER_TOKENS * cross_dim, VISION_HIDDEN),
        "image_proj.proj.bias": torch.zeros(IP_ADAPTER_TOKENS * cross_dim),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    blocks = unet.config.block_out_channels
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention: no image tokens
            continue
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else -1
        hidden = (
            blocks[-1] if block < 0 else (blocks[block] if name.startswith("down") else blocks[::-1][block])
        )
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = random(hidden, cross_dim)
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = random(hidden, cross_dim)
        key_id += 2
    weight_file = out_dir / TINY_IP_ADAPTER_FILE
    save_file({key: value.contiguous() for key, value in weights.items()}, str(weight_file))
    return weight_file


def _build_tiny_addons(out_dir: Path, models_yaml: Path, *, force: bool) -> list[str]:
    """The tiny ControlNets and IP-Adapter, built beside the tiny pipelines and registered."""
    note = "tiny random {what} for {model} (kitty-images models tiny): for demos and tests"
    controlnets = (
        (TINY_CANNY, TINY_SD15, "sd15", "canny"),
        (TINY_DEPTH, TINY_SD15, "sd15", "depth"),
        (TINY_SDXL_CANNY, TINY_SDXL, "sdxl", "canny"),
    )
    for name, model, base, control_type in controlnets:
        folder = out_dir / name
        if force or not (folder / "config.json").is_file():
            build_tiny_controlnet(out_dir / model, folder)
        entry: dict[str, Any] = {"path": str(folder), "base": base, "type": control_type}
        register_addon(
            models_yaml,
            "controlnets",
            name,
            {**entry, "description": note.format(what="ControlNet", model=model)},
        )
    ip_dir = out_dir / TINY_IP_ADAPTER
    if force or not (ip_dir / TINY_IP_ADAPTER_FILE).is_file():
        build_tiny_ip_adapter(out_dir / TINY_SD15, ip_dir)
    ip_entry = {
        "path": str(ip_dir / TINY_IP_ADAPTER_FILE),
        "base": "sd15",
        "image_encoder": str(ip_dir / TINY_IMAGE_ENCODER),
        "description": note.format(what="IP-Adapter", model=TINY_SD15),
    }
    register_addon(models_yaml, "ip_adapters", TINY_IP_ADAPTER, ip_entry)
    from .engines.upscaling import build_tiny_upscaler

    for name, scale in TINY_UPSCALERS.items():
        path = out_dir / name / f"{name}.safetensors"
        if force or not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_upscaler(path, scale)
        description = note.format(what="upscaler", model="any image")
        entry = {"path": str(path), "scale": scale, "description": description}
        register_addon(models_yaml, "upscalers", name, entry)
    return [*(name for name, *_ in controlnets), TINY_IP_ADAPTER, *TINY_UPSCALERS]


def build_tiny_models(out_dir: Path, models_yaml: Path, *, force: bool = False) -> list[str]:
    """Build the tiny pipelines, the tiny LoRA and the tiny guided-generation add-ons under
    `out_dir/<name>` and register them in `models_yaml`.

    A folder that already holds a ``model_index.json`` (the LoRA, ControlNets, IP-Adapter: their
    weights) is kept unless `force`. Returns the names registered: base models first, then the
    LoRA, the ControlNets and the IP-Adapter.
    """
    import importlib.util
    import time

    from .engines.diffusers_engine import quiet_libraries

    quiet_libraries()
    out_dir = Path(out_dir).resolve()
    started = time.perf_counter()
    sd15_dir, sdxl_dir, refiner_dir = (out_dir / n for n in (TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER))

    lora_dir = out_dir / TINY_LORA
    if force or not _is_built(sd15_dir):
        _sd15_pipeline().save_pretrained(sd15_dir)
    has_peft = importlib.util.find_spec("peft") is not None
    if has_peft and (force or not (lora_dir / TINY_LORA_FILE).is_file()):
        build_tiny_lora(sd15_dir, lora_dir)
    if force or not _is_built(sdxl_dir) or not _is_built(refiner_dir):
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        components = _sdxl_components()
        base: Any = StableDiffusionXLPipeline(**components)
        base.save_pretrained(sdxl_dir)
        # Same weights as the base; without aesthetics ids its UNet's time embedding fits unchanged.
        refiner: Any = StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False)
        refiner.save_pretrained(refiner_dir)
    flow_dirs = {TINY_SD3: out_dir / TINY_SD3, TINY_FLUX: out_dir / TINY_FLUX}
    for name, build in ((TINY_SD3, _sd3_pipeline), (TINY_FLUX, _flux_pipeline)):
        if force or not _is_built(flow_dirs[name]):
            build().save_pretrained(flow_dirs[name])

    note = "tiny random weights (kitty-images models tiny): renders noise, for demos and tests"
    entries: dict[str, dict[str, Any]] = {
        # `family` lets the API pick each model's own add-ons (tiny-canny vs tiny-sdxl-canny).
        TINY_SD15: {
            "path": str(sd15_dir),
            "family": "sd15",
            "defaults": dict(TINY_DEFAULTS),
            "description": note,
        },
        TINY_SDXL: {
            "path": str(sdxl_dir),
            "family": "sdxl",
            "refiner": TINY_SDXL_REFINER,
            "defaults": dict(TINY_DEFAULTS),
            "description": note,
        },
        TINY_SDXL_REFINER: {
            "path": str(refiner_dir),
            "family": "sdxl",
            "defaults": dict(TINY_DEFAULTS),
            "description": note,
        },
        TINY_SD3: {
            "path": str(flow_dirs[TINY_SD3]),
            "family": "sd3",
            "defaults": dict(TINY_SD3_DEFAULTS),
            "description": note,
        },
        TINY_FLUX: {
            "path": str(flow_dirs[TINY_FLUX]),
            "family": "flux",
            "defaults": dict(TINY_FLUX_DEFAULTS),
            "description": note,
        },
    }
    for name, entry in entries.items():
        register_model(Path(models_yaml), name, entry)
    names = list(entries)
    if has_peft:
        lora_note = f"tiny random LoRA for {TINY_SD15} (kitty-images models tiny): for demos and tests"
        register_lora(
            Path(models_yaml),
            TINY_LORA,
            {"path": str(lora_dir / TINY_LORA_FILE), "base": "sd15", "description": lora_note},
        )
        names.append(TINY_LORA)
    else:
        logger.warning("%s not built: LoRAs need peft (make install)", TINY_LORA)
    names.extend(_build_tiny_addons(out_dir, Path(models_yaml), force=force))
    logger.info(
        "tiny models ready in %s (%.2f s): %s", out_dir, time.perf_counter() - started, ", ".join(names)
    )
    return names
