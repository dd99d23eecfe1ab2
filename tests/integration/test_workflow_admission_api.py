"""Raw ComfyUI workflows as a client meets their admission (issue 15): through POST
/api/images/generate with a free key, each hostile graph of the corpus gets 400 VALIDATION_ERROR
saying why, and neither a job nor quota is spent; our own template at the free tier's limits is
accepted; without keys the same hostile graphs are still refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from services.common.api_keys import key_id_of
from tests.support.harness import Harness
from tests.support.hostile_workflows import FREE_LIMITS, HOSTILE, Hostile, img2img, txt2img
from tests.support.workers import idle_worker

FREE_KEY = "free-wf-5d1c9e3a7b2f4a60"


@pytest.fixture
def secured(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(api_keys=f"{FREE_KEY}:free")


def generate(
    harness: Harness, workflow: dict[str, Any], *, key: str | None = FREE_KEY, **body: Any
) -> httpx.Response:
    """The body as JSON that may hold NaN or Infinity, as Python's json (and many clients) write it:
    httpx's own encoder refuses them."""
    headers = {"content-type": "application/json", **({"X-API-Key": key} if key else {})}
    payload = {"prompt": "a red fox", "engine": "comfyui", "workflow": workflow, **body}
    return harness.client.post("/api/images/generate", content=json.dumps(payload), headers=headers)


def queued(harness: Harness) -> int:
    redis = Redis.from_url(harness.settings.redis_url)
    try:
        return sum(
            Queue(
                harness.settings.queue_name("comfyui", priority=p),
                connection=redis,
                serializer=JSONSerializer,
            ).count
            for p in (False, True)
        )
    finally:
        redis.close()


def assert_refused(response: httpx.Response, case: Hostile) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert case.says in error["message"], error["message"]
    key, value = case.detail
    assert error["detail"][key] == value
    assert error["remediation"]


@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
def test_each_hostile_graph_is_400_with_its_reason_for_a_free_key(secured: Harness, case: Hostile) -> None:
    with idle_worker(secured.settings, "comfyui"):  # a live worker: nothing but admission can refuse
        response = generate(secured, case.graph, **FREE_LIMITS)
    assert_refused(response, case)
    assert queued(secured) == 0
    assert secured.client.app.state.quotas.used(key_id_of(FREE_KEY)) == 0


@pytest.mark.parametrize(
    "workflow", [txt2img(), img2img(), img2img(mask=True)], ids=["txt2img", "img2img", "inpaint"]
)
def test_our_template_at_the_free_tiers_limits_is_accepted(
    secured: Harness, workflow: dict[str, Any]
) -> None:
    with idle_worker(secured.settings, "comfyui"):  # else: 503 ENGINE_OFFLINE (no worker, no server)
        response = generate(secured, workflow, **FREE_LIMITS)
    assert response.status_code == 202, response.text
    assert queued(secured) == 1


def test_without_keys_what_no_ceiling_excuses_is_still_refused(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    with idle_worker(harness.settings, "comfyui"):
        for case in HOSTILE:
            response = generate(harness, case.graph, key=None)
            if case.detail[0] == "reason":  # a bad node, whoever asks
                assert_refused(response, case)
            elif response.status_code != 202:
                assert response.json()["error"]["detail"]["tier"] == "open", response.text
        accepted = queued(harness)
        largest = {"width": 2048, "height": 2048, "steps": 150, "num_images": 4}
        assert generate(harness, txt2img(**largest), key=None, **largest).status_code == 202
    assert queued(harness) == accepted + 1
