"""What every source shares: key-step locators, joined event ids, allowed_ips, and the checks
of the sources file (``kartahook config check`` over all seven source types)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kartahook.cli import main as cli_main
from service.api.ingest.sources import (
    Forbidden,
    InboundRequest,
    Locator,
    SourceConfigError,
    build_sources,
)
from service.api.ingest.sources.base import parse_locators

MVOLA = {
    "serverCorrelationId": "c1",
    "transactionStatus": "completed",
    "metadata": [{"key": "partnerName", "value": "shop"}, {"key": "paymentId", "value": "p9"}],
}


def request(client_ip: str | None = "127.0.0.1") -> InboundRequest:
    return InboundRequest("POST", {"x-a": "h"}, {"q": "v"}, b"", client_ip, 0)


def test_key_step_picks_the_entry_with_that_key() -> None:
    """metadata[key=paymentId].value finds the value of the entry whose key is paymentId."""
    assert Locator.parse("metadata[key=paymentId].value").find(request(), MVOLA) == "p9"
    assert Locator.parse("metadata[key=partnerName].value").find(request(), MVOLA) == "shop"
    assert Locator.parse("metadata[key=absent].value").find(request(), MVOLA) is None
    assert Locator.parse("serverCorrelationId[key=x].value").find(request(), MVOLA) is None


@pytest.mark.parametrize("spec", ["metadata[key=].value", "metadata[0]", "a[key=b", "a..b", ""])
def test_malformed_locators(spec: str) -> None:
    """A malformed locator is refused when it is parsed."""
    with pytest.raises(ValueError):
        Locator.parse(spec)


def test_event_id_from_several_locators() -> None:
    """A list of locators (header, query, JSON) gives their values joined with ':'."""
    source = build_sources(
        {
            "mvola-km": {
                "credentials": [{"username": "u", "password": "p"}],
                "event_id": ["header:X-A", "query:q", "serverCorrelationId"],
            }
        }
    )["mvola-km"]
    found = [locator.find(request(), MVOLA) for locator in source.event_locators]
    assert found == ["h", "v", "c1"]
    assert len(parse_locators("id")) == 1


def test_allowed_ips() -> None:
    """allowed_ips admits addresses inside its CIDRs (IPv4-mapped IPv6 too) and forbids others."""
    source = build_sources(
        {
            "mvola-mg": {
                "credentials": [{"username": "u", "password": "p"}],
                "allowed_ips": ["196.192.32.0/24", "2001:db8::1"],
            }
        }
    )["mvola-mg"]
    for allowed in ("196.192.32.9", "::ffff:196.192.32.9", "2001:db8::1"):
        source.check_client(request(allowed))
    for refused in ("196.192.33.9", "2001:db8::2", None):
        with pytest.raises(Forbidden):
            source.check_client(request(refused))


def test_bad_allowed_ips_named() -> None:
    """An entry of allowed_ips that is no address or CIDR names source and field."""
    with pytest.raises(SourceConfigError, match=r"source 'mvola-mg': allowed_ips"):
        build_sources(
            {
                "mvola-mg": {
                    "credentials": [{"username": "u", "password": "p"}],
                    "allowed_ips": ["not-an-ip"],
                }
            }
        )


ALL_SOURCES = """
sources:
  kartapay: {secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}
  stripe: {secrets: ["whsec_stripe"], tolerance_s: 300}
  paypal: {webhook_id: "WH-1"}
  mvola-mg:
    credentials: [{username: "u", password: "p"}]
    allowed_ips: ["196.192.32.0/24"]
  mvola-km: {credentials: [{username: "u", password: "p"}]}
  holo:
    credentials: [{username: "u", password: "p"}]
    event_id: "query:transactionId"
    payment_id: "query:reference"
  huri: {secrets: ["s"], event_id: "id", payment_id: "data.paymentId", algorithm: sha512}
"""

BROKEN_SOURCES = """
sources:
  stripe: {secrets: [], tolerance_s: 300}
  paypal: {webhook_id: "WH-1", cert_hosts: ["http://paypal.com"]}
  mvola-mg: {credentials: [{username: "u"}]}
  holo: {credentials: [{username: "u", password: "p"}]}
  huri: {secrets: ["s"], event_id: "id", payment_id: "data.paymentId", encoding: base32}
"""


def test_config_check_all_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config check accepts a file with all seven sources, and for a broken one names every
    wrong source with its field, one line each, exiting 1."""
    monkeypatch.delenv("KARTAHOOK_SOURCES_FILE", raising=False)
    good = tmp_path / "good.yaml"
    good.write_text(ALL_SOURCES)
    assert cli_main(["config", "check", "--sources", str(good)]) == 0
    assert "holo, huri, kartapay, mvola-km, mvola-mg, paypal, stripe" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_SOURCES)
    assert cli_main(["config", "check", "--sources", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    expected = [
        ("'stripe'", "secrets"),
        ("'paypal'", "cert_hosts"),
        ("'mvola-mg'", "credentials.0.password"),
        ("'holo'", "event_id"),
        ("'huri'", "encoding"),
    ]
    assert len(lines) == len(expected)
    for line, (source, field) in zip(lines, expected, strict=True):
        assert source in line and field in line, line
