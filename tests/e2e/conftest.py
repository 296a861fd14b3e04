"""The whole stack as real processes, built by kartahook.stack (as ``kartahook run`` and the
benchmark build it): Redis, two demo subscribers with different filters, ``kartahook serve``,
``kartahook worker`` and a sandbox that sends every webhook twice, shuffled."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kartahook.stack import DemoSubscriber, Stack, isolated_env
from kartahook.supervisor import ChildFailed

TOKEN = "e2e-sandbox-token"
SANDBOX_ARGS = ("--step-delay", "0.1", "--duplicates", "--out-of-order", "--seed", "6")


def e2e_subscribers() -> list[DemoSubscriber]:
    """Every event to one subscriber; captured and completed of channel web to the other."""
    return [
        DemoSubscriber("all-events", events=("payment.*",), keep=10_000),
        DemoSubscriber(
            "web-settlements",
            events=("payment.captured", "payment.completed"),
            channels=("web",),
            keep=10_000,
        ),
    ]


@contextlib.asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[Stack]:
    """Start ``stack`` (a child that fails to start fails the test with every log's tail) and
    stop it afterwards, whatever happened."""
    try:
        await stack.start()
    except ChildFailed as exc:
        await stack.stop()
        raise AssertionError(f"{exc}\n{stack.log_tails()}") from None
    except BaseException:
        await stack.stop()
        raise
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Everything started and ready; all of it stopped again after the test."""
    built = Stack(
        tmp_path,
        demo_subscribers=e2e_subscribers(),
        token=TOKEN,
        redis_appendonly=False,
        base_env=isolated_env(),
        sandbox_args=SANDBOX_ARGS,
        grace_s=15.0,
    )
    async with running(built):
        yield built
