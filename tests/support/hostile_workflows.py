"""Raw ComfyUI graphs a free key must not get admitted, each with the reason its refusal must give;
shared by the unit tests of `workflow_admission` and the test through the HTTP API. Every one is our
own template (`template_graph`) at the free tier's limits with one thing changed, so nothing else
about it could be the reason."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.contracts import RenderSpec
from services.images_service.engines.comfyui.graph import template_graph

CKPT = "sd15.safetensors"
IMAGE_UPLOAD = "kitty_image_0123456789abcdef0123456789abcdef.png"
MASK_UPLOAD = "kitty_mask_fedcba9876543210fedcba9876543210.png"
"""Names of the shape ComfyUIClient.upload gives our inputs in ComfyUI's input folder."""

FREE_LIMITS: dict[str, Any] = {"width": 1024, "height": 1024, "steps": 30, "num_images": 1}
SAMPLER, LATENT, SAVE = "3", "5", "9"
"""The template's KSampler, EmptyLatentImage and SaveImage."""


def spec_at(**fields: Any) -> RenderSpec:
    values: dict[str, Any] = {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "model": CKPT,
        "cfg": 7.0,
        "seed": 42,
        "engine": "comfyui",
        **FREE_LIMITS,
    }
    values.update(fields)
    return RenderSpec(**values)


def txt2img(**fields: Any) -> dict[str, Any]:
    """The template, at the free tier's limits unless `fields` say otherwise."""
    return template_graph(spec_at(**fields), CKPT)


def img2img(*, mask: bool = False, **fields: Any) -> dict[str, Any]:
    return template_graph(
        spec_at(strength=0.6, **fields), CKPT, image=IMAGE_UPLOAD, mask=MASK_UPLOAD if mask else None
    )


def _changed(change: Callable[[dict[str, Any]], None], base: dict[str, Any] | None = None) -> dict[str, Any]:
    graph = copy.deepcopy(base if base is not None else txt2img())
    change(graph)
    return graph


def _set(node: str, **inputs: Any) -> Callable[[dict[str, Any]], None]:
    return lambda graph: graph[node]["inputs"].update(inputs)


def _between_latent_and_sampler(*nodes: tuple[str, dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """Chain `nodes` (class_type, inputs) from the empty latent into the KSampler: each takes the one
    before as ``samples``."""

    def change(graph: dict[str, Any]) -> None:
        source = LATENT
        for index, (class_type, inputs) in enumerate(nodes):
            node_id = str(20 + index)
            graph[node_id] = {"class_type": class_type, "inputs": {"samples": [source, 0], **inputs}}
            source = node_id
        graph[SAMPLER]["inputs"]["latent_image"] = [source, 0]

    return change


def _many_samplers(count: int) -> Callable[[dict[str, Any]], None]:
    def change(graph: dict[str, Any]) -> None:
        for index in range(count):
            graph[str(100 + index)] = copy.deepcopy(graph[SAMPLER])

    return change


def _second_pass(graph: dict[str, Any]) -> None:
    """A second full KSampler pass over the first one's latent: twice the free tier's cost."""
    graph["10"] = copy.deepcopy(graph[SAMPLER])
    graph["10"]["inputs"].update(latent_image=[SAMPLER, 0], denoise=0.5)
    graph["8"]["inputs"]["samples"] = ["10", 0]


def _cycle(graph: dict[str, Any]) -> None:
    """The KSampler samples the latent of its own decoded output."""
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}}
    graph[SAMPLER]["inputs"]["latent_image"] = ["11", 0]


def _second_save(graph: dict[str, Any]) -> None:
    graph["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "again"}}


@dataclass(frozen=True)
class Hostile:
    id: str
    graph: dict[str, Any]
    says: str
    """Text the refusal's message must contain: the reason."""
    detail: tuple[str, str]
    """(key, value) of the refusal's detail: ``reason`` of a bad node, ``limit`` of a ceiling."""


def _reason(value: str) -> tuple[str, str]:
    return ("reason", value)


def _limit(value: str) -> tuple[str, str]:
    return ("limit", value)


HOSTILE: list[Hostile] = [
    # the six of issue 15
    Hostile(
        "steps-as-string",
        _changed(_set(SAMPLER, steps="1000")),
        "`steps` must be a number, not str '1000'",
        _reason("not_a_number"),
    ),
    Hostile(
        "repeat-latent-batch-64",
        _changed(_between_latent_and_sampler(("RepeatLatentBatch", {"amount": 64}))),
        "batch of 64",
        _limit("num_images"),
    ),
    Hostile(
        "latent-upscale-by-8",
        _changed(
            _between_latent_and_sampler(("LatentUpscaleBy", {"upscale_method": "bicubic", "scale_by": 8}))
        ),
        "8192×8192 pixels",
        _limit("size"),
    ),
    Hostile(
        "500-ksamplers",
        {
            str(n): {"class_type": "KSampler", "inputs": {"steps": 1, "cfg": 7.0, "seed": n}}
            for n in range(500)
        },
        "at most 4 sampler nodes in a workflow; this workflow asks for 500",
        _limit("samplers"),
    ),
    Hostile(
        "template-plus-493-ksamplers",
        _changed(_many_samplers(500 - len(txt2img()))),
        "asks for 494 (3, 100, 101",
        _limit("samplers"),
    ),
    Hostile(
        "loadimage-etc-passwd",
        _changed(_set("10", image="../../../../etc/passwd"), img2img()),
        "`image` must name an input this service uploaded to ComfyUI",
        _reason("file_name"),
    ),
    Hostile(
        "saveimage-prefix-traversal",
        _changed(_set(SAVE, filename_prefix="../../../tmp/pwn")),
        "`filename_prefix` must be a plain name, not the path '../../../tmp/pwn'",
        _reason("file_name"),
    ),
    # and more
    Hostile(
        "unknown-node-type",
        _changed(
            lambda graph: graph.update({"50": {"class_type": "ExecutePython", "inputs": {"code": "1"}}})
        ),
        "node type 'ExecutePython' is not allowed",
        _reason("node_type"),
    ),
    Hostile(
        "link-to-missing-node",
        _changed(_set(SAMPLER, model=["42", 0])),
        "`model` links to node '42', which the workflow does not have",
        _reason("missing_node"),
    ),
    Hostile("nan-cfg", _changed(_set(SAMPLER, cfg=float("nan"))), "`cfg` is nan", _reason("not_finite")),
    Hostile(
        "infinite-steps", _changed(_set(SAMPLER, steps=float("inf"))), "`steps` is inf", _reason("not_finite")
    ),
    Hostile(
        "latent-upscale-chain",
        _changed(_between_latent_and_sampler(*[("LatentUpscaleBy", {"scale_by": 1.5})] * 8)),
        "upscales included",
        _limit("size"),
    ),
    Hostile(
        "upscale-then-sample",
        _changed(_between_latent_and_sampler(("LatentUpscaleBy", {"scale_by": 2}))),
        "workflow node '3' (KSampler) asks for 2048×2048 pixels",
        _limit("size"),
    ),
    Hostile("second-full-pass", _changed(_second_pass), "a workflow cost of at most", _limit("cost")),
    Hostile("cycle", _changed(_cycle), "its links form a cycle", _reason("cycle")),
    Hostile(
        "checkpoint-path",
        _changed(_set("4", ckpt_name="../../../../etc/shadow")),
        "`ckpt_name` must be a model file inside ComfyUI's model folders",
        _reason("file_name"),
    ),
    Hostile(
        "empty-latent-beyond-tier",
        _changed(_set(LATENT, width=2048, height=2048)),
        "2048×2048 pixels",
        _limit("size"),
    ),
    Hostile("steps-beyond-tier", _changed(_set(SAMPLER, steps=31)), "at most 30 steps", _limit("steps")),
    Hostile(
        "steps-true", _changed(_set(SAMPLER, steps=True)), "`steps` must be a number", _reason("not_a_number")
    ),
    Hostile(
        "negative-width",
        _changed(_set(LATENT, width=-1024)),
        "`width` is -1024, out of range",
        _reason("out_of_range"),
    ),
    Hostile(
        "linked-steps",
        _changed(_set(SAMPLER, steps=[LATENT, 0])),
        "`steps` must be a number written in the workflow, not a link",
        _reason("linked_number"),
    ),
    Hostile(
        "link-with-a-number-id",
        _changed(_set(SAMPLER, model=[4, 0])),
        "`model` is neither a value nor a link",
        _reason("bad_value"),
    ),
    Hostile("two-saves", _changed(_second_save), "2 images saved", _limit("num_images")),
    Hostile(
        "upscale-model-twice",
        _changed(
            lambda graph: graph.update(
                {
                    "30": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},
                    "31": {
                        "class_type": "ImageUpscaleWithModel",
                        "inputs": {"upscale_model": ["30", 0], "image": ["8", 0]},
                    },
                    "32": {
                        "class_type": "ImageUpscaleWithModel",
                        "inputs": {"upscale_model": ["30", 0], "image": ["31", 0]},
                    },
                    SAVE: {
                        "class_type": "SaveImage",
                        "inputs": {"images": ["32", 0], "filename_prefix": "big"},
                    },
                }
            )
        ),
        "16384×16384 pixels",
        _limit("size"),
    ),
]
"""Issue 15's six (a string for steps, a batch of 64, an 8× latent upscale, 500 samplers, LoadImage
of /etc/passwd, SaveImage into /tmp) and more of their kind."""
