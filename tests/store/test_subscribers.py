"""Subscribers: YAML with ${ENV}, URL and allowlist validation, secrets, matching, the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.domain.signing import decode_secret
from service.store.subscribers import (
    Subscriber,
    SubscriberError,
    SubscriberStore,
    build_subscriber,
    host_allowed,
    load_subscribers_file,
    load_subscribers_into,
)

ALLOW = ["127.0.0.0/8", "10.0.0.0/8", "ledger.internal", "*.svc.cluster.local"]


def test_yaml_file_expands_env_and_generates_missing_secrets(tmp_path: Path) -> None:
    """${VAR} is replaced from the environment; a subscriber without a secret gets a whsec_ one."""
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    path = tmp_path / "subscribers.yaml"
    path.write_text(
        "subscribers:\n"
        "  - id: ledger\n"
        "    url: http://ledger.internal:8080/hooks/payments\n"
        '    secret: "${LEDGER_SECRET}"\n'
        '    events: ["payment.captured", "payment.completed"]\n'
        "  - id: crm\n"
        "    url: http://10.1.2.3/hooks\n"
        "    channels: [web]\n"
    )
    ledger, crm = load_subscribers_file(path, ALLOW, env={"LEDGER_SECRET": secret})
    assert (ledger.secret, ledger.events, ledger.origin) == (
        secret,
        ["payment.captured", "payment.completed"],
        "file",
    )
    assert crm.secret.startswith("whsec_") and len(decode_secret(crm.secret)) == 32
    assert crm.events == ["payment.*"]


def test_yaml_file_with_a_missing_env_var_is_refused(tmp_path: Path) -> None:
    """A ${VAR} that is not set is an error naming the variable, not an empty secret."""
    path = tmp_path / "subscribers.yaml"
    path.write_text("subscribers:\n  - {id: a, url: 'http://127.0.0.1/', secret: '${NOPE}'}\n")
    with pytest.raises(SubscriberError, match="NOPE"):
        load_subscribers_file(path, ALLOW, env={})


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.20.30.40", True),
        ("192.168.1.1", False),
        ("ledger.internal", True),
        ("LEDGER.internal", True),
        ("evil.internal", False),
        ("a.svc.cluster.local", True),
        ("svc.cluster.local", False),
        ("ledger.internal.evil.com", False),
    ],
)
def test_allowlist_hosts_wildcards_and_cidrs(host: str, allowed: bool) -> None:
    """Hosts match exactly or by *.domain; IP literals match CIDRs; nothing else passes."""
    assert host_allowed(host, ALLOW) is allowed


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://127.0.0.1/hook", "invalid_url"),
        ("not a url", "invalid_url"),
        ("http://user:pw@127.0.0.1/", "invalid_url"),
        ("http://127.0.0.1:99999/", "invalid_url"),
        ("https://example.com/hook", "host_not_allowed"),
        ("http://169.254.169.254/latest", "host_not_allowed"),
    ],
)
def test_bad_urls_are_refused_with_a_code(url: str, code: str) -> None:
    """Only http(s) URLs without credentials, to an allowed host, are accepted."""
    with pytest.raises(SubscriberError) as caught:
        build_subscriber({"id": "x", "url": url}, ALLOW)
    assert caught.value.code == code


def test_reserved_headers_and_bad_patterns_are_refused() -> None:
    """Extra headers cannot replace the signature headers; patterns must be payment.*-like."""
    with pytest.raises(SubscriberError, match=r"(?i)webhook-signature"):
        build_subscriber(
            {"id": "x", "url": "http://127.0.0.1/", "headers": {"Webhook-Signature": "v1,x"}},
            ALLOW,
        )
    with pytest.raises(SubscriberError, match="pattern"):
        build_subscriber({"id": "x", "url": "http://127.0.0.1/", "events": ["refund.*"]}, ALLOW)


def test_matching_by_pattern_channel_and_source() -> None:
    """wants() applies event patterns, context.channels and source filters."""
    sub = Subscriber(
        id="s",
        url="http://127.0.0.1/",
        events=["payment.cap*"],
        channels=["web"],
        sources=["stripe"],
    )
    web = {"context": {"channels": ["web", "app"]}}
    assert sub.wants("payment.captured", "stripe", web)
    assert not sub.wants("payment.approved", "stripe", web)
    assert not sub.wants("payment.captured", "kartapay", web)
    assert not sub.wants("payment.captured", "stripe", {"context": {"channels": ["pos"]}})
    assert not sub.wants("payment.captured", "stripe", {})


async def test_loading_the_file_keeps_runtime_state_and_secrets(
    tmp_path: Path, redis: aioredis.Redis
) -> None:
    """Reloading the file at start keeps a generated secret and an operator's disable."""
    path = tmp_path / "subscribers.yaml"
    path.write_text("subscribers:\n  - {id: a, url: 'http://127.0.0.1/a'}\n")
    store = SubscriberStore(redis)
    [first] = await load_subscribers_into(redis, path, ALLOW)
    await store.set_enabled("a", False, "operator")
    path.write_text("subscribers:\n  - {id: a, url: 'http://127.0.0.1/b'}\n")
    await load_subscribers_into(redis, path, ALLOW)
    stored = await store.get("a")
    assert stored is not None
    assert (stored.url, stored.secret, stored.enabled) == (
        "http://127.0.0.1/b",
        first.secret,
        False,
    )
    assert await load_subscribers_into(redis, None, ALLOW) == []
