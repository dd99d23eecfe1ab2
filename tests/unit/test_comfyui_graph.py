"""ComfyUI's graphs without a server: the template `template_graph` builds for text-to-image,
image-to-image, inpainting, batches, ControlNets and the hires fix, with each scheduler's KSampler
settings; the same graph in the UI's format (`ui_workflow`); what a raw graph renders with
(`graph_settings`); checkpoint names; the equivalent graph of a guided render; and what ComfyUI's
``node_errors``, refusals, events and failed prompts become."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from PIL import Image

from services.contracts import ControlInput, HiresFix, RenderSpec
from services.images_service.engines import RenderedImage, RenderResult
from services.images_service.engines.comfyui import (
    COMFYUI_SAMPLERS,
    HIRES_SAMPLER_NODE,
    KEPT_CHUNKS,
    SAMPLER_NODE,
    SAVE_NODE,
    ComfyUIClient,
    ControlFiles,
    combo_options,
    control_nodes,
    describe_problems,
    failure_remediation,
    graph_settings,
    hires_steps,
    match_checkpoint,
    node_problems,
    template_graph,
    template_steps,
    ui_workflow,
)
from services.images_service.engines.comfyui.client import history_failure, prompt_failure, read_event
from services.images_service.errors import KittyError
from services.images_service.provenance import equivalent_graph
from services.images_service.uploads import DEFAULT_STRENGTH

CKPT = "SDXL/sd_xl_base_1.0.safetensors"
URL = "http://127.0.0.1:8188"


def make_spec(**overrides: Any) -> RenderSpec:
    values: dict[str, Any] = {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "model": None,
        "width": 64,
        "height": 48,
        "steps": 5,
        "cfg": 6.5,
        "seed": 42,
        "scheduler": "dpmpp_2m_karras",
        "engine": "comfyui",
    }
    values.update(overrides)
    return RenderSpec(**values)


def classes(graph: dict[str, Any]) -> dict[str, str]:
    return {node_id: node["class_type"] for node_id, node in graph.items()}


# --- the template -----------------------------------------------------------------------------------
def test_txt2img_is_comfyuis_default_workflow_with_the_requests_values() -> None:
    graph = template_graph(make_spec(), CKPT)
    assert graph == {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 42,
                "steps": 5,
                "cfg": 6.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "kitty", "images": ["8", 0]}},
    }
    assert list(graph) == ["4", "6", "7", "5", "3", "8", "9"], "nodes in the order they run"
    assert (SAMPLER_NODE, SAVE_NODE) == ("3", "9")


def test_txt2img_batch_is_one_latent_batch_from_one_seed() -> None:
    graph = template_graph(make_spec(num_images=3), CKPT)
    assert graph["5"]["inputs"]["batch_size"] == 3
    assert graph["3"]["inputs"]["seed"] == 42
    assert "12" not in graph and "RepeatLatentBatch" not in classes(graph).values()


@pytest.mark.parametrize(
    ("scheduler", "sampler_name", "comfy_scheduler"),
    [
        ("euler", "euler", "normal"),
        ("euler_a", "euler_ancestral", "normal"),
        ("ddim", "ddim", "ddim_uniform"),
        ("pndm", "ipndm", "normal"),
        ("dpmpp_2m_karras", "dpmpp_2m", "karras"),
        ("unipc", "uni_pc", "normal"),
        (None, "euler", "normal"),
        ("not_a_scheduler", "euler", "normal"),
    ],
)
def test_scheduler_names_become_ksampler_settings(
    scheduler: str | None, sampler_name: str, comfy_scheduler: str
) -> None:
    inputs = template_graph(make_spec(scheduler=scheduler), CKPT)[SAMPLER_NODE]["inputs"]
    assert (inputs["sampler_name"], inputs["scheduler"]) == (sampler_name, comfy_scheduler)


def test_every_scheduler_we_name_maps_to_a_pair() -> None:
    assert all(len(pair) == 2 and all(pair) for pair in COMFYUI_SAMPLERS.values())
    assert {"euler", "euler_a", "ddim", "dpmpp_2m_karras", "unipc"} <= set(COMFYUI_SAMPLERS)


def test_img2img_encodes_the_upload_and_denoises_by_strength() -> None:
    graph = template_graph(make_spec(strength=0.4), CKPT, image="kitty_image_ab.png")
    assert graph["10"] == {"class_type": "LoadImage", "inputs": {"image": "kitty_image_ab.png"}}
    assert graph["11"] == {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    assert "5" not in graph, "no empty latent"
    sampler = graph["3"]["inputs"]
    assert sampler["latent_image"] == ["11", 0] and sampler["denoise"] == 0.4
    assert graph["9"]["inputs"]["images"] == ["8", 0]


def test_img2img_without_strength_uses_the_services_default() -> None:
    graph = template_graph(make_spec(), CKPT, image="in.png")
    assert graph["3"]["inputs"]["denoise"] == DEFAULT_STRENGTH == 0.75


def test_img2img_batch_repeats_the_latent() -> None:
    graph = template_graph(make_spec(num_images=2), CKPT, image="in.png")
    assert graph["12"] == {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["11", 0], "amount": 2}}
    assert graph["3"]["inputs"]["latent_image"] == ["12", 0]


def test_inpainting_masks_the_latent_and_pastes_over_the_original() -> None:
    graph = template_graph(make_spec(), CKPT, image="sub/in.png", mask="sub/mask.png")
    assert graph["13"] == {
        "class_type": "LoadImageMask",
        "inputs": {"image": "sub/mask.png", "channel": "red"},
    }
    assert graph["14"] == {
        "class_type": "SetLatentNoiseMask",
        "inputs": {"samples": ["11", 0], "mask": ["13", 0]},
    }
    assert graph["3"]["inputs"]["latent_image"] == ["14", 0]
    assert graph["16"] == {
        "class_type": "ImageCompositeMasked",
        "inputs": {
            "destination": ["10", 0],
            "source": ["8", 0],
            "x": 0,
            "y": 0,
            "resize_source": False,
            "mask": ["13", 0],
        },
    }
    assert graph["9"]["inputs"]["images"] == ["16", 0]
    assert "15" not in graph


def test_inpainting_batch_repeats_latent_and_original() -> None:
    graph = template_graph(make_spec(num_images=3), CKPT, image="in.png", mask="mask.png")
    assert graph["14"]["inputs"]["samples"] == ["12", 0]
    assert graph["15"] == {"class_type": "RepeatImageBatch", "inputs": {"image": ["10", 0], "amount": 3}}
    assert graph["16"]["inputs"]["destination"] == ["15", 0]
    assert list(graph) == ["4", "6", "7", "10", "11", "12", "13", "14", "3", "8", "15", "16", "9"]


# --- the UI workflow --------------------------------------------------------------------------------
def test_ui_workflow_links_every_input_to_its_source_output() -> None:
    graph = template_graph(make_spec(), CKPT)
    workflow = ui_workflow(graph)
    assert workflow["version"] == 0.4 and workflow["last_node_id"] == 9
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert [node["order"] for node in workflow["nodes"]] == list(range(7))
    assert {node_id: node["type"] for node_id, node in nodes.items()} == {
        int(node_id): node["class_type"] for node_id, node in graph.items()
    }
    # One link per linked input: [id, from node, from slot, to node, to slot, type].
    assert workflow["last_link_id"] == len(workflow["links"]) == 9
    assert workflow["links"][:3] == [
        [1, 4, 1, 6, 0, "CLIP"],
        [2, 4, 1, 7, 0, "CLIP"],
        [3, 4, 0, 3, 0, "MODEL"],
    ]
    assert workflow["links"][5] == [6, 5, 0, 3, 3, "LATENT"], "the KSampler's latent_image"
    for link_id, source, slot, target, target_slot, _ in workflow["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    assert nodes[9]["outputs"] == [], "SaveImage has no output"


def test_ui_workflow_widget_values_are_the_graphs_plus_ui_only_widgets() -> None:
    graph = template_graph(make_spec(), CKPT, image="in.png", mask="mask.png")
    nodes = {node["id"]: node for node in ui_workflow(graph)["nodes"]}
    assert nodes[3]["widgets_values"] == [42, "fixed", 5, 6.5, "dpmpp_2m", "karras", 0.75]
    assert nodes[4]["widgets_values"] == [CKPT]
    assert nodes[10]["widgets_values"] == ["in.png", "image"]
    assert nodes[13]["widgets_values"] == ["mask.png", "red", "image"]
    assert nodes[16]["widgets_values"] == [0, 0, False]


def test_ui_workflow_lays_nodes_out_by_depth() -> None:
    nodes = {node["id"]: node for node in ui_workflow(template_graph(make_spec(), CKPT))["nodes"]}
    # The checkpoint and the empty latent start columns 0; the prompts read the checkpoint: column 1.
    assert nodes[4]["pos"][0] == nodes[5]["pos"][0] == 40
    assert nodes[6]["pos"][0] == nodes[7]["pos"][0] == 400
    assert nodes[6]["pos"][1] != nodes[7]["pos"][1]
    assert nodes[3]["pos"][0] == 760 and nodes[8]["pos"][0] == 1120 and nodes[9]["pos"][0] == 1480


def test_ui_workflow_is_json() -> None:
    workflow = ui_workflow(template_graph(make_spec(num_images=2), CKPT, image="a.png", mask="m.png"))
    assert json.loads(json.dumps(workflow)) == workflow
    assert KEPT_CHUNKS == ("prompt", "workflow")


# --- what a raw graph renders with -----------------------------------------------------------------
def test_graph_settings_reads_the_one_ksampler() -> None:
    graph = template_graph(make_spec(seed=7, steps=9, cfg=3.5, scheduler="euler_a"), CKPT)
    assert graph_settings(graph) == (
        7,
        {"steps": 9, "cfg": 3.5, "sampler": "euler_ancestral", "scheduler": "normal"},
    )


def test_graph_settings_reads_noise_seed_and_refuses_what_is_not_plain() -> None:
    graph: dict[str, Any] = {
        "1": {
            "class_type": "SamplerCustom",
            "inputs": {"noise_seed": 11, "cfg": True, "steps": 4.0, "sampler_name": ["2", 0]},
        },
        "3": "not a node",
    }
    assert graph_settings(graph) == (11, {"steps": None, "cfg": None, "sampler": None, "scheduler": None})
    graph["1"]["inputs"] = "broken"
    assert graph_settings(graph) == (None, {"steps": None, "cfg": None, "sampler": None, "scheduler": None})


# --- checkpoint names --------------------------------------------------------------------------------
def test_combo_options_reads_both_schemas() -> None:
    assert combo_options([["a.safetensors", "b.ckpt"], {"tooltip": "x"}]) == ["a.safetensors", "b.ckpt"]
    assert combo_options(["COMBO", {"options": ["a.safetensors"]}]) == ["a.safetensors"]
    assert combo_options(["INT", {"default": 1}]) == [] and combo_options(None) == []


def test_match_checkpoint_by_name_file_name_or_stem() -> None:
    available = [CKPT, "v1-5-pruned.ckpt", "a/model.safetensors", "b/model.safetensors"]
    assert match_checkpoint(CKPT, available) == CKPT
    assert match_checkpoint("sd_xl_base_1.0", available) == CKPT
    assert match_checkpoint("v1-5-pruned.ckpt", available) == "v1-5-pruned.ckpt"
    assert match_checkpoint("model", available) is None, "two files of that stem"
    assert match_checkpoint("nothing", available) is None
    assert match_checkpoint("sd15", ["Win\\sd15.safetensors"]) == "Win\\sd15.safetensors"


# --- node errors, refusals, failures ------------------------------------------------------------------
NODE_ERRORS = {
    "1": {
        "class_type": "EmptyImage",
        "dependent_outputs": ["2"],
        "errors": [
            {
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": "color",
                "extra_info": {"input_name": "color", "traceback": ["Traceback ..."]},
            },
            "not a dict",
        ],
    },
    "12": {
        "class_type": "ImageScale",
        "errors": [
            {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": "",
                "extra_info": {"input_name": "upscale_method"},
            }
        ],
    },
    "bad": "not a dict",
}


def test_node_problems_flatten_node_errors_without_tracebacks() -> None:
    problems = node_problems(NODE_ERRORS)
    assert problems == [
        {
            "node_id": "1",
            "class_type": "EmptyImage",
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": "color",
            "input_name": "color",
        },
        {
            "node_id": "12",
            "class_type": "ImageScale",
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": "",
            "input_name": "upscale_method",
        },
    ]
    assert "Traceback" not in json.dumps(problems)
    assert describe_problems(problems) == (
        "node 1 (EmptyImage): Required input is missing: color; "
        "node 12 (ImageScale): Value not in list: upscale_method"
    )
    assert node_problems(None) == node_problems([]) == node_problems({}) == []


def refusal(body: Any, *, is_template: bool) -> KittyError:
    """What ``POST /prompt`` answering 400 with `body` (JSON, or a plain text) becomes."""
    response = httpx.Response(400, text=body) if isinstance(body, str) else httpx.Response(400, json=body)
    with httpx.Client() as http:
        return ComfyUIClient(http, URL)._refusal(response, is_template)


def test_a_refused_raw_graph_names_each_node_and_how_to_fix_it() -> None:
    error = refusal(
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
            },
            "node_errors": NODE_ERRORS,
        },
        is_template=False,
    )
    assert error.code == "VALIDATION_ERROR"
    assert error.message.startswith("ComfyUI refused the workflow: node 1 (EmptyImage)")
    assert error.detail["error_type"] == "prompt_outputs_failed_validation"
    assert len(error.detail["node_errors"]) == 2
    assert "Export (API)" in error.remediation[0]


def test_a_refusal_without_node_errors_says_the_servers_message() -> None:
    error = refusal({"error": {"message": "no outputs", "details": "add a SaveImage"}}, is_template=True)
    assert error.message == "ComfyUI refused the workflow: no outputs (add a SaveImage)"
    assert "console" in error.remediation[0]
    assert refusal("plain text", is_template=True).message == "ComfyUI refused the workflow: plain text"


def test_a_refused_upload_of_our_own_is_an_engine_error() -> None:
    errors = {
        "10": {"class_type": "LoadImage", "errors": [{"message": "Invalid image file", "details": "x"}]}
    }
    error = refusal({"error": {"message": "invalid"}, "node_errors": errors}, is_template=True)
    assert error.code == "ENGINE_ERROR"
    assert error.message == (
        f"ComfyUI at {URL} no longer has the input uploaded for this job: "
        "node 10 (LoadImage): Invalid image file: x"
    )
    # The same node id in a raw graph is the client's own node.
    assert refusal({"node_errors": errors}, is_template=False).code == "VALIDATION_ERROR"


def test_events_of_other_prompts_and_previews_are_not_ours() -> None:
    progress = {"type": "progress", "data": {"prompt_id": "p1", "node": "3", "value": 2, "max": 5}}
    assert read_event(json.dumps(progress), "p1") == ("progress", progress["data"])
    assert read_event(json.dumps(progress), "p2") is None
    assert read_event(b"\x00\x00\x00\x01preview", "p1") is None
    assert read_event("not json", "p1") is None
    assert read_event(json.dumps({"type": "status", "data": {"status": {}}}), "p1") is None


def test_a_failed_node_says_what_failed_and_never_the_traceback() -> None:
    data = {
        "prompt_id": "p1",
        "node_id": "4",
        "node_type": "CheckpointLoaderSimple",
        "exception_type": "RuntimeError",
        "exception_message": "Could not detect model type",
        "traceback": ["File execution.py ..."],
    }
    error = prompt_failure("execution_error", data)
    assert error.message == (
        "ComfyUI failed in node 4 (CheckpointLoaderSimple): RuntimeError: Could not detect model type"
    )
    assert error.remediation == failure_remediation(data)
    assert "model file" in error.remediation[1]
    assert "traceback" not in error.detail
    interrupted = prompt_failure("execution_interrupted", data)
    assert "canceled on the server" in interrupted.message


def test_a_failed_history_entry_is_the_failure_it_records() -> None:
    data = {
        "node_id": "3",
        "node_type": "KSampler",
        "exception_type": "torch.OutOfMemoryError",
        "exception_message": "CUDA out of memory",
    }
    entry = {
        "status": {"status_str": "error", "messages": [["execution_start", {}], ["execution_error", data]]}
    }
    failure = history_failure("p1", entry)
    assert failure is not None and "torch.OutOfMemoryError" in failure.message
    assert "Out of memory" in " ".join(failure.remediation)
    bare = history_failure("p1", {"status": {"status_str": "error"}})
    assert bare is not None and bare.message == "ComfyUI reports prompt p1 failed"
    assert history_failure("p1", {"status": {"status_str": "success"}, "outputs": {}}) is None
    assert history_failure("p1", {}) is None


# --- guidance: ControlNets and the hires fix ---------------------------------------------------------
CANNY = ControlInput(
    image="uploads/edges.png", type="canny", model="cn_canny", weight=0.6, start=0.1, end=0.8
)
DEPTH = ControlInput(image="uploads/depth.png", type="depth", model="cn_depth", weight=1.3)


def test_each_control_steers_both_prompts_of_every_sampler_in_order() -> None:
    spec = make_spec(controls=[CANNY, DEPTH], hires=HiresFix(scale=2.0, strength=0.35))
    files = [
        ControlFiles("kitty_control_a.png", "canny.pth"),
        ControlFiles("kitty_control_b.png", "depth.pth"),
    ]
    graph = template_graph(spec, CKPT, controls=files)

    first, second = control_nodes(0), control_nodes(1)
    assert graph[first[0]] == {"class_type": "LoadImage", "inputs": {"image": "kitty_control_a.png"}}
    assert first[1] not in graph, "the map was computed on our side: no Canny node"
    assert graph[first[2]] == {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.pth"}}
    assert graph[first[3]] == {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": ["6", 0],
            "negative": ["7", 0],
            "control_net": [first[2], 0],
            "image": [first[0], 0],
            "strength": 0.6,
            "start_percent": 0.1,
            "end_percent": 0.8,
        },
    }
    chained = graph[second[3]]["inputs"]
    assert (chained["positive"], chained["negative"]) == ([first[3], 0], [first[3], 1])
    assert (chained["strength"], chained["start_percent"], chained["end_percent"]) == (1.3, 0.0, 1.0)
    for sampler in (SAMPLER_NODE, HIRES_SAMPLER_NODE):
        inputs = graph[sampler]["inputs"]
        assert (inputs["positive"], inputs["negative"]) == ([second[3], 0], [second[3], 1])
    order = list(graph)
    assert order.index(second[3]) < order.index(SAMPLER_NODE), "listed in the order they run"


def test_hires_fix_resizes_the_first_pass_and_resamples_it_at_the_hires_strength() -> None:
    spec = make_spec(width=64, height=48, steps=5, hires=HiresFix(scale=1.5, strength=0.35, steps=3))
    graph = template_graph(spec, CKPT)
    assert spec.output_size == (96, 72)
    assert classes(graph) == {
        **{node_id: kind for node_id, kind in classes(template_graph(make_spec(), CKPT)).items()},
        "32": "ImageScale",
        "33": "VAEEncode",
        HIRES_SAMPLER_NODE: "KSampler",
        "35": "VAEDecode",
    }
    assert graph["32"]["inputs"] == {
        "image": ["8", 0],
        "upscale_method": "lanczos",
        "width": 96,
        "height": 72,
        "crop": "disabled",
    }
    second, first = graph[HIRES_SAMPLER_NODE]["inputs"], graph[SAMPLER_NODE]["inputs"]
    assert (second["steps"], second["denoise"], second["latent_image"]) == (3, 0.35, ["33", 0])
    assert (first["steps"], first["denoise"]) == (5, 1.0)
    assert all(second[name] == first[name] for name in ("seed", "cfg", "sampler_name", "scheduler", "model"))
    assert graph[SAVE_NODE]["inputs"]["images"] == ["35", 0]
    assert template_steps(spec) == {SAMPLER_NODE: 0, HIRES_SAMPLER_NODE: 5} and hires_steps(spec) == 3
    assert hires_steps(make_spec(hires=HiresFix())) == 5, "absent: the request's steps"


def test_hires_fix_with_an_upscale_model_still_lands_on_the_output_size() -> None:
    spec = make_spec(hires=HiresFix(scale=2.0, upscaler="RealESRGAN_x4plus"))
    graph = template_graph(spec, CKPT, upscale_model="RealESRGAN_x4plus.pth")
    assert graph["30"] == {
        "class_type": "UpscaleModelLoader",
        "inputs": {"model_name": "RealESRGAN_x4plus.pth"},
    }
    assert graph["31"]["inputs"] == {"upscale_model": ["30", 0], "image": ["8", 0]}
    assert graph["32"]["inputs"]["image"] == ["31", 0]
    assert (graph["32"]["inputs"]["width"], graph["32"]["inputs"]["height"]) == (128, 96)


def test_a_graph_that_computes_edges_itself_adds_a_canny_node() -> None:
    spec = make_spec(controls=[CANNY])
    graph = template_graph(spec, CKPT, controls=[ControlFiles("edges.png", "cn_canny.safetensors", True)])
    load, canny, _, apply = control_nodes(0)
    assert graph[canny]["class_type"] == "Canny"
    assert graph[canny]["inputs"]["image"] == [load, 0] and graph[apply]["inputs"]["image"] == [canny, 0]
    assert 0.01 <= graph[canny]["inputs"]["low_threshold"] < graph[canny]["inputs"]["high_threshold"] <= 0.99


def test_every_control_needs_its_files() -> None:
    with pytest.raises(ValueError, match="2 controls"):
        template_graph(make_spec(controls=[CANNY, DEPTH]), CKPT, controls=[ControlFiles("a.png", "c.pth")])


def test_a_guided_graph_in_the_uis_format_links_every_input() -> None:
    spec = make_spec(controls=[CANNY, DEPTH], hires=HiresFix(upscaler="x4"))
    files = [ControlFiles("a.png", "c.pth", True), ControlFiles("b.png", "d.pth")]
    graph = template_graph(spec, CKPT, controls=files, upscale_model="x4.pth")
    workflow = ui_workflow(graph)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(graph)
    linked = sum(isinstance(value, list) for node in graph.values() for value in node["inputs"].values())
    assert len(workflow["links"]) == linked
    apply = nodes[int(control_nodes(0)[3])]
    assert apply["widgets_values"] == [0.6, 0.1, 0.8]
    assert [output["name"] for output in apply["outputs"]] == ["positive", "negative"]
    assert nodes[int(control_nodes(0)[2])]["widgets_values"] == ["c.pth"]
    assert nodes[int(HIRES_SAMPLER_NODE)]["pos"][0] > nodes[int(SAMPLER_NODE)]["pos"][0]


def test_the_equivalent_graph_of_a_guided_render_names_its_pictures_and_models() -> None:
    spec = make_spec(
        engine="a1111",
        model="dreamshaper_8",
        scheduler="euler",
        controls=[CANNY, DEPTH],
        hires=HiresFix(scale=2.0, strength=0.4, upscaler="R-ESRGAN"),
    )
    result = RenderResult(images=[], device="http://a1111")
    graph = equivalent_graph(spec, "a1111", result, RenderedImage(Image.new("RGB", (8, 8)), 9), None)
    canny_load, canny, canny_loader, _ = control_nodes(0)
    depth_load, depth_canny, depth_loader, _ = control_nodes(1)
    assert graph[canny_load]["inputs"]["image"] == "edges.png" and graph[canny]["class_type"] == "Canny"
    assert depth_canny not in graph, "a depth control's picture is the map"
    assert graph[canny_loader]["inputs"]["control_net_name"] == "cn_canny.safetensors"
    assert graph[depth_loader]["inputs"]["control_net_name"] == "cn_depth.safetensors"
    assert graph["30"]["inputs"]["model_name"] == "R-ESRGAN.safetensors"
    assert graph[HIRES_SAMPLER_NODE]["inputs"]["seed"] == 9
    assert json.loads(json.dumps(ui_workflow(graph)))["nodes"]
