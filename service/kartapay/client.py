"""An async client of the KartaPay REST API: five endpoints over one pooled httpx transport.

Use it as an async context manager (or call :meth:`KartaPayClient.aclose`)::

    async with KartaPayClient.from_settings(settings) as kartapay:
        record = await kartapay.get(payment_id)

Every request carries ``Authorization: Bearer <token>`` and ``Accept-Language``. Error statuses,
undecodable bodies and network failures raise the tree in :mod:`service.kartapay.errors`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx
import orjson
from pydantic import SecretStr, ValidationError

from service.http_transport import AiohttpTransport, Answer, exchange
from service.kartapay.errors import (
    InvalidResponseError,
    RequestTimeoutError,
    TransportError,
    error_class_for,
    short_detail,
)
from service.kartapay.models import (
    Claim,
    GatewayCode,
    KartaPayModel,
    Page,
    Payment,
    PaymentEnvelope,
    PaymentRecord,
)
from service.retry_after import parse_retry_after

if TYPE_CHECKING:
    from service.settings import Settings

PAYMENTS_PATH = "/v1/payments"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=30
)
DEFAULT_PAGE_SIZE = 100
_USER_AGENT = "kartahook-kartapay-client/1"

M = TypeVar("M", bound=KartaPayModel)


def payment_path(payment_id: str, action: str = "") -> str:
    """The path of one payment, its id percent-encoded so it stays one path segment."""
    if not payment_id:
        raise ValueError("payment_id must not be empty")
    path = f"{PAYMENTS_PATH}/{quote(payment_id, safe='')}"
    return f"{path}/{action}" if action else path


def id_from_location(location: str | None) -> str | None:
    """The payment id at the end of a ``Location`` header (``…/v1/payments/<id>``)."""
    if not location:
        return None
    segment = urlsplit(location).path.rstrip("/").rpartition("/")[2]
    return unquote(segment) or None


class KartaPayClient:
    """Async client of the KartaPay REST API (``kartapay-api-spec.json``).

    ``timeout`` is seconds for each of connect, read, write and pool.
    ``transport`` replaces the network (tests use ``httpx.MockTransport``). The token is never
    shown by ``repr`` nor put in any error.
    """

    def __init__(
        self,
        base_url: str,
        token: str | SecretStr,
        *,
        language: str = "en-US",
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self.base_url = base_url.rstrip("/")
        self.language = language
        # Requests go straight to the transport: httpx.AsyncClient's request building and
        # cookie handling cost more CPU than the request itself, and this client needs neither.
        self._transport = transport or httpx.AsyncHTTPTransport(limits=limits)
        self._headers = {
            "Authorization": f"Bearer {secret}",
            "Accept-Language": language,
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        self._timeout_s = float(timeout)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> Self:
        """A client for ``KARTAHOOK_KARTAPAY_URL`` / ``_TOKEN`` / ``_LANGUAGE`` / ``_TIMEOUT_S``,
        moving its bytes on :class:`~service.http_transport.AiohttpTransport` unless told."""
        if transport is None:
            transport = AiohttpTransport(DEFAULT_LIMITS.max_connections or 100)
        return cls(
            settings.kartapay_url,
            settings.kartapay_token,
            language=settings.kartapay_language,
            timeout=settings.kartapay_timeout_s,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"KartaPayClient(base_url={self.base_url!r}, language={self.language!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    # -- endpoints ---------------------------------------------------------------------------

    async def create(self, claim: Claim | Mapping[str, Any]) -> PaymentRecord:
        """``POST /v1/payments``: create a payment (status ``init``).

        A mapping is sent as is, unchecked. The id comes from the ``Location`` header of the
        201, or else from ``data.id``; with neither, ``InvalidResponseError``.
        """
        body = claim.to_json() if isinstance(claim, Claim) else dict(claim)
        answer = await self._request("POST", PAYMENTS_PATH, json_body=body)
        envelope = self._decode(answer, "POST", PAYMENTS_PATH, PaymentEnvelope)
        payment_id = id_from_location(answer.headers.get("Location"))
        payment_id = payment_id or envelope.data.reported_id
        if payment_id is None:
            raise InvalidResponseError(
                "created payment has no Location header and no data.id",
                status_code=answer.status,
                method="POST",
                path=PAYMENTS_PATH,
            )
        return PaymentRecord(id=payment_id, payment=envelope.data, next=envelope.next)

    async def list(
        self,
        *,
        sort: Sequence[str] = (),
        desc: Sequence[str] = (),
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page:
        """``GET /v1/payments``: one page, sorted by the ``sort`` and ``desc`` attributes.

        Each name is sent as its own query parameter (``sort=a&sort=b``); the order is the API's.
        """
        params: dict[str, str | builtins.list[str]] = {}
        if sort:
            params["sort"] = builtins.list(sort)
        if desc:
            params["desc"] = builtins.list(desc)
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = str(offset)
        answer = await self._request("GET", PAYMENTS_PATH, params=httpx.QueryParams(params))
        return self._decode(answer, "GET", PAYMENTS_PATH, Page)

    async def iter_all(
        self,
        *,
        sort: Sequence[str] = (),
        desc: Sequence[str] = (),
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Payment]:
        """Every payment, page after page (by ``offset``/``limit``), in the requested order.

        It stops at an empty page or once ``offset`` reaches the reported ``total``. Payments
        created or removed while it walks may be seen twice or missed, as with any offset paging.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        offset = 0
        while True:
            page = await self.list(sort=sort, desc=desc, limit=page_size, offset=offset)
            for payment in page.data:
                yield payment
            offset += len(page.data)
            if not page.data or (page.total is not None and offset >= page.total):
                return

    async def get(self, payment_id: str) -> PaymentRecord:
        """``GET /v1/payments/{id}``: the payment's current state, with the id asked for."""
        path = payment_path(payment_id)
        answer = await self._request("GET", path)
        return PaymentRecord(id=payment_id, payment=self._decode(answer, "GET", path, Payment))

    async def cancel(self, payment_id: str) -> PaymentRecord:
        """``POST /v1/payments/{id}/cancel``: cancel a payment (400 once it is approved)."""
        path = payment_path(payment_id, "cancel")
        answer = await self._request("POST", path)
        envelope = self._decode(answer, "POST", path, PaymentEnvelope)
        return PaymentRecord(id=payment_id, payment=envelope.data, next=envelope.next)

    async def submit(self, payment_id: str, source: GatewayCode) -> PaymentRecord:
        """``POST /v1/payments/{id}/submit`` with the plan ``{"source": source}``."""
        path = payment_path(payment_id, "submit")
        answer = await self._request("POST", path, json_body={"source": source})
        envelope = self._decode(answer, "POST", path, PaymentEnvelope)
        return PaymentRecord(id=payment_id, payment=envelope.data, next=envelope.next)

    # -- plumbing ----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: httpx.QueryParams | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> Answer:
        """Send one request; return a 2xx answer, read whole, or raise the matching
        ``KartaPayError``."""
        content = None
        headers = self._headers
        if json_body is not None:
            content = orjson.dumps(json_body)
            headers = {**headers, "Content-Type": "application/json"}
        url = httpx.URL(self.base_url + path, params=params)
        answer = Answer()
        try:
            await exchange(
                self._transport,
                answer,
                method,
                url,
                headers,
                content,
                phase_timeout_s=self._timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise RequestTimeoutError(
                f"{method} {path}: timed out ({type(exc).__name__})", method=method, path=path
            ) from exc
        except httpx.TransportError as exc:
            raise TransportError(
                f"{method} {path}: {type(exc).__name__}: {exc}", method=method, path=path
            ) from exc
        if 200 <= answer.status < 300:
            return answer
        raise error_class_for(answer.status)(
            answer.status,
            method=method,
            path=path,
            detail=_error_detail(answer.body),
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        )

    @staticmethod
    def _decode(answer: Answer, method: str, path: str, model: type[M]) -> M:
        """The body of a 2xx answer as ``model``, or ``InvalidResponseError``."""
        try:
            data = orjson.loads(answer.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidResponseError(
                "body is not JSON", status_code=answer.status, method=method, path=path
            ) from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            # Only the locations of the errors: the values may be payer data.
            where = ", ".join(".".join(map(str, err["loc"])) or "body" for err in exc.errors())
            raise InvalidResponseError(
                f"body is not a {model.__name__} (bad: {short_detail(where)})",
                status_code=answer.status,
                method=method,
                path=path,
            ) from exc


def _error_detail(body: bytes) -> str | None:
    """A short reason from an error body: its JSON ``message``/``error``/``detail``, or text."""
    text = body.decode("utf-8", "replace")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return short_detail(text)
    if isinstance(data, Mapping):
        for key in ("message", "error", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return short_detail(value)
            if isinstance(value, builtins.list) and all(isinstance(v, str) for v in value):
                return short_detail("; ".join(value))  # NestJS validation: a list of messages
    return short_detail(text)
