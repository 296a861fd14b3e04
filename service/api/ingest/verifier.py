"""RSA signature checks on a worker thread, handed over one batch per event-loop turn.

``cryptography`` releases the GIL while OpenSSL verifies, so a check run on another thread takes
its ~25-40 µs off the event loop's core. A hand-off per request (an executor job: a queue, a
wake-up of the thread, one ``call_soon_threadsafe`` back) would cost the loop about as much as
it saves, so the checks asked for during one loop turn travel together:

- :meth:`SignatureVerifier.verify` appends the check to the turn's batch and schedules one
  ``call_soon`` that puts the whole batch on the thread's queue (one wake-up per batch);
- the thread verifies a batch (and any batch queued meanwhile) and resolves all their futures
  with one ``loop.call_soon_threadsafe``.

Each check's answer is its own: True (the signature matches), False (it does not), or the
exception ``verify`` raised. The thread lives from :meth:`start` to :meth:`stop` (the app's
lifespan). :meth:`stop` answers every check already handed over before it returns; a check
asked for while stopped or not started runs inline, on the caller's thread, with the same
answer: a request in flight at shutdown is answered, never refused for want of the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import NamedTuple

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# Stateless parameters of every verification: made once, not per request.
PADDING = padding.PKCS1v15()
HASH = hashes.SHA256()


class _Check(NamedTuple):
    future: asyncio.Future[bool]
    key: rsa.RSAPublicKey
    signature: bytes
    message: bytes


log = structlog.get_logger("kartahook.ingest")

_Answer = bool | BaseException
_STOP: list[_Check] = []  # the thread's "no more batches" (identity, never a real batch)


def check_now(key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> bool:
    """PKCS#1 v1.5, SHA-256: True when ``signature`` is ``key``'s over ``message``."""
    try:
        key.verify(signature, message, PADDING, HASH)
    except InvalidSignature:
        return False
    return True


class SignatureVerifier:
    """RSA checks (PKCS#1 v1.5, SHA-256) batched per loop turn onto one worker thread."""

    def __init__(self, name: str = "rsa-verifier") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue[list[_Check]] = queue.SimpleQueue()
        self._batch: list[_Check] = []
        self.batches = 0  # batches handed over (tests and measurements read it)
        self.checks = 0  # checks handed over in them

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread; checks go to it from now on (call from the event loop)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Answer every check handed over, then end the thread; later checks run inline."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None  # from now on verify() checks inline
        self._hand_over()
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)  # the loop keeps running: answers arrive
        log.info("verifier stopped", verifier=self.name, batches=self.batches, checks=self.checks)

    async def verify(self, key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is ``key``'s over ``message`` (exceptions as ``verify``'s)."""
        loop = self._loop
        if self._thread is None or loop is None:
            return check_now(key, signature, message)
        future: asyncio.Future[bool] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._hand_over)  # once per turn, after the turn's requests
        self._batch.append(_Check(future, key, signature, message))
        return await future

    def _hand_over(self) -> None:
        batch = self._batch
        if batch:
            self._batch = []
            self.batches += 1
            self.checks += len(batch)
            self._queue.put(batch)

    def _run(self) -> None:
        while True:
            batches = [self._queue.get()]
            while True:  # whatever else is queued: answered with the same wake-up of the loop
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            checks = [check for batch in batches if batch is not _STOP for check in batch]
            if checks:
                answers: list[_Answer] = []
                for check in checks:
                    try:
                        answers.append(check_now(check.key, check.signature, check.message))
                    except Exception as exc:  # handed to the request's own task
                        answers.append(exc)
                self._answer_later(checks, answers)
            if any(batch is _STOP for batch in batches):
                return

    def _answer_later(self, checks: list[_Check], answers: list[_Answer]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(_answer, checks, answers)


def _answer(checks: list[_Check], answers: list[_Answer]) -> None:
    for check, answer in zip(checks, answers, strict=True):
        future = check.future
        if future.done():  # the request went away (cancelled)
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
