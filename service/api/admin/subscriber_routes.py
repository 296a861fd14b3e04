"""Admin routes of a subscriber's secret and endpoint (issue 13): ``POST
/subscribers/{id}/rotate`` (a new secret, the old one still signing during the overlap) and
``POST /subscribers/{id}/test`` (one signed ``webhook.test`` event, sent now from this process).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import httpx
import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from service.api.admin import models as m
from service.api.admin.openapi import ApiRoute, Spec, body_of, reply
from service.api.admin.routes import AdminResources
from service.clock import now_ms
from service.domain.signing import decode_secret, generate_secret
from service.domain.subscribers import SubscriberError, check_subscriber, signed_headers
from service.errors import BadRequest
from service.store.subscribers import forbidden_targets
from service.targets import check_target_resolved

log = structlog.get_logger("kartahook.admin")

TEST_EVENT_TYPE = "webhook.test"


async def rotate_secret(request: Request) -> Response:
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    body = await body_of(request, m.RotateIn)
    new_secret = body.secret or generate_secret()
    try:
        if not new_secret.startswith("whsec_"):
            raise ValueError
        decode_secret(new_secret)
    except ValueError:
        raise BadRequest("invalid_body", "secret: must be whsec_ followed by base64") from None
    now = now_ms()
    await res.subscribers.put(found.rotated(new_secret, body.overlap_s, now))
    log.info("subscriber_secret_rotated", subscriber=found.id, overlap_s=body.overlap_s)
    expires = now + body.overlap_s * 1000
    return reply(m.Rotated, {"secret": new_secret, "previous_expires_ms": expires})


async def test_subscriber(request: Request) -> Response:
    """One signed ``webhook.test`` event, sent now from this process, outside any line."""
    res = AdminResources(request)
    found = await res.subscriber(request.path_params["subscriber_id"])
    msg_id = "msg_test_" + secrets.token_hex(12)
    body = orjson.dumps(
        {
            "id": msg_id,
            "type": TEST_EVENT_TYPE,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": {"subscriber": found.id},
        }
    )
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    headers: dict[str, str] = {}
    try:
        forbidden = await forbidden_targets(res.settings, res.redis)
        check_subscriber(found, res.settings.subscriber_allowlist, forbidden)
        await check_target_resolved(found.url, forbidden)
        headers = signed_headers(found, msg_id, body, now_ms())
        timeout = res.settings.delivery_timeout_s
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=timeout, trust_env=False
        ) as http:
            answer = await http.post(found.url, content=body, headers=headers)
        status = answer.status_code
    except SubscriberError as exc:
        error = f"{exc.code}: {exc.message}"
    except httpx.TimeoutException:
        error = "timeout"
    except (httpx.HTTPError, OSError, ValueError) as exc:
        error = _masked(exc, {**found.headers, **headers})
    duration = int((time.perf_counter() - started) * 1000)
    delivered = status is not None and 200 <= status < 300
    log.info(
        "subscriber_test_sent",
        subscriber=found.id,
        status=status,
        error=error,
        duration_ms=duration,
    )
    return reply(
        m.SubscriberTestResult,
        {"delivered": delivered, "status": status, "error": error, "duration_ms": duration},
    )


def _masked(exc: BaseException, headers: dict[str, str]) -> str:
    """``exc`` as one line of at most 300 characters, no header value in it (an HTTP client's
    message may quote a value it refused: a token, a signature)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for value in headers.values():
        if len(value) >= 3:
            text = text.replace(value, "***")
    return " ".join(text.split())[:300]


def subscriber_routes() -> list[ApiRoute]:
    return [
        ApiRoute(
            "/subscribers/{subscriber_id}/rotate",
            "POST",
            rotate_secret,
            Spec(
                "Rotate the secret, with an overlap",
                m.Rotated,
                body=m.RotateIn,
                errors=(404,),
                tag="subscribers",
            ),
        ),
        ApiRoute(
            "/subscribers/{subscriber_id}/test",
            "POST",
            test_subscriber,
            Spec(
                "Send one signed webhook.test event now",
                m.SubscriberTestResult,
                errors=(404,),
                tag="subscribers",
            ),
        ),
    ]
