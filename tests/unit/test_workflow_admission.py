"""Admitting raw ComfyUI workflows (`workflow_admission`), pure: our own template passes at every
tier's limits and its usual variations (hires fix, SDXL refiner, an upscale model) fit, each
hostile graph is refused naming its node and reason, IMAGES_WORKFLOW_NODES parses, keyless callers
meet the wire's ceiling, and the engine saves a raw graph under a prefix of its own."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from services.common.api_keys import ApiKey
from services.images_service.engines.comfyui import ComfyUIClient
from services.images_service.engines.comfyui.graph import force_output_prefix, raw_output_prefix
from services.images_service.errors import ValidationFailed
from services.images_service.quotas import TIERS, check_ceilings
from services.images_service.settings import Settings
from services.images_service.workflow_admission import (
    DEFAULT_NODE_TYPES,
    MAX_SAMPLER_NODES,
    OPEN_LIMITS,
    UPLOAD_NAME,
    WorkflowLimits,
    admit_workflow,
    allowed_node_types,
)
from tests.support.hostile_workflows import (
    HOSTILE,
    LATENT,
    SAMPLER,
    SAVE,
    Hostile,
    img2img,
    spec_at,
    txt2img,
)

FREE, PRO, ENTERPRISE = TIERS["free"], TIERS["pro"], TIERS["enterprise"]


def at_limits(limits: WorkflowLimits) -> dict[str, Any]:
    return {
        "width": limits.max_side,
        "height": limits.max_side,
        "steps": limits.max_steps,
        "num_images": limits.max_images,
    }


def refusal(graph: dict[str, Any], limits: WorkflowLimits = FREE, **kwargs: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        admit_workflow(graph, limits, **kwargs)
    error = caught.value
    assert error.code == "VALIDATION_ERROR" and error.status == 400
    assert error.remediation and all(step for step in error.remediation)
    json.dumps(error.to_info().model_dump(), allow_nan=False)  # the wire's JSON: no NaN, nothing odd
    return error


# --- what passes --------------------------------------------------------------------------------
@pytest.mark.parametrize("limits", [FREE, PRO, ENTERPRISE, OPEN_LIMITS], ids=lambda limits: limits.name)
@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_our_template_at_the_tiers_limits_is_admitted(limits: WorkflowLimits, kind: str) -> None:
    fields = at_limits(limits)
    graph = txt2img(**fields) if kind == "txt2img" else img2img(mask=kind == "inpaint", **fields)
    cost = admit_workflow(graph, limits)
    assert list(cost.samplers) == [SAMPLER]
    assert cost.total == cost.ceiling == limits.max_steps * limits.max_pixels * limits.max_images


def test_one_step_more_than_the_template_at_the_limits_is_refused() -> None:
    graph = txt2img()
    graph[LATENT]["inputs"]["width"] = 1024 + 8
    assert refusal(graph).detail["limit"] == "size"


def test_a_hires_fix_pass_fits_the_free_tier() -> None:
    """512² for 20 steps, latent upscaled 2×, 15 more steps at 1024²."""
    graph = txt2img(width=512, height=512, steps=20)
    graph["20"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": [SAMPLER, 0], "scale_by": 2.0}}
    graph["21"] = copy.deepcopy(graph[SAMPLER])
    graph["21"]["inputs"].update(latent_image=["20", 0], steps=15, denoise=0.5)
    graph["8"]["inputs"]["samples"] = ["21", 0]
    cost = admit_workflow(graph, FREE)
    assert cost.samplers == {SAMPLER: 20 * 512 * 512, "21": 15 * 1024 * 1024}


def test_sdxl_base_and_refiner_count_each_ones_share_of_the_steps() -> None:
    graph = txt2img()
    base = graph[SAMPLER]["inputs"]
    graph[SAMPLER] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **{k: v for k, v in base.items() if k not in ("seed", "denoise")},
            "add_noise": "enable",
            "noise_seed": 1,
            "start_at_step": 0,
            "end_at_step": 24,
            "return_with_leftover_noise": "enable",
        },
    }
    graph["10"] = copy.deepcopy(graph[SAMPLER])
    graph["10"]["inputs"].update(start_at_step=24, end_at_step=10000, latent_image=[SAMPLER, 0])
    graph["8"]["inputs"]["samples"] = ["10", 0]
    assert admit_workflow(graph, FREE).samplers == {SAMPLER: 24 * 1024**2, "10": 6 * 1024**2}


def test_sampler_custom_costs_its_schedulers_steps() -> None:
    graph = txt2img()
    inputs = graph[SAMPLER]["inputs"]
    graph["30"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["31"] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": 12, "denoise": 1.0},
    }
    graph[SAMPLER] = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": ["4", 0],
            "add_noise": True,
            "noise_seed": 3,
            "cfg": 7.0,
            "positive": inputs["positive"],
            "negative": inputs["negative"],
            "sampler": ["30", 0],
            "sigmas": ["31", 0],
            "latent_image": inputs["latent_image"],
        },
    }
    assert admit_workflow(graph, FREE).samplers == {SAMPLER: 12 * 1024**2}
    graph["31"]["inputs"]["steps"] = 31
    error = refusal(graph)
    assert error.detail["limit"] == "steps" and "'31' (BasicScheduler)" in error.message


def test_a_4x_upscale_model_after_the_last_sampler_is_admitted_once() -> None:
    graph = txt2img()
    graph["30"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "ESRGAN/4x-UltraSharp.pth"}}
    graph["31"] = {
        "class_type": "ImageUpscaleWithModel",
        "inputs": {"upscale_model": ["30", 0], "image": ["8", 0]},
    }
    graph[SAVE]["inputs"]["images"] = ["31", 0]
    admit_workflow(graph, FREE)


def test_plain_image_graphs_without_a_model_are_admitted() -> None:
    """The graphs of the engine's own tests: EmptyImage → ImageScale → ImageInvert → SaveImage."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 30, "batch_size": 1, "color": 5}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bilinear",
                "width": 80,
                "height": 0,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "kitty_real"}},
    }
    assert admit_workflow(graph, FREE).samplers == {}


def test_a_missing_input_is_left_to_comfyui_to_name() -> None:
    """ComfyUI says 'Required input is missing' in its own words; admission only estimates."""
    graph = txt2img()
    del graph[SAMPLER]["inputs"]["latent_image"], graph[LATENT]["inputs"]["width"]
    admit_workflow(graph, FREE)


# --- what is refused ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
def test_each_hostile_graph_is_refused_with_its_reason(case: Hostile) -> None:
    error = refusal(case.graph)
    assert case.says in error.message, error.message
    key, value = case.detail
    assert error.detail[key] == value, error.detail
    assert error.message.startswith(("workflow node '", "tier 'free' allows"))


def test_the_refusal_names_the_node() -> None:
    graph = txt2img()
    graph[SAMPLER]["inputs"]["steps"] = "1000"
    error = refusal(graph)
    assert error.message.startswith("workflow node '3' (KSampler): `steps` must be a number")
    assert error.detail == {
        "node_id": "3",
        "class_type": "KSampler",
        "reason": "not_a_number",
        "input": "steps",
    }
    assert "JSON number" in error.remediation[0]


def test_a_refused_node_type_lists_what_is_allowed_and_how_to_add_one() -> None:
    graph = {"1": {"class_type": "SaveLatent", "inputs": {"filename_prefix": "x"}}}
    error = refusal(graph)
    assert "KSampler" in error.remediation[0] and "IMAGES_WORKFLOW_NODES=+SaveLatent" in error.remediation[0]


def test_hostile_text_in_a_message_is_quoted_and_cut_short() -> None:
    graph = txt2img()
    graph[SAVE]["inputs"]["filename_prefix"] = "../" * 100 + "\n\x1b[31mpwn"
    error = refusal(graph)
    assert "\n" not in error.message and "\x1b" not in error.message and len(error.message) < 400
    error = refusal({"\n1": {"class_type": "Evil\nNode\x1b[0m" * 20, "inputs": {}}})
    assert "\n" not in error.message and "\x1b" not in error.message and len(error.message) < 400


def test_a_sampler_cap_of_four() -> None:
    graph = txt2img(width=256, height=256, steps=1)
    for index in range(MAX_SAMPLER_NODES - 1):
        graph[str(100 + index)] = copy.deepcopy(graph[SAMPLER])
    admit_workflow(graph, FREE)
    graph["200"] = copy.deepcopy(graph[SAMPLER])
    assert refusal(graph).detail["limit"] == "samplers"


@pytest.mark.parametrize(
    "name",
    [
        "../../../../etc/passwd",
        "/etc/passwd",
        "kitty_image_0123456789abcdef0123456789abcdef.png/../../x",
        "sub/kitty_image_0123456789abcdef0123456789abcdef.png",
        "kitty_image_0123456789abcdef0123456789abcdef.jpg",
        "kitty_other_0123456789abcdef0123456789abcdef.png",
        "uploads/20260101_000000_deadbeef.png",
        "photo.png",
    ],
)
def test_loadimage_reads_only_our_uploads(name: str) -> None:
    graph = img2img(mask=True)
    graph["10"]["inputs"]["image"] = name
    assert refusal(graph).detail == {
        "node_id": "10",
        "class_type": "LoadImage",
        "reason": "file_name",
        "input": "image",
    }
    graph = img2img(mask=True)
    graph["13"]["inputs"]["image"] = name
    assert refusal(graph).detail["class_type"] == "LoadImageMask"


def test_the_upload_names_it_accepts_are_those_the_client_gives() -> None:
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        name = request.content.split(b'filename="')[1].split(b'"')[0].decode()
        sent.append(name)
        return httpx.Response(200, json={"name": name, "subfolder": "", "type": "input"})

    with httpx.Client(transport=httpx.MockTransport(answer), base_url="http://comfy") as http:
        client = ComfyUIClient(http, "http://comfy")
        names = [client.upload(Image.new("RGB", (8, 8)), role) for role in ("image", "mask")]
    assert names == sent and all(UPLOAD_NAME.fullmatch(name) for name in names)
    graph = img2img(mask=True)
    graph["10"]["inputs"]["image"], graph["13"]["inputs"]["image"] = names
    admit_workflow(graph, FREE)


@pytest.mark.parametrize("prefix", ["kitty", "my_render-01", "ComfyUI"])
def test_a_plain_filename_prefix_is_admitted(prefix: str) -> None:
    graph = txt2img()
    graph[SAVE]["inputs"]["filename_prefix"] = prefix
    admit_workflow(graph, FREE)


@pytest.mark.parametrize(
    "name", ["SDXL/sd_xl_base_1.0.safetensors", "SDXL\\sd_xl_base_1.0.safetensors", "a..b.ckpt"]
)
def test_model_names_in_subfolders_are_admitted(name: str) -> None:
    graph = txt2img()
    graph["4"]["inputs"]["ckpt_name"] = name
    admit_workflow(graph, FREE)


@pytest.mark.parametrize("name", ["/abs/model.safetensors", "C:\\models\\x.ckpt", "..\\..\\x", "a/../../b"])
def test_model_names_that_leave_the_folder_are_refused(name: str) -> None:
    graph = txt2img()
    graph["4"]["inputs"]["ckpt_name"] = name
    assert refusal(graph).detail["reason"] == "file_name"


def test_a_node_that_is_not_an_object_is_refused() -> None:
    assert refusal({"1": ["KSampler"]}).detail["reason"] == "bad_node"  # type: ignore[dict-item]


# --- keyless callers and the setting ------------------------------------------------------------
def test_without_keys_a_raw_graph_is_held_to_the_wires_largest_request() -> None:
    limits = OPEN_LIMITS
    assert (limits.max_side, limits.max_steps, limits.max_images) == (4096, 150, 8)
    check_ceilings(spec_at(**at_limits(limits), workflow=txt2img(**at_limits(limits))), None)
    for case in HOSTILE:
        if case.detail[0] == "reason":  # what no ceiling excuses
            with pytest.raises(ValidationFailed, match="workflow node"):
                check_ceilings(spec_at(workflow=case.graph), None)
    over = txt2img(**at_limits(limits))
    over["10"] = copy.deepcopy(over[SAMPLER])
    with pytest.raises(
        ValidationFailed, match=r"this service \(no API keys\) allows a workflow cost"
    ) as caught:
        check_ceilings(spec_at(workflow=over), None)
    assert caught.value.detail["tier"] == "open"
    assert not any("higher tier" in step for step in caught.value.remediation)


def test_a_keyed_callers_raw_graph_is_held_to_its_tier() -> None:
    free = ApiKey.of("k", "free")
    check_ceilings(spec_at(workflow=txt2img()), free)
    with pytest.raises(ValidationFailed, match="tier 'free'"):
        check_ceilings(spec_at(workflow=txt2img(**at_limits(PRO))), free)
    check_ceilings(spec_at(workflow=txt2img(**at_limits(PRO))), ApiKey.of("p", "pro"))


def test_the_default_node_types_are_comfyuis_core_for_the_template_and_more() -> None:
    used = {node["class_type"] for node in img2img(mask=True, num_images=1).values()}
    used |= {node["class_type"] for node in txt2img().values()}
    assert used <= DEFAULT_NODE_TYPES
    assert {"LoraLoader", "LatentUpscaleBy", "ImageUpscaleWithModel", "EmptyImage"} <= DEFAULT_NODE_TYPES
    assert not {"SaveLatent", "LoadLatent", "LoadImageOutput"} & DEFAULT_NODE_TYPES


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, DEFAULT_NODE_TYPES),
        ("", DEFAULT_NODE_TYPES),
        (" , ", DEFAULT_NODE_TYPES),
        ("+MyNode", DEFAULT_NODE_TYPES | {"MyNode"}),
        (
            "+MyNode, -LoadImage,-LoadImageMask",
            (DEFAULT_NODE_TYPES | {"MyNode"}) - {"LoadImage", "LoadImageMask"},
        ),
        ("EmptyImage, SaveImage", {"EmptyImage", "SaveImage"}),
        ("EmptyImage,SaveImage,+ImageInvert,-SaveImage", {"EmptyImage", "ImageInvert"}),
    ],
)
def test_images_workflow_nodes_parses(setting: str | None, expected: frozenset[str]) -> None:
    assert allowed_node_types(setting) == expected


@pytest.mark.parametrize("setting", ["+", "KSampler,-", "-NoSuchNode", "EmptyImage,-KSampler"])
def test_a_malformed_images_workflow_nodes_fails_at_startup(setting: str) -> None:
    with pytest.raises(ValidationError, match="IMAGES_WORKFLOW_NODES"):
        Settings(_env_file=None, IMAGES_WORKFLOW_NODES=setting)  # type: ignore[call-arg]


def test_the_setting_decides_which_nodes_pass() -> None:
    graph = txt2img()
    graph["50"] = {"class_type": "MyUpscaler", "inputs": {"image": ["8", 0], "factor": 2}}
    free = ApiKey.of("k", "free")
    with pytest.raises(ValidationFailed, match="node type 'MyUpscaler' is not allowed"):
        check_ceilings(spec_at(workflow=graph), free)
    widened = Settings(_env_file=None, IMAGES_WORKFLOW_NODES="+MyUpscaler")  # type: ignore[call-arg]
    check_ceilings(spec_at(workflow=graph), free, widened)
    narrowed = Settings(_env_file=None, IMAGES_WORKFLOW_NODES="-LoadImage")  # type: ignore[call-arg]
    with pytest.raises(ValidationFailed, match="node type 'LoadImage' is not allowed"):
        check_ceilings(spec_at(workflow=img2img()), free, narrowed)


def test_a_sampler_fed_by_an_added_node_counts_the_tiers_largest_latent() -> None:
    """An added node has no cost model: what comes out of it counts as the tier's largest picture at
    its largest batch."""
    graph = txt2img(width=512, height=512)
    graph["50"] = {"class_type": "MyLatent", "inputs": {"samples": [LATENT, 0]}}
    graph[SAMPLER]["inputs"]["latent_image"] = ["50", 0]
    cost = admit_workflow(graph, PRO, allowed_node_types("+MyLatent"))
    assert cost.samplers == {SAMPLER: 30 * PRO.max_pixels * PRO.max_images}


# --- the forced output prefix -------------------------------------------------------------------
def test_every_save_writes_under_our_prefix_and_the_request_is_left_alone() -> None:
    graph = txt2img()
    graph["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}  # ComfyUI's default prefix
    graph["11"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    graph["12"] = {"class_type": "MySaver", "inputs": {"images": ["8", 0], "filename_prefix": "/tmp/x"}}
    sent = copy.deepcopy(graph)
    prefix = raw_output_prefix("0b7c")
    forced, changed = force_output_prefix(graph, prefix)

    assert prefix == "kitty/0b7c"
    assert changed == [SAVE, "10", "12"]
    assert [forced[node]["inputs"]["filename_prefix"] for node in changed] == [prefix] * 3
    assert forced["11"] == graph["11"], "PreviewImage takes no prefix: it writes to ComfyUI's temp folder"
    assert graph == sent
