"""The KartaPay API sandbox: a Starlette app true to ``kartapay-api-spec.json``.

Five endpoints under ``/v1`` with Bearer auth, the payment lifecycle, signed webhooks for every
change of status (KartaPay's own and the plan's provider's), and injected faults; plus control
endpoints under ``/_sandbox`` (no auth). With provider webhooks on, the lifespan also runs the
https server of the PayPal certificate (``sandbox.providers.paypal_certs``).
Everything lives in memory, built in the lifespan. See docs/sandbox.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.config import SandboxConfig
from sandbox.errors import ApiError, BadRequest, NotFound, error_response
from sandbox.lifecycle import Lifecycle
from sandbox.listing import build_page, parse_query
from sandbox.middleware import BearerAuthMiddleware, FaultInjectionMiddleware
from sandbox.payments_store import PaymentRecord, PaymentStore
from sandbox.providers import PLAN_SOURCES, build_registry
from sandbox.providers.paypal_certs import PayPalCertService
from sandbox.providers.paypal_certs import serve as serve_paypal_certs
from sandbox.schemas import CLAIM_SCHEMA, PLAN_SCHEMA, validate
from sandbox.state import Sandbox
from sandbox.webhooks import WebhookSender

__all__ = ["Sandbox", "SandboxConfig", "create_app"]

log = structlog.get_logger("sandbox.api")


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )


def _sandbox(request: Request) -> Sandbox:
    sandbox: Sandbox = request.state.sandbox
    return sandbox


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be JSON") from None


def _record(request: Request) -> PaymentRecord:
    record = _sandbox(request).store.get(request.path_params["id"])
    if record is None:
        raise NotFound()
    return record


def _payment_url(request: Request, payment_id: str) -> str:
    return str(request.url_for("get_payment", id=payment_id))


# --- /v1: the KartaPay API -----------------------------------------------------------------


async def create_payment(request: Request) -> Response:
    claim = await _json_body(request)
    problems = validate(CLAIM_SCHEMA, claim)
    if problems:
        raise BadRequest("; ".join(problems))
    record = _sandbox(request).store.create(
        claim, submit_url=lambda pid: str(request.url_for("submit_payment", id=pid))
    )
    log.info("payment created", payment_id=record.id)
    return json_response(
        {"next": record.body["billing"]["submitUrl"], "data": record.view()},
        status_code=201,
        headers={"Location": _payment_url(request, record.id)},
    )


async def list_payments(request: Request) -> Response:
    sandbox = _sandbox(request)
    query = parse_query(
        request.query_params, sandbox.config.default_limit, sandbox.config.max_limit
    )
    views = [record.view() for record in sandbox.store.all()]
    return json_response(build_page(views, query, request.url))


async def get_payment(request: Request) -> Response:
    return json_response(_record(request).view())


async def cancel_payment(request: Request) -> Response:
    record = _sandbox(request).lifecycle.cancel(request.path_params["id"])
    next_url = record.body.get("cancelUrl") or _payment_url(request, record.id)
    return json_response({"next": next_url, "data": record.view()})


async def submit_payment(request: Request) -> Response:
    record = _record(request)  # 404 before looking at the body
    plan = await _json_body(request)
    problems = validate(PLAN_SCHEMA, plan)
    if problems:
        raise BadRequest("; ".join(problems))
    record = _sandbox(request).lifecycle.submit(record.id, plan.get("source"))
    return json_response({"next": _payment_url(request, record.id), "data": record.view()})


# --- /_sandbox: control, no auth -------------------------------------------------------------


async def get_faults(request: Request) -> Response:
    return json_response(_sandbox(request).config.runtime_view())


async def set_faults(request: Request) -> Response:
    changes = await _json_body(request)
    if not isinstance(changes, dict):
        raise BadRequest("the body must be a JSON object")
    config = _sandbox(request).config
    try:
        config.update_runtime(changes)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    log.info("sandbox faults changed", **changes)
    return json_response(config.runtime_view())


async def force_failure(request: Request) -> Response:
    record = _sandbox(request).lifecycle.fail(request.path_params["id"])
    return json_response({"data": record.view()})


async def plan_outcome(request: Request) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("outcome"), str):
        raise BadRequest('the body must be {"outcome": "completed" | "failed" | "canceled"}')
    record = _sandbox(request).lifecycle.plan_outcome(request.path_params["id"], body["outcome"])
    return json_response({"data": record.view(), "outcome": record.outcome})


async def list_webhooks(request: Request) -> Response:
    sender = _sandbox(request).sender
    payment_id = request.query_params.get("paymentId")
    return json_response({"data": sender.records(payment_id), "backlog": sender.backlog()})


async def clear_webhooks(request: Request) -> Response:
    _sandbox(request).sender.clear_records()
    return Response(status_code=204)


async def get_providers(request: Request) -> Response:
    """Where provider webhooks go and how to trust the PayPal certificate (no secrets)."""
    sandbox = _sandbox(request)
    config = sandbox.config
    paypal = sandbox.paypal
    return json_response(
        {
            "webhooks": config.webhooks,
            "kartapayWebhooks": config.kartapay_webhooks,
            "providerWebhooks": sandbox.sender.providers_enabled,
            "kartahookUrl": config.provider_base_url,
            "sources": PLAN_SOURCES,
            "paypal": None
            if paypal is None
            else {
                "certUrl": paypal.cert_url,
                "caFile": paypal.ca_file,
                "webhookId": config.providers.paypal_webhook_id,
                "certSubjectCn": config.providers.paypal_cert_cn,
            },
        }
    )


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok", "payments": len(_sandbox(request).store)})


# --- errors ----------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("sandbox error", path=request.url.path)
    return error_response(500, "Internal Server Error")


def create_app(
    config: SandboxConfig, *, webhook_transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """The sandbox app. ``webhook_transport`` replaces the network for webhook sends (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = dataclasses.replace(config)  # control endpoints change this copy only
        rng = random.Random(config.seed)
        async with contextlib.AsyncExitStack() as stack:
            paypal: PayPalCertService | None = None
            if runtime.provider_webhooks:
                paypal = await stack.enter_async_context(serve_paypal_certs(runtime.providers))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    timeout=config.webhook_timeout_s,
                    transport=webhook_transport,
                    follow_redirects=False,
                    trust_env=False,
                )
            )
            providers = build_registry(runtime.providers, paypal)
            sender = WebhookSender(runtime, client, rng, providers)
            store = PaymentStore(
                new_id=lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                on_change=sender.enqueue,
            )
            lifecycle = Lifecycle(store, runtime, rng)
            sandbox = Sandbox(runtime, rng, store, lifecycle, sender, paypal)
            async with _background(lifecycle.scheduler.run(), sender.run()):
                log.info(
                    "sandbox started",
                    webhooks=sender.enabled,
                    kartapay_webhooks=runtime.kartapay_webhooks,
                    provider_webhooks=sender.providers_enabled,
                    **runtime.runtime_view(),
                )
                yield {"sandbox": sandbox}

    routes = [
        Route("/v1/payments", create_payment, methods=["POST"]),
        Route("/v1/payments", list_payments, methods=["GET"]),
        Route("/v1/payments/{id}", get_payment, methods=["GET"], name="get_payment"),
        Route("/v1/payments/{id}/cancel", cancel_payment, methods=["POST"]),
        Route("/v1/payments/{id}/submit", submit_payment, methods=["POST"], name="submit_payment"),
        Route("/_sandbox/faults", get_faults, methods=["GET"]),
        Route("/_sandbox/faults", set_faults, methods=["POST"]),
        Route("/_sandbox/payments/{id}/fail", force_failure, methods=["POST"]),
        Route("/_sandbox/payments/{id}/outcome", plan_outcome, methods=["POST"]),
        Route("/_sandbox/webhooks", list_webhooks, methods=["GET"]),
        Route("/_sandbox/webhooks", clear_webhooks, methods=["DELETE"]),
        Route("/_sandbox/providers", get_providers, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(FaultInjectionMiddleware), Middleware(BearerAuthMiddleware)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )


@contextlib.asynccontextmanager
async def _background(*coroutines: Any) -> AsyncIterator[None]:
    """Run coroutines as tasks for the duration of the block; cancel them cleanly after."""
    tasks = [asyncio.create_task(coro) for coro in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
