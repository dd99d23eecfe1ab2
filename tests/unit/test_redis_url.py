"""REDIS_URL as the services read it: redis-py's URLs unchanged, `redis+sentinel://` parsed into the
sentinels, the service and the database, and every malformed URL refused with the format named."""

from __future__ import annotations

import pytest
from redis import Redis
from redis.sentinel import SentinelConnectionPool

from services.common.redisconn import (
    SENTINEL_URL_FORMAT,
    RedisURLError,
    SentinelMaster,
    SentinelURL,
    connect,
    parse_sentinel_url,
)
from services.images_service.doctor.redis import check_redis
from services.images_service.queue import REDIS_SOCKET_TIMEOUT_S, connect_redis
from services.images_service.redaction import redact_url
from services.images_service.settings import Settings


def test_a_full_sentinel_url_names_sentinels_service_db_and_both_passwords() -> None:
    url = (
        "redis+sentinel://kitty:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/images/3?sentinel_password=pw"
    )
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=(("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381)),
        service_name="images",
        db=3,
        username="kitty",
        password="s@cret",
        sentinel_password="pw",
    )


def test_the_conventional_password_only_form_and_the_default_db() -> None:
    parsed = parse_sentinel_url("REDIS+SENTINEL://:hunter2@127.0.0.1:26379/mymaster")
    assert (parsed.username, parsed.password, parsed.db) == (None, "hunter2", 0)
    assert parsed.service_name == "mymaster"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "no service name"),
        ("redis+sentinel://127.0.0.1:26379/", "no service name"),
        ("redis+sentinel:///mymaster/0", "no sentinel host"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/zero", "'zero' is not a number"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/0/extra", "too many path segments"),
        ("redis+sentinel://127.0.0.1:port/mymaster", "no valid port"),
        ("redis+sentinel://127.0.0.1:99999/mymaster", "no valid port"),
        ("redis+sentinel://a:1,,b:2/mymaster", "has no host"),
        ("redis+sentinel://127.0.0.1/mymaster?socket_timeout=1", "unknown query parameter(s) socket_timeout"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_naming_the_problem_and_the_format(
    url: str, problem: str
) -> None:
    with pytest.raises(RedisURLError) as caught:
        connect(url)
    assert problem in str(caught.value)
    assert SENTINEL_URL_FORMAT in str(caught.value)


def test_a_refusal_never_repeats_the_password() -> None:
    with pytest.raises(RedisURLError) as caught:
        connect("redis+sentinel://:hunter2@127.0.0.1:26379/mymaster/x")
    assert "hunter2" not in str(caught.value)


def test_an_unknown_scheme_is_refused_naming_every_accepted_one() -> None:
    with pytest.raises(ValueError) as caught:  # RedisURLError is a ValueError, as redis-py's own
        connect("http://127.0.0.1:6379/0")
    message = str(caught.value)
    assert all(scheme in message for scheme in ("redis://", "rediss://", "unix://", "redis+sentinel://"))


def test_plain_urls_are_redis_pys_own_clients() -> None:
    client = connect("redis://:pw@127.0.0.1:6390/2", socket_timeout=1.5)
    assert type(client) is Redis
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("127.0.0.1", 6390, 2, "pw")
    assert kwargs["socket_timeout"] == 1.5


def test_a_sentinel_url_makes_a_master_client_with_the_callers_options_on_both_sides() -> None:
    client = connect_redis(
        "redis+sentinel://:pw@127.0.0.1:26390,127.0.0.1:26391/images/4?sentinel_password=sp"
    )
    assert isinstance(client, SentinelMaster)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master and pool.service_name == "images"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (4, "pw", REDIS_SOCKET_TIMEOUT_S)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26390, 26391]
    sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
    assert (sentinel_kwargs["password"], sentinel_kwargs["socket_timeout"]) == ("sp", REDIS_SOCKET_TIMEOUT_S)
    client.close()


def test_logs_show_a_sentinel_url_without_its_passwords() -> None:
    shown = redact_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/images/0?sentinel_password=sp")
    assert shown == (
        "redis+sentinel://:[redacted]@10.0.0.1:26379,10.0.0.2:26379/images/0?sentinel_password=%5Bredacted%5D"
    )


def test_the_doctor_fails_a_malformed_sentinel_url_with_the_format() -> None:
    settings = Settings(_env_file=None, redis_url="redis+sentinel://127.0.0.1:26379")  # type: ignore[call-arg]
    result = check_redis(settings)
    assert result.status == "fail"
    assert "no service name" in result.message and SENTINEL_URL_FORMAT in result.message
    assert any("redis+sentinel://" in remedy for remedy in result.remedies)
