"""The sandbox speaks every provider: one module per provider, and a registry by plan code.

``build_registry`` binds each provider to the sandbox's settings (and PayPal to the running
certificate server); ``event_for`` turns a change of status into that provider's webhook.
"""

from __future__ import annotations

from sandbox.payments_store import StatusChange
from sandbox.providers.base import Provider, ProviderEvent, ProviderSettings, sends_for
from sandbox.providers.holo import Holo
from sandbox.providers.huri import Huri
from sandbox.providers.mvola_km import MVolaKM
from sandbox.providers.mvola_mg import MVolaMG
from sandbox.providers.paypal import PayPal
from sandbox.providers.paypal_certs import PayPalCertService
from sandbox.providers.stripe import Stripe

__all__ = [
    "PLAN_SOURCES",
    "Provider",
    "ProviderEvent",
    "ProviderSettings",
    "build_registry",
    "event_for",
]

# Plan code -> kartahook source name.
PLAN_SOURCES = {
    "STR": "stripe",
    "PYP": "paypal",
    "MVM": "mvola-mg",
    "MVK": "mvola-km",
    "HOL": "holo",
    "HRM": "huri",
}


def build_registry(
    settings: ProviderSettings, paypal: PayPalCertService | None
) -> dict[str, Provider]:
    """Every provider by plan code; PayPal only with its certificate server running."""
    providers: list[Provider] = [
        Stripe(settings.stripe_secret),
        MVolaMG(settings.basic_user, settings.basic_password),
        MVolaKM(settings.basic_user, settings.basic_password),
        Holo(settings.basic_user, settings.basic_password),
        Huri(
            settings.huri_secret,
            header=settings.huri_signature_header,
            algorithm=settings.huri_algorithm,
            encoding=settings.huri_encoding,
            prefix=settings.huri_signature_prefix,
            timestamp_header=settings.huri_timestamp_header,
        ),
    ]
    if paypal is not None:
        providers.append(PayPal(settings.paypal_webhook_id, paypal.signing_key, paypal.cert_url))
    return {provider.plan_code: provider for provider in providers}


def event_for(
    registry: dict[str, Provider], change: StatusChange, nonce: str
) -> tuple[Provider, ProviderEvent] | None:
    """The provider webhook for a change of status, or None (no plan code, or not submitted)."""
    if not sends_for(change):
        return None
    code = change.payment.get("plan", {}).get("source")
    provider = registry.get(str(code))
    if provider is None:
        return None
    return provider, provider.build(change, nonce)
