"""The AUTOMATIC1111 request and answer, without a server: the body `render_request` builds for
txt2img, img2img and inpainting, ControlNet units and the hires fix, sampler names, seeds and batch
sizes, and what `client` reads from the server's bodies (errors, progress, the render's answer)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from services.contracts import ControlInput, HiresFix, RenderSpec
from services.images_service.engines.a1111 import (
    IMG2IMG,
    TXT2IMG,
    a1111_message,
    parse_api_auth,
    render_request,
)
from services.images_service.engines.a1111.client import (
    A1111_CHUNK,
    Task,
    TaskStatus,
    checkpoint_title,
    controlnet_name,
    global_progress_status,
    parse_info,
    read_answer,
    task_progress_status,
)
from services.images_service.engines.a1111.payload import (
    INPAINTING_FILL_ORIGINAL,
    RESIZE_JUST_RESIZE,
    ControlUnit,
)
from services.images_service.engines.server_base import JobInputs
from services.images_service.errors import EngineError, ValidationFailed

TASK_ID = "task(0123456789abcdef)"


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
        "engine": "a1111",
    }
    values.update(overrides)
    return RenderSpec(**values)


def decoded(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))


def picture() -> Image.Image:
    return Image.new("RGB", (96, 64), (200, 30, 10))


def mask() -> Image.Image:
    white_left = Image.new("L", (96, 64), 0)
    white_left.paste(255, (0, 0, 48, 64))
    return white_left


def test_txt2img_sends_every_setting_of_the_spec() -> None:
    route, payload = render_request(make_spec(num_images=3), TASK_ID, None, JobInputs())
    assert route == TXT2IMG == "/sdapi/v1/txt2img"
    assert payload == {
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "seed": 1234,
        "steps": 12,
        "cfg_scale": 6.5,
        "width": 96,
        "height": 64,
        "batch_size": 3,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        "force_task_id": TASK_ID,
    }


@pytest.mark.parametrize("num_images", [1, 4])
def test_a_batch_is_one_iteration_of_num_images_from_one_seed(num_images: int) -> None:
    """The server seeds image i with seed + i itself: the payload carries the first seed only."""
    _, payload = render_request(make_spec(seed=7, num_images=num_images), TASK_ID, None, JobInputs())
    assert (payload["seed"], payload["batch_size"], payload["n_iter"]) == (7, num_images, 1)


@pytest.mark.parametrize(
    ("scheduler", "fields"),
    [
        ("euler_a", {"sampler_name": "Euler a"}),
        ("pndm", {"sampler_name": "PLMS"}),
        ("dpmpp_2m", {"sampler_name": "DPM++ 2M"}),
        ("dpmpp_2m_karras", {"sampler_name": "DPM++ 2M", "scheduler": "Karras"}),
        # A name outside the table goes as is: the server answers "Sampler not found".
        ("DPM++ 3M SDE", {"sampler_name": "DPM++ 3M SDE"}),
    ],
)
def test_schedulers_become_a1111_sampler_and_schedule_type(scheduler: str, fields: dict[str, str]) -> None:
    _, payload = render_request(make_spec(scheduler=scheduler), TASK_ID, None, JobInputs())
    sent = {key: payload[key] for key in ("sampler_name", "scheduler") if key in payload}
    assert sent == fields


def test_without_a_scheduler_the_server_picks_its_own_sampler() -> None:
    _, payload = render_request(make_spec(), TASK_ID, None, JobInputs())
    assert "sampler_name" not in payload and "scheduler" not in payload


def test_a_checkpoint_is_an_override_the_server_restores_afterwards() -> None:
    _, payload = render_request(
        make_spec(model="v1-5"), TASK_ID, "v1-5-pruned.safetensors [6ce0161689]", JobInputs()
    )
    assert payload["override_settings"] == {"sd_model_checkpoint": "v1-5-pruned.safetensors [6ce0161689]"}
    assert payload["override_settings_restore_afterwards"] is True


def test_img2img_sends_the_picture_as_base64_png_at_the_jobs_size() -> None:
    spec = make_spec(image="uploads/in.png", strength=0.4)
    route, payload = render_request(spec, TASK_ID, None, JobInputs(image=picture()))
    assert route == IMG2IMG == "/sdapi/v1/img2img"
    (sent,) = payload["init_images"]
    image = decoded(sent)
    assert (image.format, image.size, image.getpixel((5, 5))) == ("PNG", (96, 64), (200, 30, 10))
    assert payload["denoising_strength"] == 0.4
    assert payload["resize_mode"] == RESIZE_JUST_RESIZE == 0
    assert payload["include_init_images"] is False
    assert "mask" not in payload and "inpainting_fill" not in payload
    assert (payload["prompt"], payload["seed"], payload["width"]) == ("a red fox in snow", 1234, 96)


def test_inpainting_repaints_white_from_the_original_pixels() -> None:
    spec = make_spec(image="uploads/in.png", mask="uploads/mask.png", strength=0.9)
    route, payload = render_request(spec, TASK_ID, None, JobInputs(image=picture(), mask=mask()))
    assert route == IMG2IMG
    sent = decoded(payload["mask"])
    assert (sent.mode, sent.getpixel((0, 0)), sent.getpixel((95, 0))) == ("L", 255, 0)
    assert payload["inpainting_fill"] == INPAINTING_FILL_ORIGINAL == 1
    assert payload["inpaint_full_res"] is False
    assert payload["inpainting_mask_invert"] == 0
    assert payload["denoising_strength"] == 0.9


def test_an_image_spec_without_its_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="needs its picture"):
        render_request(make_spec(image="uploads/in.png"), TASK_ID, None, JobInputs())
    with pytest.raises(ValueError, match="needs its picture"):
        render_request(
            make_spec(image="uploads/in.png", mask="uploads/m.png"), TASK_ID, None, JobInputs(image=picture())
        )


def test_api_auth_is_the_first_user_password_pair() -> None:
    assert parse_api_auth(None) is None
    assert parse_api_auth("ann:s3cret,bob:other") == ("ann", "s3cret")
    assert parse_api_auth("ann:") == ("ann", "")
    for bad in ("ann", ":pw"):
        with pytest.raises(ValueError, match="user:password"):
            parse_api_auth(bad)


def answer(status: int, body: Any) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1:7860/sdapi/v1/txt2img")
    if isinstance(body, str | bytes):
        return httpx.Response(status, content=body, request=request)
    return httpx.Response(status, json=body, request=request)


def test_error_bodies_become_the_servers_own_words() -> None:
    oom = {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory"}
    assert a1111_message(answer(500, oom)) == "OutOfMemoryError: CUDA out of memory"
    assert a1111_message(answer(404, {"error": "HTTPException", "detail": "Not Found"})) == "Not Found"
    validation = {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer"}]}
    assert a1111_message(answer(422, validation)) == "steps: value is not a valid integer"
    assert a1111_message(answer(502, "Bad Gateway")) == "Bad Gateway"


def test_task_progress_reads_our_tasks_state() -> None:
    assert task_progress_status({"active": True, "progress": 0.5}, 12) == TaskStatus("active", 6)
    assert task_progress_status({"active": True, "progress": None}, 12) == TaskStatus("active", None)
    assert task_progress_status({"completed": True}, 12) == TaskStatus("finished")
    assert task_progress_status({"queued": True}, 12) == TaskStatus("waiting")
    assert task_progress_status([], 12) == TaskStatus("unknown")


def test_global_progress_names_the_running_task_only_when_the_server_fills_it_in() -> None:
    task = Task(TASK_ID, steps=20)
    ours = {"current_task": TASK_ID, "state": {"sampling_step": 5, "sampling_steps": 10}}
    assert global_progress_status(ours, task) == TaskStatus("active", 10)
    assert global_progress_status({"current_task": "task(other)"}, task) == TaskStatus("waiting")
    assert global_progress_status({"current_task": None, "state": {"job_count": 0}}, task) == TaskStatus(
        "waiting"
    )
    assert global_progress_status({"current_task": None, "state": {"job_count": 1}}, task) == TaskStatus(
        "unknown"
    )


def test_a_checkpoint_is_found_by_any_of_its_names() -> None:
    models = [
        {
            "title": "v1-5-pruned.safetensors [6ce0161689]",
            "model_name": "v1-5-pruned",
            "hash": "6ce0161689",
            "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
            "filename": "C:\\webui\\models\\Stable-diffusion\\v1-5-pruned.safetensors",
        }
    ]
    title = "v1-5-pruned.safetensors [6ce0161689]"
    for name in ("v1-5-pruned", "v1-5-pruned.safetensors", "6ce0161689", title):
        assert checkpoint_title(models, name) == title
    assert checkpoint_title(models, "sdxl") is None
    assert checkpoint_title({"not": "a list"}, "v1-5-pruned") is None


def png_b64(color: tuple[int, int, int], infotext: str | None = None) -> str:
    info = PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_the_answer_gives_each_image_its_reported_seed_and_infotext() -> None:
    info = {"all_seeds": [1234, 1235, 1236], "index_of_first_image": 1, "version": "v1.10.1"}
    body = {
        "images": [png_b64((0, 0, 0)), png_b64((255, 0, 0), "fox\nSeed: 1234"), png_b64((0, 255, 0))],
        "info": json.dumps(info),
    }
    result = read_answer(answer(200, body), make_spec(num_images=2), Task(TASK_ID, 12))
    assert [image.image.getpixel((0, 0)) for image in result.images] == [(255, 0, 0), (0, 255, 0)]
    # `all_seeds` counts from the first real image; the grid is skipped.
    assert [image.seed for image in result.images] == [1234, 1235]
    assert result.images[0].text_chunks == {A1111_CHUNK: "fox\nSeed: 1234"}
    assert result.images[1].text_chunks == {}
    assert result.info["version"] == "v1.10.1"


def test_an_answer_without_seeds_counts_from_the_specs_seed() -> None:
    body = {"images": [png_b64((1, 2, 3)), png_b64((4, 5, 6))], "info": ""}
    result = read_answer(answer(200, body), make_spec(seed=50, num_images=2), Task(TASK_ID, 12))
    assert [image.seed for image in result.images] == [50, 51]


def test_an_answer_without_images_or_with_a_broken_one_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match=r"finished task task\(0123456789abcdef\) without images"):
        read_answer(answer(200, {"images": [], "info": "{}"}), make_spec(), Task(TASK_ID, 12))
    with pytest.raises(EngineError, match="could not be decoded"):
        read_answer(answer(200, {"images": ["bm90IGEgcG5n"]}), make_spec(), Task(TASK_ID, 12))
    with pytest.raises(EngineError, match="other than JSON"):
        read_answer(answer(200, "<html>"), make_spec(), Task(TASK_ID, 12))


def test_info_is_json_inside_json() -> None:
    assert parse_info('{"seed": 3}') == {"seed": 3}
    assert parse_info({"seed": 3}) == {"seed": 3}
    assert parse_info("not json") == {"raw": "not json"}
    assert parse_info(None) == {}


# --- guidance: ControlNet units and the hires fix ------------------------------------------------------
def test_controls_become_controlnet_units_of_the_extension() -> None:
    canny = ControlInput(image="uploads/a.png", type="canny", model="canny", weight=0.7, start=0.1, end=0.9)
    depth = ControlInput(image="uploads/b.png", type="depth", model="depth", weight=1.5)
    edges, depth_map = Image.new("RGB", (96, 64), (255, 255, 255)), Image.new("RGB", (96, 64), (80, 80, 80))
    units = [
        ControlUnit(canny, edges, "control_v11p_sd15_canny [d14c016b]"),
        ControlUnit(depth, depth_map, "control_v11f1p_sd15_depth [cfd03158]"),
    ]
    route, body = render_request(make_spec(controls=[canny, depth]), TASK_ID, None, JobInputs(), units)

    assert route == TXT2IMG
    first, second = body["alwayson_scripts"]["controlnet"]["args"]
    assert {key: value for key, value in first.items() if key != "image"} == {
        "enabled": True,
        "module": "none",
        "model": "control_v11p_sd15_canny [d14c016b]",
        "weight": 0.7,
        "guidance_start": 0.1,
        "guidance_end": 0.9,
        "resize_mode": "Just Resize",
        "control_mode": "Balanced",
        "pixel_perfect": False,
        "processor_res": -1,
        "threshold_a": -1,
        "threshold_b": -1,
        "hr_option": "Both",
    }
    assert decoded(first["image"]).tobytes() == edges.tobytes(), "the map, base64 PNG, as made here"
    assert (second["model"], second["weight"], second["guidance_start"], second["guidance_end"]) == (
        "control_v11f1p_sd15_depth [cfd03158]",
        1.5,
        0.0,
        1.0,
    )
    assert decoded(second["image"]).tobytes() == depth_map.tobytes()
    with pytest.raises(ValueError, match="2 controls"):
        render_request(make_spec(controls=[canny, depth]), TASK_ID, None, JobInputs(), units[:1])


def test_without_controls_no_script_is_named() -> None:
    _, body = render_request(make_spec(), TASK_ID, None, JobInputs())
    assert "alwayson_scripts" not in body and "enable_hr" not in body


def test_img2img_carries_the_controls_too() -> None:
    control = ControlInput(image="uploads/a.png", type="scribble", model="scribble")
    spec = make_spec(image="uploads/in.png", strength=0.5, controls=[control])
    unit = ControlUnit(control, picture(), "control_v11p_sd15_scribble [d4ba51ff]")
    route, body = render_request(spec, TASK_ID, None, JobInputs(picture()), [unit])
    assert route == IMG2IMG and body["alwayson_scripts"]["controlnet"]["args"][0]["module"] == "none"


def test_hires_fix_is_txt2img_enable_hr_with_its_scale_strength_steps_and_upscaler() -> None:
    _, body = render_request(
        make_spec(hires=HiresFix(scale=2.0, strength=0.45, steps=8, upscaler="R-ESRGAN_4x")),
        TASK_ID,
        None,
        JobInputs(),
    )
    hires = {"enable_hr", "denoising_strength"}
    assert {key: body[key] for key in body if key.startswith("hr_") or key in hires} == {
        "enable_hr": True,
        "hr_scale": 2.0,
        "hr_upscaler": "R-ESRGAN_4x",
        "denoising_strength": 0.45,
        "hr_second_pass_steps": 8,
    }
    assert (body["width"], body["height"]) == (96, 64), "the first pass's size"


def test_hires_fix_defaults_to_lanczos_and_the_first_passes_steps() -> None:
    _, body = render_request(make_spec(hires=HiresFix()), TASK_ID, None, JobInputs())
    assert (body["hr_upscaler"], body["hr_second_pass_steps"]) == ("Lanczos", 0)


def test_hires_fix_asks_for_our_output_size_where_a1111_would_round_otherwise() -> None:
    spec = make_spec(width=104, height=64, hires=HiresFix(scale=1.5))
    _, body = render_request(spec, TASK_ID, None, JobInputs())
    # A1111 would make int(104 * 1.5) = 156 wide; ours rounds down to a multiple of 8.
    assert spec.output_size == (152, 96)
    assert (body["hr_resize_x"], body["hr_resize_y"]) == (152, 96)


def test_hires_fix_on_img2img_is_refused() -> None:
    spec = make_spec(image="uploads/in.png", strength=0.5, hires=HiresFix())
    with pytest.raises(ValidationFailed, match="text-to-image only"):
        render_request(spec, TASK_ID, None, JobInputs(picture()))


def test_a_controlnet_is_found_by_its_listed_name_or_without_its_hash() -> None:
    names = ["control_v11p_sd15_canny [d14c016b]", "control_v11f1p_sd15_depth [cfd03158]"]
    assert controlnet_name(names, names[0]) == names[0]
    assert controlnet_name(names, "control_v11p_sd15_canny") == names[0]
    assert controlnet_name(names, "CONTROL_V11F1P_SD15_DEPTH") == names[1]
    assert controlnet_name(names, "canny") is None, "no guessing from a part of the name"
