"""Schemathesis fuzzes the images-service's OpenAPI spec, directly and through the gateway, over
real sockets with a real Redis and store: whatever it sends, no answer is a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.images_service.app import create_app
from services.images_service.engines import ENGINES
from tests.support.asgi_server import serve_asgi
from tests.support.harness import make_settings
from tests.support.workers import idle_workers

FUZZ_DB = 7
"""A Redis database of its own: the fuzzer enqueues many jobs."""

EXAMPLES_PER_OPERATION = 25
"""Enough to reach every validator of every route; bounded so the suite stays fast on 2 cores."""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[tuple[str, str]]:
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{FUZZ_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    settings = make_settings(Path(tmp_path_factory.mktemp("fuzz")), redis_url)
    # Every server engine has a live (idle) worker: a job for one is accepted, not refused with
    # 503 ENGINE_OFFLINE (tests/integration/test_engine_availability.py covers that answer), so any
    # 5xx the fuzzer meets is a bug.
    with (
        idle_workers(settings, [name for name in ENGINES if not ENGINES[name].is_local]),
        serve_asgi(create_app(settings), lifespan="on") as service,
    ):
        gateway = create_gateway(GatewaySettings(IMAGES_BASE=service))
        with serve_asgi(gateway, lifespan="on") as gateway_url:
            yield service, gateway_url
    redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture(scope="module")
def service_schema(deployment: tuple[str, str]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{deployment[0]}/openapi.json")


@pytest.fixture(scope="module")
def gateway_schema(deployment: tuple[str, str]) -> schemathesis.BaseSchema:
    # The gateway serves the images-service's spec: it is the same API, one hop further.
    return schemathesis.openapi.from_url(f"{deployment[1]}/openapi.json")


FUZZ_SETTINGS = hypothesis_settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


def fuzz(schema: schemathesis.BaseSchema) -> int:
    """Run every operation of `schema` through Hypothesis; returns how many operations ran.
    (Schemathesis' own pytest plugin is not used: it does not support this pytest yet.)"""
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @FUZZ_SETTINGS
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        run()
        operations += 1
    return operations


def test_images_service_never_answers_a_server_error(service_schema: schemathesis.BaseSchema) -> None:
    assert fuzz(service_schema) >= 10


def test_gateway_never_answers_a_server_error(gateway_schema: schemathesis.BaseSchema) -> None:
    assert fuzz(gateway_schema) >= 10
