"""The source abstraction, the kartapay source and the sources file, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from kartahook.cli import main as cli_main
from service.api.ingest.sources import (
    InboundRequest,
    Locator,
    MalformedRequest,
    NotAuthentic,
    Source,
    SourceConfigError,
    Unroutable,
    WrongContentType,
    build_sources,
)
from service.api.ingest.sources.config import ConfigFileError, load_sources
from service.domain.signing import generate_secret

BODY = orjson.dumps({"type": "payment.captured", "data": {"id": "pay_123", "status": "captured"}})


def make_request(
    body: bytes,
    headers: dict[str, str],
    content_type: str = "application/json",
    query: dict[str, str] | None = None,
) -> InboundRequest:
    all_headers = {"content-type": content_type, **{k.lower(): v for k, v in headers.items()}}
    return InboundRequest("POST", all_headers, query or {}, body, "127.0.0.1", 1_700_000_000_000)


def sw_headers(
    secret: str, msg_id: str, body: bytes, when: datetime | None = None
) -> dict[str, str]:
    """Headers signed by the standardwebhooks package itself."""
    when = when or datetime.now(tz=UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=when, data=body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def kartapay(*secrets: str, **options: Any) -> Source:
    return build_sources({"kartapay": {"secrets": list(secrets), **options}})["kartapay"]


def test_kartapay_accepts_what_standardwebhooks_signs() -> None:
    """A request signed by the standardwebhooks package verifies and yields its ids."""
    secret = generate_secret()
    event = kartapay(secret).verify(make_request(BODY, sw_headers(secret, "msg_1", BODY)))
    assert (event.source, event.event_id, event.payment_id) == ("kartapay", "msg_1", "pay_123")
    assert event.body == BODY and event.received_at_ms == 1_700_000_000_000


def test_kartapay_and_standardwebhooks_agree_on_multi_signature_headers() -> None:
    """A header with several signatures verifies when any v1 matches (as in standardwebhooks)."""
    secret = generate_secret()
    headers = sw_headers(secret, "msg_multi", BODY)
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {good}"
    Webhook(secret).verify(BODY, headers)
    assert kartapay(secret).verify(make_request(BODY, headers)).event_id == "msg_multi"


def test_rotation_old_and_new_secret_both_verify() -> None:
    """With two secrets configured, requests signed by either are accepted."""
    old, new = generate_secret(), generate_secret()
    source = kartapay(old, new)
    for secret, msg_id in ((old, "msg_old"), (new, "msg_new")):
        assert (
            source.verify(make_request(BODY, sw_headers(secret, msg_id, BODY))).event_id == msg_id
        )


@pytest.mark.parametrize(
    ("mutate", "rejection"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), MalformedRequest),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-timestamp"}, b),
            MalformedRequest,
        ),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
            MalformedRequest,
        ),
        (lambda h, b: ({**h, "webhook-timestamp": "not-a-number"}, b), MalformedRequest),
        (lambda h, b: ({**h, "webhook-signature": "v1,Zm9v"}, b), NotAuthentic),
        (
            lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b),
            NotAuthentic,
        ),
        (lambda h, b: ({**h, "webhook-id": "msg_other"}, b), NotAuthentic),
        (lambda h, b: (h, b + b" "), NotAuthentic),
    ],
    ids=[
        "missing-id",
        "missing-timestamp",
        "missing-signature",
        "bad-timestamp",
        "invalid-signature",
        "wrong-version",
        "changed-id",
        "changed-body",
    ],
)
def test_kartapay_rejects_what_standardwebhooks_rejects(mutate: Any, rejection: type) -> None:
    """The standardwebhooks package's rejection cases are rejected, each with the right kind."""
    from standardwebhooks.webhooks import WebhookVerificationError

    secret = generate_secret()
    headers, body = mutate(sw_headers(secret, "msg_1", BODY), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)
    with pytest.raises(rejection):
        kartapay(secret).verify(make_request(body, headers))


@pytest.mark.parametrize("offset_s", [-301, 301])
def test_timestamp_outside_tolerance_is_not_authentic(offset_s: int) -> None:
    """Timestamps 301 s in the past or future are refused, by us and by standardwebhooks."""
    from standardwebhooks.webhooks import WebhookVerificationError

    secret = generate_secret()
    when = datetime.now(tz=UTC) + timedelta(seconds=offset_s)
    headers = sw_headers(secret, "msg_1", BODY, when)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(NotAuthentic):
        kartapay(secret).verify(make_request(BODY, headers))


def test_wrong_secret_is_not_authentic() -> None:
    """A signature made with another secret is refused."""
    with pytest.raises(NotAuthentic):
        kartapay(generate_secret()).verify(
            make_request(BODY, sw_headers(generate_secret(), "msg_1", BODY))
        )


def test_authentic_non_json_body_is_malformed() -> None:
    """A correctly signed body that is not JSON is a 400-kind rejection."""
    secret = generate_secret()
    body = b"not json"
    with pytest.raises(MalformedRequest):
        kartapay(secret).verify(make_request(body, sw_headers(secret, "msg_1", body)))


def test_wrong_content_type_is_refused_before_verification() -> None:
    """A text/plain body is refused as the wrong content type; charset parameters are fine."""
    secret = generate_secret()
    headers = sw_headers(secret, "msg_1", BODY)
    with pytest.raises(WrongContentType):
        kartapay(secret).verify(make_request(BODY, headers, content_type="text/plain"))
    ok = make_request(BODY, headers, content_type="application/json; charset=utf-8")
    assert kartapay(secret).verify(ok).payment_id == "pay_123"


def test_authentic_event_without_payment_id_is_unroutable() -> None:
    """No data.id: Unroutable, carrying the event id so the raw event can be kept."""
    secret = generate_secret()
    body = orjson.dumps({"type": "payment.captured", "data": {}})
    with pytest.raises(Unroutable) as caught:
        kartapay(secret).verify(make_request(body, sw_headers(secret, "msg_9", body)))
    assert caught.value.event_id == "msg_9" and caught.value.status == 422


def test_extraction_is_configurable() -> None:
    """event_id/payment_id locators: dotted JSON paths, header: and query: names."""
    secret = generate_secret()
    body = orjson.dumps({"event": {"uid": "evt_7"}, "items": [{"pid": 42}]})
    source = kartapay(secret, event_id="event.uid", payment_id="items.0.pid")
    event = source.verify(make_request(body, sw_headers(secret, "msg_1", body)))
    assert (event.event_id, event.payment_id) == ("evt_7", "42")
    source = kartapay(secret, payment_id="header:X-Payment-Id")
    headers = {**sw_headers(secret, "msg_1", body), "X-Payment-Id": "pay_h"}
    assert source.verify(make_request(body, headers)).payment_id == "pay_h"
    assert Locator.parse("query:pid").find(make_request(b"", {}, query={"pid": "p"}), None) == "p"


@pytest.mark.parametrize("value", [None, "", True, {"a": 1}, [1]])
def test_locator_refuses_non_scalar_or_empty_values(value: Any) -> None:
    """Only non-empty strings and integers count as ids."""
    assert Locator.parse("data.id").find(make_request(b"", {}), {"data": {"id": value}}) is None


def test_unknown_type_and_bad_options_are_config_errors() -> None:
    """Unknown source types, missing or undecodable secrets, unknown keys: SourceConfigError."""
    for config in (
        {"nosuch": {}},
        {"kartapay": {}},
        {"kartapay": {"secrets": ["whsec_!!notbase64"]}},
        {"kartapay": {"secrets": [generate_secret()], "colour": "blue"}},
        {"kartapay": {"secrets": [generate_secret()], "payment_id": "a..b"}},
    ):
        with pytest.raises(SourceConfigError):
            build_sources(config)


def test_named_source_of_a_known_type() -> None:
    """A source may have its own name and an explicit type (two KartaPay accounts)."""
    secret = generate_secret()
    sources = build_sources({"kp-eu": {"type": "kartapay", "secrets": [secret]}})
    assert (
        sources["kp-eu"].verify(make_request(BODY, sw_headers(secret, "m", BODY))).source == "kp-eu"
    )


def test_sources_file_loads_with_env_secrets(tmp_path: Path) -> None:
    """The DESIGN example file loads, with the secret taken from the environment."""
    secret = generate_secret()
    path = tmp_path / "sources.yaml"
    path.write_text('sources:\n  kartapay: {secrets: ["${KARTAPAY_WEBHOOK_SECRET}"]}\n')
    sources = load_sources(path, {"KARTAPAY_WEBHOOK_SECRET": secret})
    event = sources["kartapay"].verify(make_request(BODY, sw_headers(secret, "m1", BODY)))
    assert event.payment_id == "pay_123"
    with pytest.raises(ConfigFileError):
        load_sources(path, {})


def test_config_check_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kartahook config check` exits 0 on a valid file and 1, without the secret, on a bad one."""
    secret = generate_secret()
    good = tmp_path / "good.yaml"
    good.write_text('sources:\n  kartapay: {secrets: ["${KP_SECRET}"]}\n')
    monkeypatch.setenv("KP_SECRET", secret)
    monkeypatch.delenv("KARTAHOOK_SOURCES_FILE", raising=False)
    assert cli_main(["config", "check", "--sources", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text('sources:\n  kartapay: {secrets: ["${KP_SECRET}"], tolerance_s: -1}\n')
    assert cli_main(["config", "check", "--sources", str(bad)]) == 1
    monkeypatch.setenv("KARTAHOOK_SOURCES_FILE", str(tmp_path / "absent.yaml"))
    assert cli_main(["config", "check"]) == 1
    output = capsys.readouterr()
    assert "tolerance_s" in output.err and "absent.yaml" in output.err
    assert secret not in output.out + output.err
