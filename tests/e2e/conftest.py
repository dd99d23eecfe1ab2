"""Fixtures of the end-to-end tests: deployments of real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.deployment import Deployment


@pytest.fixture
def deploy(tmp_path: Path, redis_url: str, tiny_models: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(**env: str) -> Deployment:
        deployment = Deployment(tmp_path, redis_url, tiny_models, **env)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()
