"""``kartahook sandbox``: the KartaPay API simulator (see docs/sandbox.md).

Its one valid Bearer token is ``KARTAHOOK_KARTAPAY_TOKEN``. Webhooks go to ``--webhook-url``,
signed with ``--webhook-secret`` (both may come from the environment instead). Provider webhooks
(Stripe, PayPal, MVola, Holo, Huri) go to ``--kartahook-url``/v1/webhooks/<source>, signed with
the provider flags below; each flag has a ``KARTAHOOK_SANDBOX_<NAME>`` variable.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from sandbox.providers.base import HURI_ALGORITHMS, HURI_ENCODINGS, STATUSES, ProviderSettings
from service.logging import configure_logging
from service.settings import Settings

URL_ENV = "KARTAHOOK_SANDBOX_WEBHOOK_URL"
SECRET_ENV = "KARTAHOOK_SANDBOX_WEBHOOK_SECRET"  # noqa: S105 (a variable name, not a secret)
ENV_PREFIX = "KARTAHOOK_SANDBOX_"
_DEFAULTS = ProviderSettings()
# Provider flags: (flag, ProviderSettings field, help). Each also reads KARTAHOOK_SANDBOX_<FIELD>.
_PROVIDER_FLAGS = (
    ("--stripe-secret", "stripe_secret", "Stripe endpoint secret (whsec_…, used as written)"),
    ("--paypal-webhook-id", "paypal_webhook_id", "PayPal webhook id in the signed message"),
    ("--paypal-cert-cn", "paypal_cert_cn", "subject CN of the PayPal signing certificate"),
    ("--paypal-cert-host", "paypal_cert_host", "address the PayPal certificate is served on"),
    ("--paypal-ca-out", "paypal_ca_out", "file the PayPal CA PEM is written to"),
    ("--basic-user", "basic_user", "HTTP Basic user of MVola MG, MVola KM and Holo"),
    ("--basic-password", "basic_password", "HTTP Basic password of MVola MG, MVola KM and Holo"),
    ("--huri-secret", "huri_secret", "Huri HMAC secret (used as written)"),
    ("--huri-signature-header", "huri_signature_header", "Huri signature header"),
    ("--huri-signature-prefix", "huri_signature_prefix", "Huri signature prefix, e.g. sha256="),
    ("--huri-timestamp-header", "huri_timestamp_header", "Huri timestamp header: sign t.body"),
)


def _ratio(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    parser.add_argument(
        "--webhook-url", default=os.environ.get(URL_ENV), help=f"where webhooks go (${URL_ENV})"
    )
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get(SECRET_ENV),
        help=f"whsec_ secret that signs the webhooks (${SECRET_ENV})",
    )
    parser.add_argument(
        "--step-delay", type=_non_negative, default=0.3, help="seconds between lifecycle steps"
    )
    parser.add_argument(
        "--fail-ratio", type=_ratio, default=0.0, help="share of submitted payments that fail"
    )
    parser.add_argument(
        "--error-500-ratio", type=_ratio, default=0.0, help="share of API requests answered 500"
    )
    parser.add_argument(
        "--error-429-ratio", type=_ratio, default=0.0, help="share of API requests answered 429"
    )
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of a 429 (s)")
    parser.add_argument(
        "--latency", type=_non_negative, default=0.0, help="seconds added to API requests"
    )
    parser.add_argument("--duplicates", action="store_true", help="send every webhook twice")
    parser.add_argument(
        "--out-of-order", action="store_true", help="shuffle webhooks within a short window"
    )
    parser.add_argument(
        "--webhook-attempts", type=int, default=5, help="attempts per webhook (default 5)"
    )
    parser.add_argument(
        "--drop-status",
        action="append",
        choices=STATUSES,
        default=[],
        metavar="STATUS",
        help="send no webhook (of any kind) for changes to STATUS; repeatable",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    providers = parser.add_argument_group("provider webhooks")
    providers.add_argument(
        "--kartahook-url",
        default=os.environ.get(ENV_PREFIX + "KARTAHOOK_URL"),
        help="kartahook base URL: provider webhooks go to <URL>/v1/webhooks/<source>; without "
        "it none are sent",
    )
    providers.add_argument(
        "--webhooks",
        choices=("kartapay", "provider", "both"),
        default=os.environ.get(ENV_PREFIX + "WEBHOOKS", "both"),
        help="which webhooks a status change sends (default both)",
    )
    for flag, name, text in _PROVIDER_FLAGS:
        env = ENV_PREFIX + name.upper()
        providers.add_argument(
            flag,
            dest=name,
            default=os.environ.get(env, getattr(_DEFAULTS, name)),
            help=f"{text} (${env})",
        )
    providers.add_argument(
        "--paypal-cert-port",
        type=int,
        default=os.environ.get(ENV_PREFIX + "PAYPAL_CERT_PORT", "0"),
        help="https port of the PayPal certificate (0: a free port)",
    )
    providers.add_argument(
        "--huri-algorithm", choices=HURI_ALGORITHMS, default=_DEFAULTS.huri_algorithm
    )
    providers.add_argument(
        "--huri-encoding", choices=HURI_ENCODINGS, default=_DEFAULTS.huri_encoding
    )


def provider_settings(args: argparse.Namespace) -> ProviderSettings:
    """ProviderSettings from the parsed flags."""
    values = {name: getattr(args, name) for _, name, _ in _PROVIDER_FLAGS}
    for name in ("paypal_ca_out", "huri_timestamp_header"):
        values[name] = values[name] or None
    return ProviderSettings(
        **values,
        paypal_cert_port=args.paypal_cert_port,
        huri_algorithm=args.huri_algorithm,
        huri_encoding=args.huri_encoding,
    )


def run(args: argparse.Namespace) -> int:
    from sandbox.kartapay_api import SandboxConfig, create_app

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if bool(args.webhook_url) != bool(args.webhook_secret):
        raise SystemExit("sandbox: give both --webhook-url and --webhook-secret, or neither")
    if args.paypal_ca_out and not Path(args.paypal_ca_out).parent.is_dir():
        raise SystemExit(
            f"sandbox: --paypal-ca-out: no directory {Path(args.paypal_ca_out).parent}"
        )
    try:
        config = SandboxConfig(
            token=settings.kartapay_token.get_secret_value(),
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            step_delay_s=args.step_delay,
            fail_ratio=args.fail_ratio,
            latency_s=args.latency,
            error_500_ratio=args.error_500_ratio,
            error_429_ratio=args.error_429_ratio,
            retry_after_s=args.retry_after,
            duplicate_webhooks=args.duplicates,
            out_of_order_webhooks=args.out_of_order,
            webhook_max_attempts=args.webhook_attempts,
            seed=args.seed,
            webhooks=args.webhooks,
            kartahook_url=args.kartahook_url or None,
            drop_statuses=tuple(args.drop_status),
            providers=provider_settings(args),
        )
    except ValueError as exc:
        raise SystemExit(f"sandbox: {exc}") from None
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0
