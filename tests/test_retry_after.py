"""The one Retry-After parser (service.retry_after), used by the KartaPay client and delivery."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from service.retry_after import parse_retry_after


def test_parse_retry_after_forms() -> None:
    """Retry-After parses delay-seconds and HTTP-dates; past dates give 0, junk gives None."""
    now = 1_700_000_000.0
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 1.5 ", now=now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30), now=now) == 30.0  # "-0000" zone
    for junk in (None, "", "soon", "-3", "nan", "inf"):
        assert parse_retry_after(junk, now=now) is None


def test_parse_retry_after_seconds_and_http_date() -> None:
    """Retry-After as delta seconds or as an HTTP date; garbage is ignored."""
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after("120", now.timestamp()) == 120
    assert parse_retry_after(later, now.timestamp()) == 30
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after(None, now.timestamp()) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("7", 7.0), ("120", 120.0), ("1.5", 1.5), ("0.25", 0.25), ("\t30 ", 30.0)],
)
def test_delta_seconds_integers_and_decimals(value: str, seconds: float) -> None:
    """Delay-seconds as an integer or a decimal (1.5) is that many seconds."""
    assert parse_retry_after(value, now=0.0) == seconds


def test_http_date_is_measured_from_now_and_a_past_date_is_zero() -> None:
    """An HTTP-date gives the seconds from ``now`` to it; a date already past gives 0."""
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", now=now) == 60.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize(
    "value", ["-1", "-0.5", "+5", "1e3", "1.", ".5", "1,5", "soon", "5 s", "Wed, 99 Foo", "   "]
)
def test_negatives_and_garbage_give_none(value: str) -> None:
    """A negative, signed, exponent or otherwise unreadable value is ignored (None)."""
    assert parse_retry_after(value, now=0.0) is None


def test_callers_share_the_parser() -> None:
    """The KartaPay client and the delivery runner call this very parser, not copies."""
    from service import kartapay
    from service.kartapay import client
    from workers.delivery import runner

    assert kartapay.parse_retry_after is parse_retry_after
    assert client.parse_retry_after is parse_retry_after
    assert runner.parse_retry_after is parse_retry_after
