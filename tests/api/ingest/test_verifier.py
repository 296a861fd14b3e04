"""The RSA verifier thread (``service.api.ingest.verifier``): one hand-off per loop turn, each
check its own answer, and stopping answers what was handed over."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from service.api.ingest.verifier import SignatureVerifier

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signature(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def checks(verifier: SignatureVerifier, count: int) -> tuple[list[Awaitable[bool]], list[bool]]:
    """``count`` checks, every third one signed by another key; and the answers they must get."""
    awaitables, expected = [], []
    for i in range(count):
        message = f"message {i}".encode()
        forged = i % 3 == 2
        sig = signature(OTHER if forged else KEY, message)
        awaitables.append(verifier.verify(KEY.public_key(), sig, message))
        expected.append(not forged)
    return awaitables, expected


def verifier_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


async def test_one_turn_is_one_batch_with_each_answer_its_own() -> None:
    """Checks asked for in one loop turn go to the thread as one batch; right and forged
    signatures mixed in it each get their own answer."""
    verifier = SignatureVerifier("test-verifier-batch")
    verifier.start()
    try:
        awaitables, expected = checks(verifier, 30)
        assert await asyncio.gather(*awaitables) == expected
        assert verifier.batches == 1
        awaitables, expected = checks(verifier, 7)
        assert await asyncio.gather(*awaitables) == expected
        assert verifier.batches == 2
    finally:
        await verifier.stop()


async def test_an_exception_reaches_its_own_caller() -> None:
    """A check that raises (not a signature mismatch) raises in its caller only, as inline."""
    verifier = SignatureVerifier("test-verifier-error")
    verifier.start()
    try:
        message = b"message"
        good = verifier.verify(KEY.public_key(), signature(KEY, message), message)
        broken = verifier.verify(KEY.public_key(), b"sig", "not bytes")  # type: ignore[arg-type]
        answers = await asyncio.gather(good, broken, return_exceptions=True)
        assert answers[0] is True
        assert isinstance(answers[1], TypeError)
    finally:
        await verifier.stop()


async def test_stop_answers_checks_not_yet_handed_over() -> None:
    """Checks pending when the verifier stops (still in the turn's batch) are all answered
    correctly, the thread ends, and later checks are answered inline with the same result."""
    verifier = SignatureVerifier("test-verifier-stop")
    verifier.start()
    assert len(verifier_threads("test-verifier-stop")) == 1
    awaitables, expected = checks(verifier, 24)
    pending = [asyncio.ensure_future(a) for a in awaitables]
    await asyncio.sleep(0)  # each task has queued its check; the hand-over has not run yet
    assert verifier.batches == 0
    await verifier.stop()
    assert [await task for task in pending] == expected
    assert verifier_threads("test-verifier-stop") == []
    awaitables, expected = checks(verifier, 6)
    assert await asyncio.gather(*awaitables) == expected
    assert verifier.batches == 1  # the one made by stop(); none since


@pytest.mark.parametrize("started", [False, True], ids=["never-started", "restarted"])
async def test_inline_when_not_running_and_restartable(started: bool) -> None:
    """A verifier never started checks inline; one stopped can start again and batches."""
    verifier = SignatureVerifier("test-verifier-restart")
    if started:
        verifier.start()
        await verifier.stop()
    awaitables, expected = checks(verifier, 4)
    assert await asyncio.gather(*awaitables) == expected
    assert verifier.batches == 0  # inline: nothing handed over
    verifier.start()
    try:
        awaitables, expected = checks(verifier, 5)
        assert await asyncio.gather(*awaitables) == expected
        assert verifier.batches == 1
    finally:
        await verifier.stop()
