"""Writes an SD1.5 diffusers folder as one checkpoint in the original layout (CompVis/A1111/civitai:
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``), the inverse of the
key mapping diffusers' ``from_single_file`` applies; each file is checked by converting it back
with diffusers' own converters, so a mapping that is not exact fails here rather than in a test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    LDM_UNET_KEY,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file, save_file

LDM_NAMES: dict[str, Any] = DIFFUSERS_TO_LDM_MAPPING
"""diffusers' own fixed diffusers → original names (``unet``/``layers``, ``vae``), typed for mypy."""

LDM_VAE_KEY = "first_stage_model."
LDM_CLIP_KEY = "cond_stage_model.transformer.text_model."
"""SD1.x's CLIP ViT-L as the original checkpoints hold it (transformers' ``text_model.`` inside)."""

UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
"""diffusers' ResnetBlock2D parts → the original UNet's ResBlock parts."""

VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
"""diffusers' VAE attention parts → the original AttnBlock's (1×1 convolutions there, linears here)."""

Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _unet_rules(layers_per_block: int, up_blocks_with_attention: set[int]) -> list[Rule]:
    per_block = layers_per_block + 1  # the original counts a down block's downsampler as a layer

    def resnet(prefix: str, part: str) -> str:
        name, _, rest = part.partition(".")
        return f"{prefix}.{UNET_RESNET_NAMES[name]}.{rest}"

    def upsampler(match: re.Match[str]) -> str:
        block = int(match[1])
        slot = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * per_block + layers_per_block}.{slot}.conv.{match[2]}"

    return [
        (
            re.compile(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)"),
            lambda m: resnet(f"input_blocks.{1 + int(m[1]) * per_block + int(m[2])}.0", m[3]),
        ),
        (
            re.compile(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)"),
            lambda m: f"input_blocks.{1 + int(m[1]) * per_block + int(m[2])}.1.{m[3]}",
        ),
        (
            re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)"),
            lambda m: f"input_blocks.{1 + int(m[1]) * per_block + layers_per_block}.0.op.{m[2]}",
        ),
        (
            re.compile(r"mid_block\.resnets\.(\d+)\.(.+)"),
            lambda m: resnet(f"middle_block.{2 * int(m[1])}", m[2]),
        ),
        (re.compile(r"mid_block\.attentions\.0\.(.+)"), lambda m: f"middle_block.1.{m[1]}"),
        (
            re.compile(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)"),
            lambda m: resnet(f"output_blocks.{int(m[1]) * per_block + int(m[2])}.0", m[3]),
        ),
        (
            re.compile(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)"),
            lambda m: f"output_blocks.{int(m[1]) * per_block + int(m[2])}.1.{m[3]}",
        ),
        (re.compile(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)"), upsampler),
    ]


def _vae_rules(up_block_count: int) -> list[Rule]:
    def attention(match: re.Match[str]) -> str:
        part = match[2]
        for new, old in VAE_ATTENTION_NAMES.items():
            if part.startswith(new + "."):
                part = old + part[len(new) :]
                break
        return f"{match[1]}.mid.attn_1.{part}"

    return [
        (
            re.compile(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)"),
            lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}",
        ),
        (
            re.compile(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)"),
            lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}",
        ),
        (
            re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)"),
            lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}",
        ),
        (re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)"), attention),
        (
            # the original numbers the decoder's blocks from the lowest resolution up
            re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)"),
            lambda m: (
                f"decoder.up.{up_block_count - 1 - int(m[1])}.block.{m[2]}."
                + m[3].replace("conv_shortcut", "nin_shortcut")
            ),
        ),
        (
            re.compile(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)"),
            lambda m: f"decoder.up.{up_block_count - 1 - int(m[1])}.upsample.conv.{m[2]}",
        ),
    ]


def _rename(
    state: dict[str, torch.Tensor], fixed: dict[str, str], rules: list[Rule]
) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in fixed:
            renamed[fixed[key]] = tensor
            continue
        for pattern, new_key in rules:
            if match := pattern.fullmatch(key):
                renamed[new_key(match)] = tensor
                break
        else:
            raise ValueError(f"no original-layout name for {key}")
    return renamed


def _check_round_trip(part: str, original: dict[str, torch.Tensor], converted: dict[str, Any]) -> None:
    if set(converted) != set(original):
        missing, extra = sorted(set(original) - set(converted)), sorted(set(converted) - set(original))
        raise ValueError(f"{part} does not convert back: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, tensor in original.items():
        if not torch.equal(converted[key].reshape(tensor.shape), tensor):
            raise ValueError(f"{part}: {key} does not convert back to the same tensor")


def to_original_layout(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of the single-file checkpoint holding `folder`'s UNet, VAE and text encoder."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    text = load_file(folder / "text_encoder" / "model.safetensors")
    # transformers >= 5.6 saves CLIPTextModel without its `text_model.` wrapper; older ones with it
    text = {key.removeprefix("text_model."): tensor for key, tensor in text.items()}

    with_attention = {
        int(key.split(".")[1]) for key in unet if key.startswith("up_blocks.") and ".attentions." in key
    }
    unet_ldm = _rename(
        unet,
        LDM_NAMES["unet"]["layers"],
        _unet_rules(int(unet_config["layers_per_block"]), with_attention),
    )
    vae_ldm = _rename(vae, LDM_NAMES["vae"], _vae_rules(len(vae_config["up_block_types"])))
    for key, tensor in vae_ldm.items():  # the original's attention projections are 1×1 convolutions
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.dim() == 2:
            vae_ldm[key] = tensor[:, :, None, None]

    checkpoint = {
        **{LDM_UNET_KEY + key: tensor for key, tensor in unet_ldm.items()},
        **{LDM_VAE_KEY + key: tensor for key, tensor in vae_ldm.items()},
        **{LDM_CLIP_KEY + key: tensor for key, tensor in text.items()},
    }
    _check_round_trip("unet", unet, convert_ldm_unet_checkpoint(checkpoint, unet_config))
    _check_round_trip("vae", vae, convert_ldm_vae_checkpoint(checkpoint, vae_config))
    clip = {key.removeprefix("text_model."): t for key, t in convert_ldm_clip_checkpoint(checkpoint).items()}
    _check_round_trip("text encoder", text, clip)
    return checkpoint


def save_single_file(folder: Path, out: Path) -> Path:
    """Write `folder` (an SD1.5 diffusers folder) to `out` as one original-layout .safetensors file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {key: tensor.contiguous() for key, tensor in to_original_layout(folder).items()}
    save_file(checkpoint, str(out), metadata={"format": "pt"})
    return out
