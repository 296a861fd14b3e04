"""The one whole-stack builder (kartahook.stack): files, environment, start order, skipping.

Starting the stack for real is covered by tests/e2e (the ``stack`` fixture) and tests/cli/test_run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kartahook.stack import (
    SOURCE_NAMES,
    SOURCE_SECRET_ENV,
    DemoSubscriber,
    Stack,
    Subscriber,
    isolated_env,
)
from kartahook.supervisor import ChildSpec
from service.api.ingest.sources.config import load_sources_config
from service.store.subscribers import load_subscribers_file


def two_subscriber_stack(tmp_path: Path, **options: Any) -> Stack:
    demo = DemoSubscriber("demo", name="demo-subscriber")
    web = DemoSubscriber("web-settlements", events=("payment.completed",), channels=("web",))
    extra = Subscriber("bench1", "http://127.0.0.1:9/s1", concurrency=2)
    return Stack(tmp_path, demo_subscribers=[demo, web], subscribers=[extra], **options)


def test_config_files_hold_references_and_the_env_holds_the_secrets(tmp_path: Path) -> None:
    """The written files name ${VAR}s only; the children's env gives each its secret, and the
    files then load (through the one expander) with those secrets."""
    stack = two_subscriber_stack(tmp_path)
    sources, subscribers = stack.write_config_files()
    text = sources.read_text() + subscribers.read_text()
    assert "whsec_" not in text
    env = stack.child_env(sources, subscribers)
    assert env[SOURCE_SECRET_ENV] == stack.source_secret
    assert env["DEMO_SUBSCRIBER_WEBHOOK_SECRET"] == stack.demo_subscribers[0].secret
    assert env["WEB_SETTLEMENTS_SUBSCRIBER_WEBHOOK_SECRET"] == stack.demo_subscribers[1].secret
    assert env["KARTAHOOK_SUBSCRIBERS_FILE"] == str(subscribers)
    loaded = {s.id: s for s in load_subscribers_file(subscribers, ["127.0.0.1"], env=env)}
    assert set(loaded) == {"demo", "web-settlements", "bench1"}
    assert loaded["web-settlements"].secret == stack.demo_subscribers[1].secret
    assert loaded["web-settlements"].channels == ["web"]
    assert loaded["bench1"].concurrency == 2
    port = stack.demo_subscribers[0].port
    assert loaded["demo"].url == f"http://127.0.0.1:{port}/hooks/payments"
    assert load_sources_config(sources, env)["kartapay"]["secrets"] == [stack.source_secret]
    assert yaml.safe_load(subscribers.read_text())["subscribers"][2]["url"].endswith("/s1")


def test_start_order(tmp_path: Path) -> None:
    """Children start extra, demo subscribers, service, workers, sandbox, in that order, and the
    sandbox's webhooks go to the service."""
    extra = ChildSpec("receiver", ["true"], {})
    stack = two_subscriber_stack(tmp_path, extra_children=[extra], workers=2)
    names = [spec.name for _, spec in stack.specs({})]
    assert names == [
        "receiver",
        "demo-subscriber",
        "subscriber-web-settlements",
        "service",
        "worker",
        "worker-2",
        "sandbox",
    ]
    assert stack.webhook_url == stack.service_url + "/v1/webhooks/kartapay"


def test_sandbox_gets_its_secret_by_env_and_its_extra_arguments(tmp_path: Path) -> None:
    """The sandbox's webhook secret is in its environment, not its argv; sandbox_args follow;
    with sandbox_webhooks off it gets no webhook URL and no secret."""
    stack = two_subscriber_stack(tmp_path, sandbox_args=("--seed", "6"))
    env = stack.child_env(*stack.write_config_files())
    command, spec = stack.specs(env)[-1]
    spec = stack.prepare(command, spec)
    assert spec.env["KARTAHOOK_SANDBOX_WEBHOOK_SECRET"] == stack.source_secret
    assert stack.source_secret not in " ".join(spec.argv)
    assert list(spec.argv[-4:]) == [
        "--webhook-url",
        stack.service_url + "/v1/webhooks/kartapay",
        "--seed",
        "6",
    ]
    quiet = two_subscriber_stack(tmp_path, sandbox_webhooks=False)
    command, spec = quiet.specs(env)[-1]
    spec = quiet.prepare(command, spec)
    assert "--webhook-url" not in spec.argv
    assert "KARTAHOOK_SANDBOX_WEBHOOK_SECRET" not in spec.env


def test_ports_are_distinct_and_explicit_ones_kept(tmp_path: Path) -> None:
    """Missing ports get distinct free ports; a given port is kept."""
    stack = Stack(tmp_path, ports={"service": 1234})
    assert stack.ports["service"] == 1234
    assert len(set(stack.ports.values())) == len(stack.ports) == 4


def test_isolated_env_drops_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """isolated_env() leaves out inherited KARTAHOOK_* settings and asks for JSON logs."""
    monkeypatch.setenv("KARTAHOOK_STACK_TEST_LEAK", "1")
    env = isolated_env({"KARTAHOOK_REDIS_URL": "redis://x"})
    assert "KARTAHOOK_STACK_TEST_LEAK" not in env
    assert env["KARTAHOOK_LOG_FORMAT"] == "json"
    assert env["KARTAHOOK_REDIS_URL"] == "redis://x"


def test_sources_file_configures_all_seven_sources_from_env(tmp_path: Path) -> None:
    """The sources file names all seven sources with ${VAR}s only; with the children's env they
    all build, with the provider credentials the sandbox gets and the sandbox's CA trusted."""
    from sandbox.providers.paypal_certs import generate
    from service.api.ingest.sources.config import load_sources

    stack = two_subscriber_stack(tmp_path, webhooks="both")
    stack.paypal_ca_file.write_bytes(generate().ca_pem)  # what the sandbox writes at start
    sources, subscribers = stack.write_config_files()
    text = sources.read_text()
    creds = stack.providers
    for secret in (creds.stripe_secret, creds.huri_secret, creds.basic_password):
        assert secret not in text
    built = load_sources(sources, stack.child_env(sources, subscribers))
    assert tuple(built) == SOURCE_NAMES
    config = load_sources_config(sources, stack.child_env(sources, subscribers))
    assert config["stripe"]["secrets"] == [creds.stripe_secret]
    assert config["huri"]["secrets"] == [creds.huri_secret]
    assert config["paypal"]["webhook_id"] == creds.paypal_webhook_id
    assert config["paypal"]["cert_ca_file"] == str(stack.paypal_ca_file)
    assert "127.0.0.1" in config["paypal"]["cert_hosts"]
    for name in ("mvola-mg", "mvola-km", "holo"):
        assert config[name]["credentials"] == [
            {"username": creds.basic_user, "password": creds.basic_password}
        ]
    assert config["holo"]["event_id"] == "query:transactionId"
    assert config["holo"]["payment_id"] == "query:reference"
    # Without provider webhooks the sandbox makes no CA, and the file does not name one.
    plain = two_subscriber_stack(tmp_path / "plain")
    plain_config = load_sources_config(
        plain.write_config_files()[0], plain.child_env(*plain.write_config_files())
    )
    assert "cert_ca_file" not in plain_config["paypal"]


def test_provider_webhooks_start_the_sandbox_before_the_service(tmp_path: Path) -> None:
    """With provider webhooks the sandbox starts before the service (it writes the PayPal CA
    the service reads at start), is told kartahook's URL, the mode and where to write the CA,
    and gets the provider credentials through its environment only."""
    stack = two_subscriber_stack(tmp_path, webhooks="provider")
    env = stack.child_env(*stack.write_config_files())
    specs = stack.specs(env)
    names = [spec.name for _, spec in specs]
    assert names == [
        "demo-subscriber",
        "subscriber-web-settlements",
        "sandbox",
        "service",
        "worker",
    ]
    command, spec = next((c, s) for c, s in specs if c == "sandbox")
    spec = stack.prepare(command, spec)
    argv = list(spec.argv)
    assert argv[argv.index("--webhooks") + 1] == "provider"
    assert argv[argv.index("--kartahook-url") + 1] == stack.service_url
    assert argv[argv.index("--paypal-ca-out") + 1] == str(stack.paypal_ca_file)
    creds = stack.providers
    assert spec.env["KARTAHOOK_SANDBOX_STRIPE_SECRET"] == creds.stripe_secret
    assert spec.env["KARTAHOOK_SANDBOX_HURI_SECRET"] == creds.huri_secret
    assert spec.env["KARTAHOOK_SANDBOX_BASIC_USER"] == creds.basic_user
    assert spec.env["KARTAHOOK_SANDBOX_BASIC_PASSWORD"] == creds.basic_password
    assert spec.env["KARTAHOOK_SANDBOX_PAYPAL_WEBHOOK_ID"] == creds.paypal_webhook_id
    for secret in (creds.stripe_secret, creds.huri_secret, creds.basic_password):
        assert secret not in " ".join(argv)
    with pytest.raises(ValueError, match="webhooks"):
        Stack(tmp_path, webhooks="stripe")
