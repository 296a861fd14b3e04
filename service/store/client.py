"""The one place that turns ``KARTAHOOK_REDIS_URL`` into Redis clients: the service, the workers
and the CLI all go through :func:`redis_client` (a ``redis.asyncio.Redis``) or :func:`arq_redis`
(an ``arq.connections.ArqRedis`` for the worker), both built from the same parse.

Accepted URLs:

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) and
  ``unix://[[user]:password@]/path/to/socket[?db=N]``, as redis-py reads them;
- a Sentinel-managed primary (the form the Kubernetes manifests use)::

      redis+sentinel://[[user]:password@]host1:26379,host2:26379,[::1]:26379/mymaster[/db]
                       [?sentinel_password=…]

  ``password`` is the primary's (and replicas') password. The Sentinels' own password is
  ``sentinel_password``; without it the Sentinels get ``password`` too (one password for both,
  as the Helm chart sets them up); ``?sentinel_password=`` (empty) means the Sentinels have none.
  Passwords are URL-encoded.

A Sentinel client asks the Sentinels for the primary when it opens a connection, so after a
failover the next connection goes to the new primary (redis-py's ``SentinelConnectionPool``).
Sentinel gives one primary, so the Lua scripts and multi-key operations keep working.

Every connection packs its commands with hiredis (:class:`HiredisPacking`): redis-py's asyncio
connections pack them in Python, which cost the worker ~6 % of its CPU (docs/decisions/
http-exchange.md, "Also").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import default_queue_name
from arq.constants import expires_extra_ms as default_expires_extra_ms
from arq.jobs import Deserializer, Serializer
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import DataError
from redis.typing import EncodableT

SENTINEL_SCHEME = "redis+sentinel://"
PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_QUERY_KEYS = frozenset({"sentinel_password"})
# Options that also apply to the connections to the Sentinels themselves.
SENTINEL_SOCKET_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
)

_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\[\]:]+)):(?P<port>\d+)$")

_USERINFO_PASSWORD = re.compile(r"^([a-z+]+://[^:/@?#]*:)[^@/?#]*@")
_SENTINEL_PASSWORD_QUERY = re.compile(r"([?&]sentinel_password=)[^&#]*")

_CLIENT_REPR = re.compile(r"<redis\.asyncio\.client\.Redis\(.*?host=([^,]+),port=(\d+)[^>]*>\)>\)>")

ClientT = TypeVar("ClientT", bound=aioredis.Redis)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A primary found through Sentinel: where the Sentinels are, the master set's name, and the
    credentials for the primary (``username``, ``password``) and for the Sentinels
    (``sentinel_password``)."""

    sentinels: list[tuple[str, int]]
    master: str
    password: str | None
    db: int
    username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # no secrets in logs or tracebacks
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"SentinelTarget(sentinels={hosts}, master={self.master}, db={self.db})"


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; ``ValueError`` naming what is wrong when it is
    malformed (the message never repeats a password)."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError("not a redis+sentinel:// URL")
    rest = url[len(SENTINEL_SCHEME) :]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError("a redis+sentinel URL takes no #fragment")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        if has_password:
            password = unquote(secret) or None
    if not netloc:
        raise ValueError("no Sentinel address: redis+sentinel://host1:26379,host2:26379/mymaster")
    sentinels: list[tuple[str, int]] = []
    for item in netloc.split(","):
        match = _HOST_PORT.match(item.strip())
        if match is None:
            raise ValueError(
                f"Sentinel address {item.strip()!r} is not host:port (IPv6 as [::1]:26379)"
            )
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"Sentinel port {port} is out of range")
        sentinels.append((match["ipv6"] or match["host"], port))
    master, _, db_text = path.partition("/")
    if not master:
        raise ValueError("the master set name is missing: …/mymaster[/db] after the addresses")
    if "/" in db_text:
        raise ValueError("the path is /mastername[/db]; found more segments")
    if db_text and not db_text.isdigit():
        raise ValueError(f"the database must be a number, not {db_text!r}")
    sentinel_password = password
    try:
        options = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("the query is not name=value&…: ?sentinel_password=…") from None
    for key, value in options:
        if key not in SENTINEL_QUERY_KEYS:
            raise ValueError(
                f"unknown redis+sentinel URL option {key!r} (known: "
                f"{', '.join(sorted(SENTINEL_QUERY_KEYS))})"
            )
        sentinel_password = value or None
    return SentinelTarget(
        sentinels,
        unquote(master),
        password,
        int(db_text or 0),
        username=username,
        sentinel_password=sentinel_password,
    )


def check_url(url: str) -> None:
    """``ValueError`` unless ``url`` is a Redis URL this module accepts."""
    if url.startswith(SENTINEL_SCHEME):
        parse_sentinel_url(url)
        return
    if not url.startswith(PLAIN_SCHEMES):
        scheme = urlsplit(url).scheme or "(none)"
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, unix:// or "
            "redis+sentinel://"
        )


def redacted_url(url: str) -> str:
    """``url`` with its passwords (userinfo and ``sentinel_password``) shown as ``***``, for
    logs and status output; a URL without passwords comes back unchanged."""
    url = _USERINFO_PASSWORD.sub(r"\1***@", url, count=1)
    return _SENTINEL_PASSWORD_QUERY.sub(r"\1***", url)


def error_line(exc: BaseException) -> str:
    """A Redis error as one line: its type and message, each Sentinel that redis-py names by
    its client's repr reduced to ``host:port`` (redis-py's messages carry no password)."""
    text = _CLIENT_REPR.sub(r"\1:\2", " ".join(str(exc).split()) or "no detail")
    return f"{type(exc).__name__}: {text}"


class _OwnedSentinelPool(SentinelConnectionPool):
    """The primary's connection pool; closing the client also closes its connections to the
    Sentinels (redis-py leaves them open). A master switch (``inuse_connections=False``) keeps
    them."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


class HiredisPacking(AbstractConnection):
    """Packs commands with ``hiredis.pack_command`` (C) instead of redis-py's Python loop:
    the same bytes for every argument redis-py accepts (str as UTF-8, bytes, memoryview, int,
    float as ``repr``), about five times faster on a script call. Mixed into whichever
    connection class redis-py chose for the URL (TCP, TLS, unix socket, Sentinel-managed)."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        encoder = self.encoder
        if encoder.encoding != "utf-8" or encoder.encoding_errors != "strict":
            return super().pack_command(*args)
        head = args[0]
        if isinstance(head, str):
            args = (*head.encode().split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            # hiredis's stub types the tuple as of one item; it takes any number.
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]
        except TypeError as exc:  # bool, None, or another type redis-py refuses too
            raise DataError(f"Invalid input of type {_type_names(args)}: {exc}") from None


def _type_names(args: tuple[Any, ...]) -> str:
    """The names of the argument types redis-py would refuse too."""
    packable = (str, bytes, memoryview, int, float)
    refused = {type(a).__name__ for a in args if isinstance(a, bool) or not isinstance(a, packable)}
    return ", ".join(sorted(refused)) or "unknown"


_PACKING_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _with_hiredis_packing(client: ClientT) -> ClientT:
    """``client`` with :class:`HiredisPacking` mixed into its pool's connection class."""
    pool = client.connection_pool
    base = pool.connection_class
    if not issubclass(base, HiredisPacking):
        packing = _PACKING_CLASSES.get(base)
        if packing is None:
            packing = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
            _PACKING_CLASSES[base] = packing
        pool.connection_class = packing
    return client


def _build(url: str, redis_class: type[ClientT], options: dict[str, Any]) -> ClientT:
    check_url(url)
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel_url(url)
        sentinel_kwargs: dict[str, Any] = {
            key: options[key] for key in SENTINEL_SOCKET_OPTIONS if key in options
        }
        if target.sentinel_password:
            sentinel_kwargs["password"] = target.sentinel_password
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        client: ClientT = sentinel.master_for(
            target.master,
            redis_class=redis_class,
            connection_pool_class=_OwnedSentinelPool,
            username=target.username,
            password=target.password,
            db=target.db,
            **options,
        )
        return _with_hiredis_packing(client)
    plain: ClientT = redis_class.from_url(url, **options)
    return _with_hiredis_packing(plain)


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (plain or Sentinel). ``options`` (``socket_timeout``,
    ``socket_connect_timeout``, ``max_connections``, …) go to the primary's connections; the
    socket ones to the Sentinels' too. Nothing connects until the first command."""
    return _build(url, aioredis.Redis, options)


def arq_redis(
    url: str,
    *,
    job_serializer: Serializer | None = None,
    job_deserializer: Deserializer | None = None,
    default_queue_name: str = default_queue_name,
    expires_extra_ms: int = default_expires_extra_ms,
    **options: Any,
) -> ArqRedis:
    """arq's client for ``url`` (plain or Sentinel), for ``Worker(redis_pool=...)`` or for
    enqueueing: the same parse and options as :func:`redis_client`, so Sentinel credentials
    reach the Sentinels (arq's own ``create_pool`` does not pass them)."""
    pool = _build(url, ArqRedis, options)
    pool.job_serializer = job_serializer
    pool.job_deserializer = job_deserializer
    pool.default_queue_name = default_queue_name
    pool.expires_extra_ms = expires_extra_ms
    return pool


def redis_listeners(url: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Where ``url`` reaches Redis: the (host, port)s of the server (none for a Sentinel URL, or
    a unix socket) and of the Sentinels, for the subscriber URL guard."""
    if url.startswith(SENTINEL_SCHEME):
        return [], list(parse_sentinel_url(url).sentinels)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return [], []
    try:
        port = parts.port or 6379
    except ValueError:
        return [], []
    return [(parts.hostname, port)], []


async def sentinel_primary(client: aioredis.Redis) -> tuple[str, int] | None:
    """The primary's address as the Sentinels name it now, for a Sentinel client; None for a
    plain client or when no Sentinel answers."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    try:
        host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
    except Exception:  # no Sentinel answered: the configured addresses are still refused
        return None
    return str(host), int(port)
