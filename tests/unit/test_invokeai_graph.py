"""The InvokeAI batch, without a server: the graphs `build_graph` makes for text-to-image,
image-to-image, inpainting, ControlNets and the hires fix on SD1.x and SDXL models, scheduler names,
the seeds of a batch, the choice of models, and what is read back from finished or failed queue items."""

from __future__ import annotations

from typing import Any

import pytest

from services.contracts import MAX_SEED, ControlInput, HiresFix, RenderSpec
from services.images_service.engines.invokeai import (
    ControlImage,
    InvokeModel,
    build_graph,
    choose_controlnets,
    choose_model,
    invoke_scheduler,
    make_batch,
    parse_version,
    seed_data,
)
from services.images_service.engines.invokeai.client import failure_text, item_failure
from services.images_service.engines.invokeai.graph import (
    image_seeds,
    item_seed,
    output_image_name,
    output_node,
    slug,
)
from services.images_service.errors import ModelNotFound, ValidationFailed

SD15 = InvokeModel(key="k-sd15", hash="blake3:aa", name="Stable Diffusion v1.5", base="sd-1", type="main")
SDXL = InvokeModel(key="k-sdxl", hash="blake3:bb", name="Juggernaut XL v9", base="sdxl", type="main")
FLUX = InvokeModel(key="k-flux", hash="blake3:cc", name="FLUX Schnell", base="flux", type="main")
URL = "http://127.0.0.1:9091"


def make_spec(**overrides: Any) -> RenderSpec:
    values: dict[str, Any] = {
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "model": None,
        "width": 96,
        "height": 64,
        "steps": 12,
        "cfg": 6.5,
        "seed": 1234,
        "engine": "invokeai",
    }
    values.update(overrides)
    return RenderSpec(**values)


def edges_of(graph: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {
        (e["source"]["node_id"], e["source"]["field"], e["destination"]["node_id"], e["destination"]["field"])
        for e in graph["edges"]
    }


def test_txt2img_on_sd15_is_invokeais_linear_graph() -> None:
    graph = build_graph(make_spec(), SD15, "dpmpp_2m_k")
    nodes = graph["nodes"]
    assert graph["id"].startswith("kitty-") and len(graph["id"]) == len("kitty-") + 12
    assert {node_id: node["type"] for node_id, node in nodes.items()} == {
        "model_loader": "main_model_loader",
        "positive_prompt": "compel",
        "negative_prompt": "compel",
        "noise": "noise",
        "denoise": "denoise_latents",
        "core_metadata": "core_metadata",
        "l2i": "l2i",
    }
    assert nodes["model_loader"]["model"] == {
        "key": "k-sd15",
        "hash": "blake3:aa",
        "name": "Stable Diffusion v1.5",
        "base": "sd-1",
        "type": "main",
    }
    assert (nodes["positive_prompt"]["prompt"], nodes["negative_prompt"]["prompt"]) == (
        "a red fox in snow",
        "blurry",
    )
    assert nodes["noise"] == {
        "id": "noise",
        "type": "noise",
        "is_intermediate": True,
        "use_cache": True,
        "seed": 1234,
        "width": 96,
        "height": 64,
        "use_cpu": True,
    }
    denoise = nodes["denoise"]
    assert (denoise["steps"], denoise["cfg_scale"], denoise["scheduler"]) == (12, 6.5, "dpmpp_2m_k")
    assert (denoise["denoising_start"], denoise["denoising_end"]) == (0.0, 1.0)
    assert nodes["core_metadata"]["generation_mode"] == "txt2img"
    assert "strength" not in nodes["core_metadata"]
    # Only the output is kept and never served from the invocation cache.
    assert (nodes["l2i"]["is_intermediate"], nodes["l2i"]["use_cache"]) == (False, False)
    assert edges_of(graph) == {
        ("model_loader", "clip", "positive_prompt", "clip"),
        ("model_loader", "clip", "negative_prompt", "clip"),
        ("model_loader", "unet", "denoise", "unet"),
        ("positive_prompt", "conditioning", "denoise", "positive_conditioning"),
        ("negative_prompt", "conditioning", "denoise", "negative_conditioning"),
        ("noise", "noise", "denoise", "noise"),
        ("denoise", "latents", "l2i", "latents"),
        ("model_loader", "vae", "l2i", "vae"),
        ("core_metadata", "metadata", "l2i", "metadata"),
    }


def test_sdxl_conditions_on_the_size_and_feeds_the_second_text_encoder() -> None:
    graph = build_graph(make_spec(), SDXL, "euler")
    nodes = graph["nodes"]
    assert nodes["model_loader"]["type"] == "sdxl_model_loader"
    positive = nodes["positive_prompt"]
    assert positive["type"] == "sdxl_compel_prompt"
    assert (positive["prompt"], positive["style"]) == ("a red fox in snow", "a red fox in snow")
    assert (positive["original_width"], positive["original_height"]) == (96, 64)
    assert (positive["target_width"], positive["target_height"], positive["crop_top"]) == (96, 64, 0)
    assert ("model_loader", "clip2", "negative_prompt", "clip2") in edges_of(graph)
    assert nodes["core_metadata"]["generation_mode"] == "sdxl_txt2img"


def test_img2img_starts_the_denoise_from_the_pictures_latents() -> None:
    graph = build_graph(make_spec(image="uploads/in.png", strength=0.4), SD15, "euler", image="abc.png")
    nodes = graph["nodes"]
    assert nodes["i2l"]["image"] == {"image_name": "abc.png"}
    assert nodes["denoise"]["denoising_start"] == pytest.approx(0.6)
    metadata = nodes["core_metadata"]
    assert (metadata["generation_mode"], metadata["strength"], metadata["init_image"]) == (
        "img2img",
        0.4,
        "abc.png",
    )
    assert {("model_loader", "vae", "i2l", "vae"), ("i2l", "latents", "denoise", "latents")} <= edges_of(
        graph
    )
    assert "paste_back" not in nodes and nodes["l2i"]["is_intermediate"] is False


def test_img2img_without_a_strength_uses_the_services_default() -> None:
    graph = build_graph(make_spec(image="uploads/in.png"), SDXL, "euler", image="abc.png")
    assert graph["nodes"]["denoise"]["denoising_start"] == pytest.approx(0.25)
    assert graph["nodes"]["core_metadata"]["generation_mode"] == "sdxl_img2img"


def test_inpainting_masks_the_denoise_and_pastes_onto_the_original() -> None:
    spec = make_spec(image="uploads/in.png", mask="uploads/m.png", strength=1.0)
    graph = build_graph(spec, SD15, "euler", image="abc.png", mask="inverted.png")
    nodes = graph["nodes"]
    assert nodes["denoise_mask"]["type"] == "create_denoise_mask"
    assert nodes["denoise_mask"]["image"] == {"image_name": "abc.png"}
    assert nodes["denoise_mask"]["mask"] == {"image_name": "inverted.png"}
    paste = nodes["paste_back"]
    assert (paste["type"], paste["crop"], paste["is_intermediate"], paste["use_cache"]) == (
        "img_paste",
        True,
        False,
        False,
    )
    assert paste["base_image"] == {"image_name": "abc.png"} and paste["mask"] == {
        "image_name": "inverted.png"
    }
    # The decoder is an intermediate now: the paste-back is the output and carries the metadata.
    assert nodes["l2i"]["is_intermediate"] is True
    assert nodes["denoise"]["denoising_start"] == 0.0
    assert nodes["core_metadata"]["generation_mode"] == "inpaint"
    assert {
        ("denoise_mask", "denoise_mask", "denoise", "denoise_mask"),
        ("l2i", "image", "paste_back", "image"),
        ("core_metadata", "metadata", "paste_back", "metadata"),
    } <= edges_of(graph)
    assert ("core_metadata", "metadata", "l2i", "metadata") not in edges_of(graph)


@pytest.mark.parametrize(
    ("wire", "invoke"),
    [
        (None, "euler"),
        ("euler_a", "euler_a"),
        ("dpmpp_2m_karras", "dpmpp_2m_k"),
        ("pndm", "pndm"),
        ("unipc", "unipc"),
    ],
)
def test_schedulers_map_to_invokeais_names(wire: str | None, invoke: str) -> None:
    assert invoke_scheduler(wire) == invoke


def test_a_scheduler_invokeai_lacks_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationFailed, match="scheduler 'lcm' has no InvokeAI equivalent") as caught:
        invoke_scheduler("lcm")
    assert "dpmpp_2m_karras" in caught.value.remediation[0]


def test_each_image_of_a_batch_gets_the_next_seed_wrapping_like_invokeai() -> None:
    assert image_seeds(make_spec(seed=10, num_images=3)) == [10, 11, 12]
    assert image_seeds(make_spec(seed=MAX_SEED - 1, num_images=3)) == [MAX_SEED - 1, MAX_SEED, 0]
    assert seed_data(make_spec(seed=10, num_images=2)) == [
        [
            {"node_path": "noise", "field_name": "seed", "items": [10, 11]},
            {"node_path": "core_metadata", "field_name": "seed", "items": [10, 11]},
        ]
    ]


def test_the_batch_is_one_run_of_the_seed_list() -> None:
    spec = make_spec(num_images=4)
    graph = build_graph(spec, SD15, "euler")
    batch = make_batch(spec, graph)
    assert (batch["runs"], batch["origin"]) == (1, "kitty-images")
    assert batch["data"][0][0]["items"] == [1234, 1235, 1236, 1237]
    assert batch["graph"] is graph and graph["nodes"]["noise"]["seed"] == 1234


def test_the_model_is_chosen_by_name_key_or_slug_among_renderable_bases() -> None:
    models = [FLUX, SD15, SDXL]
    assert choose_model(models, None, URL) == SD15
    assert choose_model(models, "k-sdxl", URL) == SDXL
    assert choose_model(models, "juggernaut-xl-v9", URL) == SDXL
    assert slug("Juggernaut XL v9") == "juggernaut-xl-v9"
    with pytest.raises(ModelNotFound, match="model 'FLUX Schnell' is a flux model"):
        choose_model(models, "FLUX Schnell", URL)
    with pytest.raises(
        ModelNotFound, match=r"has no main model named 'nope' \(it has: FLUX Schnell \(flux\)"
    ):
        choose_model(models, "nope", URL)
    with pytest.raises(ModelNotFound, match="InvokeAI at http://127.0.0.1:9091 has no SD1.x, SD2.x or SDXL"):
        choose_model([FLUX], None, URL)


def test_a_finished_item_gives_its_seed_and_output_image() -> None:
    item = {
        "field_values": [{"node_path": "noise", "field_name": "seed", "value": 1236}],
        "session": {
            "results": {"exec-7": {"image": {"image_name": "out.png"}}},
            "source_prepared_mapping": {"paste_back": ["exec-7"]},
        },
    }
    assert item_seed(item, fallback=1) == 1236
    assert item_seed({}, fallback=1) == 1
    assert output_image_name(item, "paste_back") == "out.png"
    assert output_image_name(item, "l2i") is None


def test_a_failed_item_says_its_error_never_its_traceback() -> None:
    assert failure_text(
        {"error_type": "OutOfMemoryError", "error_message": "CUDA", "error_traceback": "..."}
    ) == ("OutOfMemoryError: CUDA")
    assert failure_text({"error_traceback": "Traceback\n  File x\nValueError: bad\n"}) == "ValueError: bad"
    gone = item_failure(
        5, {"error_type": "ImageFileNotFoundException", "error_message": "Image file not found"}
    )
    assert gone.message.startswith("InvokeAI no longer has the input uploaded for this job (queue item 5")
    failed = item_failure(6, {"error_type": "RuntimeError", "error_message": "boom"})
    assert failed.message == "InvokeAI failed queue item 6: RuntimeError: boom"


def test_versions_read_their_numeric_release() -> None:
    assert parse_version("5.6.0rc1") == (5, 6, 0)
    assert parse_version("v4.2") == (4, 2)
    with pytest.raises(ValueError, match="not a version"):
        parse_version("latest")


# --- guidance: ControlNets and the hires fix -------------------------------------------------------
CANNY_SD15 = InvokeModel(key="k-canny", hash="blake3:dd", name="canny", base="sd-1", type="controlnet")
DEPTH_SD15 = InvokeModel(key="k-depth", hash="blake3:ee", name="Depth SD1.5", base="sd-1", type="controlnet")
DEPTH_SDXL = InvokeModel(
    key="k-depth-xl", hash="blake3:ff", name="depth-sdxl", base="sdxl", type="controlnet"
)
CANNY = ControlInput(image="uploads/a.png", type="canny", model="canny", weight=0.7, start=0.1, end=0.8)
DEPTH = ControlInput(image="uploads/b.png", type="depth", model="k-depth", weight=1.2)


def test_one_control_is_a_controlnet_node_feeding_the_denoise() -> None:
    spec = make_spec(controls=[CANNY])
    graph = build_graph(spec, SD15, "euler", controls=[ControlImage("map.png", CANNY_SD15)])
    control = graph["nodes"]["control_0"]
    assert {key: value for key, value in control.items() if key not in ("is_intermediate", "use_cache")} == {
        "id": "control_0",
        "type": "controlnet",
        "image": {"image_name": "map.png"},
        "control_model": CANNY_SD15.identifier,
        "control_weight": 0.7,
        "begin_step_percent": 0.1,
        "end_step_percent": 0.8,
        "control_mode": "balanced",
        "resize_mode": "just_resize",
    }
    assert ("control_0", "control", "denoise", "control") in edges_of(graph)
    assert "control_collect" not in graph["nodes"]
    (recorded,) = graph["nodes"]["core_metadata"]["controlnets"]
    assert recorded["image"] == {"image_name": "map.png"} and recorded["control_weight"] == 0.7


def test_several_controls_are_collected_for_the_denoise_in_order() -> None:
    spec = make_spec(controls=[CANNY, DEPTH])
    files = [ControlImage("a.png", CANNY_SD15), ControlImage("b.png", DEPTH_SD15)]
    graph = build_graph(spec, SD15, "euler", controls=files)
    nodes = graph["nodes"]
    assert nodes["control_collect"]["type"] == "collect"
    items = [e for e in graph["edges"] if e["destination"]["node_id"] == "control_collect"]
    assert [(e["source"]["node_id"], e["destination"]["field"]) for e in items] == [
        ("control_0", "item"),
        ("control_1", "item"),
    ]
    assert ("control_collect", "collection", "denoise", "control") in edges_of(graph)
    assert (nodes["control_1"]["control_weight"], nodes["control_1"]["control_model"]["key"]) == (
        1.2,
        "k-depth",
    )
    with pytest.raises(ValueError, match="2 controls"):
        build_graph(spec, SD15, "euler", controls=files[:1])


def test_hires_fix_is_a_second_pass_over_the_resized_first() -> None:
    spec = make_spec(width=96, height=64, steps=12, hires=HiresFix(scale=1.5, strength=0.4, steps=6))
    graph = build_graph(spec, SD15, "euler", controls=[])
    nodes = graph["nodes"]
    assert spec.output_size == (144, 96)
    assert (
        nodes["hires_resize"]["type"],
        nodes["hires_resize"]["width"],
        nodes["hires_resize"]["height"],
    ) == (
        "img_resize",
        144,
        96,
    )
    assert nodes["hires_resize"]["resample_mode"] == "lanczos"
    assert (nodes["hires_noise"]["width"], nodes["hires_noise"]["height"]) == (144, 96)
    second = nodes["hires_denoise"]
    assert (second["steps"], second["denoising_start"], second["scheduler"]) == (
        6,
        pytest.approx(0.6),
        "euler",
    )
    assert (nodes["l2i"]["is_intermediate"], nodes["hires_l2i"]["is_intermediate"]) == (True, False)
    assert output_node(spec, None) == "hires_l2i"
    assert {
        ("l2i", "image", "hires_resize", "image"),
        ("hires_resize", "image", "hires_i2l", "image"),
        ("hires_i2l", "latents", "hires_denoise", "latents"),
        ("hires_noise", "noise", "hires_denoise", "noise"),
        ("positive_prompt", "conditioning", "hires_denoise", "positive_conditioning"),
        ("hires_denoise", "latents", "hires_l2i", "latents"),
        ("core_metadata", "metadata", "hires_l2i", "metadata"),
    } <= edges_of(graph)
    assert nodes["core_metadata"]["hrf_enabled"] is True and nodes["core_metadata"]["hrf_strength"] == 0.4
    assert seed_data(spec)[0][1] == {"node_path": "hires_noise", "field_name": "seed", "items": [1234]}


def test_the_hires_pass_is_steered_by_the_controls_too() -> None:
    spec = make_spec(controls=[CANNY], hires=HiresFix())
    graph = build_graph(spec, SD15, "euler", controls=[ControlImage("a.png", CANNY_SD15)])
    assert {
        ("control_0", "control", "denoise", "control"),
        ("control_0", "control", "hires_denoise", "control"),
    } <= (edges_of(graph))
    assert graph["nodes"]["hires_denoise"]["steps"] == 12, "absent: the request's steps"


def test_controlnets_are_chosen_by_key_or_name_and_must_match_the_models_base() -> None:
    models = [CANNY_SD15, DEPTH_SD15, DEPTH_SDXL]
    assert choose_controlnets(models, ["canny", "k-depth", "depth-sd1.5"], SD15, URL) == [
        CANNY_SD15,
        DEPTH_SD15,
        DEPTH_SD15,
    ]
    with pytest.raises(ModelNotFound, match="no ControlNet model 'lineart'"):
        choose_controlnets(models, ["lineart"], SD15, URL)
    with pytest.raises(ValidationFailed, match="is for sdxl models"):
        choose_controlnets(models, ["depth-sdxl"], SD15, URL)
    with pytest.raises(ValidationFailed, match="must name"):
        choose_controlnets(models, [None], SD15, URL)
