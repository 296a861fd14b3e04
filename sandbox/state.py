"""The running sandbox as the lifespan keeps it (``scope["state"]["sandbox"]``): read by the
routes (:mod:`sandbox.kartapay_api`) and by the middleware (:mod:`sandbox.middleware`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sandbox.config import SandboxConfig
from sandbox.lifecycle import Lifecycle
from sandbox.payments_store import PaymentStore
from sandbox.providers.paypal_certs import PayPalCertService
from sandbox.webhooks import WebhookSender


@dataclass
class Sandbox:
    """The running sandbox: its own copy of the config, and its parts."""

    config: SandboxConfig
    rng: random.Random
    store: PaymentStore
    lifecycle: Lifecycle
    sender: WebhookSender
    paypal: PayPalCertService | None = None
