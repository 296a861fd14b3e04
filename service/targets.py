"""Where a subscriber URL may never point: kartahook's own listeners (DESIGN "Delivery").

A subscriber URL is refused, whatever the allowlist says, when it reaches kartahook's Redis (the
host:port of ``KARTAHOOK_REDIS_URL``, every Sentinel and, when known, the Sentinel primary), the
admin listener (``KARTAHOOK_ADMIN_HOST``/``KARTAHOOK_ADMIN_PORT``) or the worker's metrics port
(``KARTAHOOK_WORKER_METRICS_HOST``/``…_PORT``).

The check is on addresses, not names: a listener's host is resolved once
(:func:`resolve_listeners`), a URL's host at send time, in the connect path
(``service.http_transport``), so the address checked is the one connected to. A target
address on this machine (loopback, ``0.0.0.0``/``::``, IPv4-mapped forms, or an address a socket
here can bind) matches every listener on this machine with the same port: ``127.0.0.2:6379``
reaches a Redis bound to ``0.0.0.0:6379``, and nothing legitimate listens on kartahook's ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from service.errors import KartahookError, SubscriberError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that always mean this machine (RFC 6761 ``localhost`` and its subdomains).
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
DEFAULT_PORTS = {"http": 80, "https": 443}


class ForbiddenAddress(KartahookError, OSError):
    """A delivery's host resolved, at connect time, to one of kartahook's own listeners: no
    connection is made. An ``OSError`` so that HTTP clients report it as a connect error (the
    delivery runner finds it in the error's causes and pauses the subscriber)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def forbidden_cause(exc: BaseException) -> ForbiddenAddress | None:
    """The :class:`ForbiddenAddress` behind ``exc`` (its causes, contexts and ``os_error``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ForbiddenAddress):
            return current
        todo += [current.__cause__, current.__context__]
        inner = getattr(current, "os_error", None)  # aiohttp's ClientConnectorError
        if isinstance(inner, BaseException):
            todo.append(inner)
    return None


def parse_address(host: str) -> Address | None:
    """``host`` as an IP address (brackets and an IPv6 zone stripped), or None for a name."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def unwrap(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped (``::ffff:a.b.c.d``) or 6to4 IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
    return address


@functools.lru_cache(maxsize=1024)
def _bindable(address: Address) -> bool:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def is_local(address: Address) -> bool:
    """Whether ``address`` reaches this machine: loopback, unspecified, or one of its own."""
    address = unwrap(address)
    return address.is_loopback or address.is_unspecified or _bindable(address)


def is_local_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host in LOCAL_NAMES or host.endswith(".localhost")


@dataclass(frozen=True)
class Listener:
    """One of kartahook's own listeners: ``host`` None means every address of this machine."""

    what: str
    host: str | None
    port: int
    addresses: frozenset[Address] = field(default_factory=frozenset)
    """``host`` resolved (:func:`resolve_listeners`); a literal address needs no resolving."""

    @property
    def local(self) -> bool:
        if self.host is None or is_local_name(self.host):
            return True
        literal = parse_address(self.host)
        known = {literal} if literal is not None else set(self.addresses)
        return any(is_local(address) for address in known)

    def matches(self, address: Address, port: int) -> bool:
        if port != self.port:
            return False
        address = unwrap(address)
        literal = parse_address(self.host) if self.host else None
        if address in {unwrap(a) for a in self.addresses} or address == literal:
            return True
        return is_local(address) and self.local

    def describe(self) -> str:
        return f"{self.what} ({self.host or '*'}:{self.port})"


@dataclass(frozen=True)
class ForbiddenTargets:
    """kartahook's own listeners; :meth:`refusal` says whether an address:port is one of them."""

    listeners: tuple[Listener, ...] = ()

    def with_listener(self, what: str, host: str | None, port: int) -> ForbiddenTargets:
        return ForbiddenTargets((*self.listeners, Listener(what, host, port)))

    def refusal(self, address: Address, port: int) -> str | None:
        """Why ``address:port`` may not be a subscriber's target, or None."""
        for listener in self.listeners:
            if listener.matches(address, port):
                return f"{address}:{port} is kartahook's {listener.describe()}"
        return None

    def refusal_for_host(self, host: str, port: int) -> str | None:
        """:meth:`refusal` for a URL host without resolving it: an IP literal, a name of this
        machine (``localhost``), or a listener's own host name as written."""
        address = parse_address(host)
        if address is not None:
            return self.refusal(address, port)
        name = host.lower().rstrip(".")
        for listener in self.listeners:
            if listener.port != port:
                continue
            same_name = listener.host is not None and listener.host.lower().rstrip(".") == name
            if same_name or (is_local_name(name) and listener.local):
                return f"{host}:{port} is kartahook's {listener.describe()}"
        return None


def url_target(url: str) -> tuple[str, int]:
    """The host and port a subscriber URL connects to (the scheme's default port if none)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SubscriberError("invalid_url", f"invalid URL: {exc}") from exc
    host = parts.hostname or ""
    return host, port or DEFAULT_PORTS.get(parts.scheme, 80)


def check_target(url: str, forbidden: ForbiddenTargets) -> None:
    """Raise :class:`SubscriberError` ``forbidden_target`` when ``url`` names one of
    kartahook's own listeners (no DNS: see :func:`check_target_resolved`)."""
    host, port = url_target(url)
    reason = forbidden.refusal_for_host(host, port)
    if reason is not None:
        raise SubscriberError("forbidden_target", f"the URL points at kartahook itself: {reason}")


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses ``host`` resolves to (an empty list when it does not resolve)."""
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found: list[Address] = []
    for info in infos:
        address = parse_address(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    return found


async def check_target_resolved(url: str, forbidden: ForbiddenTargets) -> None:
    """:func:`check_target`, then the URL's host resolved now and every address checked (a
    host that does not resolve yet passes: the connect path checks it at send time)."""
    check_target(url, forbidden)
    host, port = url_target(url)
    for address in await resolve(host, port):
        reason = forbidden.refusal(address, port)
        if reason is not None:
            raise SubscriberError(
                "forbidden_target", f"the URL points at kartahook itself: {host} -> {reason}"
            )


async def resolve_listeners(forbidden: ForbiddenTargets) -> ForbiddenTargets:
    """``forbidden`` with every listener's host resolved (one that fails keeps no addresses)."""
    resolved: list[Listener] = []
    for listener in forbidden.listeners:
        addresses: list[Address] = []
        if listener.host is not None:
            with contextlib.suppress(Exception):
                addresses = await resolve(listener.host, listener.port)
        resolved.append(Listener(listener.what, listener.host, listener.port, frozenset(addresses)))
    return ForbiddenTargets(tuple(resolved))


def listeners_of(
    redis: Iterable[tuple[str, int]],
    sentinels: Iterable[tuple[str, int]],
    admin: tuple[str | None, int] | None,
    metrics: tuple[str | None, int] | None,
) -> ForbiddenTargets:
    """The forbidden targets from kartahook's listeners as configured."""
    listeners = [Listener("Redis", host, port) for host, port in redis]
    listeners += [Listener("Redis Sentinel", host, port) for host, port in sentinels]
    if admin is not None:
        listeners.append(Listener("admin listener", admin[0], admin[1]))
    if metrics is not None:
        listeners.append(Listener("worker metrics port", metrics[0], metrics[1]))
    return ForbiddenTargets(tuple(listeners))
