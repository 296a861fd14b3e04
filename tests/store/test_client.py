"""Redis URLs, plain and Sentinel, as both sides read them."""

from __future__ import annotations

import pytest

from service.store.client import arq_redis_settings, parse_sentinel_url, redis_client


def test_sentinel_url_is_parsed_into_hosts_master_password_and_db() -> None:
    """The manifests' redis+sentinel URL yields every sentinel, the master, password and db."""
    target = parse_sentinel_url("redis+sentinel://:p%40ss@h1:26379,h2:26380/mymaster/2")
    assert target.sentinels == [("h1", 26379), ("h2", 26380)]
    assert (target.master, target.password, target.db) == ("mymaster", "p@ss", 2)
    settings = arq_redis_settings("redis+sentinel://h1:26379/primary")
    assert settings.sentinel and settings.sentinel_master == "primary"
    assert settings.host == [("h1", 26379)] and settings.database == 0


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://h1/mymaster", "redis+sentinel://h1:26379", "redis+sentinel://h:1/m/x"],
)
def test_malformed_sentinel_urls_are_refused(url: str) -> None:
    """A sentinel without a port, a missing master or a non-numeric db is a clear error."""
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


async def test_plain_url_reaches_the_tests_redis(redis_url: str) -> None:
    """A plain redis:// URL gives a working client and arq settings for the same server."""
    client = redis_client(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    assert arq_redis_settings(redis_url).port == int(redis_url.rsplit(":", 1)[1].split("/")[0])
