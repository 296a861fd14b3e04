"""Redis URLs, plain and Sentinel, as both sides read them (``service.store.client``)."""

from __future__ import annotations

import pytest
from arq.connections import ArqRedis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.exceptions import DataError

from service.store.client import (
    HiredisPacking,
    arq_redis,
    check_url,
    error_line,
    parse_sentinel_url,
    redacted_url,
    redis_client,
)
from service.store.jobs import deserialize, serialize


def test_sentinel_url_is_parsed_into_hosts_master_password_and_db() -> None:
    """The manifests' redis+sentinel URL yields every sentinel, the master, password and db."""
    target = parse_sentinel_url("redis+sentinel://:p%40ss@h1:26379,h2:26380/mymaster/2")
    assert target.sentinels == [("h1", 26379), ("h2", 26380)]
    assert (target.master, target.password, target.db) == ("mymaster", "p@ss", 2)
    # Was asserted on arq's RedisSettings, which the workers no longer use (the same facts).
    plain = parse_sentinel_url("redis+sentinel://h1:26379/primary")
    assert plain.master == "primary"
    assert plain.sentinels == [("h1", 26379)] and plain.db == 0


def test_sentinel_password_defaults_to_the_primary_password() -> None:
    """Without sentinel_password the Sentinels get the primary's password; with it, their own."""
    same = parse_sentinel_url("redis+sentinel://:pw@h1:26379/m")
    assert (same.password, same.sentinel_password, same.username) == ("pw", "pw", None)
    own = parse_sentinel_url("redis+sentinel://app:pw@h1:26379/m/3?sentinel_password=s%26p%3D")
    assert (own.username, own.password, own.sentinel_password, own.db) == ("app", "pw", "s&p=", 3)
    none = parse_sentinel_url("redis+sentinel://:pw@h1:26379/m?sentinel_password=")
    assert (none.password, none.sentinel_password) == ("pw", None)
    anonymous = parse_sentinel_url("redis+sentinel://h1:26379/m")
    assert (anonymous.password, anonymous.sentinel_password) == (None, None)


def test_ipv6_sentinel_addresses_are_bracketed() -> None:
    """[::1]:26379 and a full IPv6 address parse; hostnames and IPv4 may be mixed in."""
    target = parse_sentinel_url(
        "redis+sentinel://:pw@[::1]:26379,[2001:db8::7]:26380,10.0.0.5:26381,sentinel-2:1/m"
    )
    assert target.sentinels == [
        ("::1", 26379),
        ("2001:db8::7", 26380),
        ("10.0.0.5", 26381),
        ("sentinel-2", 1),
    ]


def test_the_parsed_target_does_not_show_passwords() -> None:
    """The repr of a parsed URL (what a log or traceback would show) has no password in it."""
    target = parse_sentinel_url("redis+sentinel://:data-secret@h1:26379/m?sentinel_password=s3")
    assert "data-secret" not in repr(target) and "s3" not in repr(target)
    assert "h1:26379" in repr(target)


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://h1/mymaster", "redis+sentinel://h1:26379", "redis+sentinel://h:1/m/x"],
)
def test_malformed_sentinel_urls_are_refused(url: str) -> None:
    """A sentinel without a port, a missing master or a non-numeric db is a clear error."""
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://:pw@/m", "no Sentinel address"),
        ("redis+sentinel://::1:26379/m", "'::1:26379' is not host:port"),
        ("redis+sentinel://h1:26379,/m", "'' is not host:port"),
        ("redis+sentinel://h1:99999/m", "port 99999 is out of range"),
        ("redis+sentinel://h1:26379/m/0/1", "more segments"),
        ("redis+sentinel://h1:26379/m?db=2", "unknown redis+sentinel URL option 'db'"),
        ("redis+sentinel://h1:26379/m?oops", "not name=value"),
        ("redis+sentinel://h1:26379/m#frag", "no #fragment"),
        ("http://h1:6379/0", "unsupported Redis URL scheme 'http'"),
        ("h1:6379", "unsupported Redis URL scheme"),
    ],
)
def test_bad_urls_name_what_is_wrong(url: str, message: str) -> None:
    """Each malformed URL is a ValueError whose message names the problem."""
    with pytest.raises(ValueError) as caught:
        check_url(url)
    assert message in str(caught.value)


def test_error_messages_never_repeat_the_password() -> None:
    """A malformed URL's error does not echo the password it carried."""
    for url in (
        "redis+sentinel://:hunter2@h1/m",
        "redis+sentinel://:hunter2@h1:1/m?hunter2",
        "redis+sentinel://:hunter2@h1:1/m?x=hunter2",
    ):
        with pytest.raises(ValueError) as caught:
            check_url(url)
        assert "hunter2" not in str(caught.value)


async def test_sentinel_clients_carry_both_passwords_and_the_options() -> None:
    """The primary's pool gets password, db and options; the Sentinels their own password and
    the socket options, for the plain client and arq's alike (no connection is opened)."""
    url = "redis+sentinel://:pw@h1:26379,[::1]:26380/mymaster/4?sentinel_password=spw"
    for client in (
        redis_client(url, socket_timeout=0.5, socket_connect_timeout=0.25, max_connections=7),
        arq_redis(url, socket_timeout=0.5, socket_connect_timeout=0.25, max_connections=7),
    ):
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "mymaster" and pool.max_connections == 7
        kwargs = pool.connection_kwargs
        assert (kwargs["password"], kwargs["db"], kwargs["socket_timeout"]) == ("pw", 4, 0.5)
        sentinels = pool.sentinel_manager.sentinels
        sentinel_kwargs = [s.connection_pool.connection_kwargs for s in sentinels]
        addresses = [(kw["host"], kw["port"]) for kw in sentinel_kwargs]
        assert addresses == [("h1", 26379), ("::1", 26380)]
        for kw in sentinel_kwargs:
            assert kw["password"] == "spw" and kw["socket_connect_timeout"] == 0.25
        await client.aclose()


async def test_plain_url_reaches_the_tests_redis(redis_url: str) -> None:
    """A plain redis:// URL gives a working client and arq client for the same server."""
    client = redis_client(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    # Was: arq's RedisSettings for the URL named the same port.
    pool = arq_redis(redis_url, job_serializer=serialize, job_deserializer=deserialize)
    try:
        assert isinstance(pool, ArqRedis) and await pool.ping()
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        assert pool.connection_pool.connection_kwargs["port"] == port
        assert pool.job_serializer is serialize and pool.job_deserializer is deserialize
    finally:
        await pool.aclose()


def test_redacted_url_hides_every_password() -> None:
    """Passwords in the userinfo and sentinel_password are masked; the rest stays readable."""
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redacted_url("rediss://app:p%40w@h:6380/1") == "rediss://app:***@h:6380/1"
    assert (
        redacted_url("redis+sentinel://:pw@h1:1,[::1]:2/m/0?sentinel_password=spw")
        == "redis+sentinel://:***@h1:1,[::1]:2/m/0?sentinel_password=***"
    )


def test_error_line_names_each_sentinel_by_address() -> None:
    """redis-py's MasterNotFoundError becomes one line with host:port for each Sentinel."""
    message = (
        "No master found for 'mymaster' : <redis.asyncio.client.Redis(<redis.asyncio.connection."
        "ConnectionPool(<redis.asyncio.connection.Connection(host=127.0.0.1,port=43061,db=0)>)>)>"
        " - AuthenticationError('invalid username-password pair or user is disabled.'),\n"
        "<redis.asyncio.client.Redis(<redis.asyncio.connection.ConnectionPool(<redis.asyncio."
        "connection.Connection(host=::1,port=26380,db=0)>)>)> - TimeoutError('Timeout')"
    )
    assert error_line(MasterNotFoundError(message)) == (
        "MasterNotFoundError: No master found for 'mymaster' : 127.0.0.1:43061 - "
        "AuthenticationError('invalid username-password pair or user is disabled.'), "
        "::1:26380 - TimeoutError('Timeout')"
    )


# Arguments of every type redis-py packs: a command name with a space, keys, bytes with every
# byte value, large values (redis-py chunks them), numbers, UTF-8 text and a memoryview.
PACKED_ARGS: list[tuple[object, ...]] = [
    ("EVALSHA", "a" * 40, 2, "key:x", b"key:y", -1, 0, 12345678901234567890, 1.5, 0.1, 1e20),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "kartahook"),
    ("HSET", "key:é", "champ", "déjà vu \u2603", bytes(range(256)) * 40, memoryview(b"xyz")),
]


@pytest.mark.parametrize("args", PACKED_ARGS)
def test_hiredis_packing_sends_the_bytes_redis_py_sends(args: tuple[object, ...]) -> None:
    """Commands packed by hiredis are byte for byte what redis-py's own packer writes."""
    ours = type("Packed", (HiredisPacking, Connection), {})()
    theirs = Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))  # type: ignore[arg-type]
    assert b"".join(ours.pack_commands([args, args])) == b"".join(  # type: ignore[list-item]
        theirs.pack_commands([args, args])  # type: ignore[list-item]
    )


@pytest.mark.parametrize("value", [None, True, 1j, object()])
def test_hiredis_packing_refuses_what_redis_py_refuses(value: object) -> None:
    """A value redis-py cannot send (None, a bool, another type) raises DataError, not TypeError."""
    ours = type("Packed", (HiredisPacking, Connection), {})()
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", value)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://h:1/0", Connection),
        ("rediss://h:1/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
        ("redis+sentinel://h:26379/m", SentinelManagedConnection),
    ],
)
def test_every_client_packs_with_hiredis_over_the_connection_the_url_asks_for(
    url: str, base: type
) -> None:
    """Plain, TLS, unix-socket and Sentinel clients (plain and arq) pack with hiredis, each on
    the connection class redis-py picks for the URL (TLS stays TLS)."""
    for client in (redis_client(url), arq_redis(url)):
        connection_class = client.connection_pool.connection_class
        assert issubclass(connection_class, HiredisPacking)
        assert issubclass(connection_class, base)
