"""Errors of the fan-out side.

``service.domain.subscribers.SubscriberError`` covers invalid subscriber definitions (file,
admin API).
Everything a subscriber's endpoint does wrong is an outcome recorded on the attempt, never an
exception; the errors below are for the fan-out machinery itself.
"""

from __future__ import annotations

from service.errors import KartahookError


class FanoutError(KartahookError):
    """Base of fan-out errors."""


class FanoutNotStarted(FanoutError):
    """A delivery job ran in a worker that did not run ``workers.delivery.job.on_startup``."""
