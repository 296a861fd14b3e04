"""Redis connections from ``KARTAHOOK_REDIS_URL``, for both sides.

Besides the usual ``redis://`` and ``rediss://`` URLs, a Sentinel-managed primary is written

    redis+sentinel://[:password@]host1:26379,host2:26379/mymaster[/db]

(the form the Kubernetes manifests use). Sentinel gives one primary, so the Lua scripts and
multi-key operations keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from arq.connections import RedisSettings
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A primary found through Sentinel."""

    sentinels: list[tuple[str, int]]
    master: str
    password: str | None
    db: int


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; ``ValueError`` when it is malformed."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError("not a redis+sentinel:// URL")
    rest = url[len(SENTINEL_SCHEME) :]
    hosts_part, _, path = rest.partition("/")
    password: str | None = None
    if "@" in hosts_part:
        userinfo, _, hosts_part = hosts_part.rpartition("@")
        password = unquote(userinfo.partition(":")[2]) or None
    sentinels: list[tuple[str, int]] = []
    for item in hosts_part.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    master, _, db = path.partition("/")
    if not master:
        raise ValueError("the master set name is missing: …/mymaster/0")
    if db and not db.isdigit():
        raise ValueError("the database must be a number")
    return SentinelTarget(sentinels, master, password, int(db or 0))


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (plain or Sentinel); ``options`` go to the connections."""
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel_url(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            target.sentinels,
            sentinel_kwargs={"password": target.password} if target.password else {},
            **options,
        )
        client: aioredis.Redis = sentinel.master_for(
            target.master, password=target.password, db=target.db
        )
        return client
    plain: aioredis.Redis = aioredis.from_url(url, **options)  # type: ignore[no-untyped-call]
    return plain


def arq_redis_settings(url: str) -> RedisSettings:
    """arq's ``RedisSettings`` for ``url`` (plain or Sentinel)."""
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel_url(url)
        return RedisSettings(
            host=target.sentinels,
            sentinel=True,
            sentinel_master=target.master,
            password=target.password,
            database=target.db,
        )
    return RedisSettings.from_dsn(url)
