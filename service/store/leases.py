"""Short leases, renewed while the work runs (DESIGN Guarantee 8): what one worker holds, and
the one script (``lua/lease_renew.lua``) its heartbeat renews them all with.

A worker holds three kinds of lease, each ``lease_ms`` long (``KARTAHOOK_WORKER_LEASE_S``):

- arq's in-progress key of every job it runs (``arq:in-progress:{job_id}``), which keeps other
  workers from running the job meanwhile;
- the fetch lock of every payment its processing runs fetch (``kh:pay:{payment_id}:lock``);
- the in-flight slot (``kh:fo:f:{sub}`` member) of every delivery attempt it sends, with the
  breaker probe when the attempt is one, and the deferred safety-net job of an attempt sent at
  once.

The worker's heartbeat (``workers.main.ResilientWorker``) calls :meth:`Leases.renew` every
third of a lease: one round trip for all of them. A worker that dies stops renewing, so its
hold lapses within one lease and its jobs, locks and slots are taken up by the others.

A lease found lapsed or taken by another holder is *lost*: :attr:`Lease.lost` is set, and its
holder begins nothing more on its strength (the state changes it may still make are guarded by
generation checks and compare-and-set, so a late one is harmless).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.store.layout import (
    arq_in_progress_key,
    breaker_key,
    inflight_key,
    payment_lock_key,
)
from service.store.scripts import Script

RENEW = Script.load("lease_renew")


@dataclass(eq=False, slots=True)
class Lease:
    """One lease a run of this worker holds: a fetch lock (``kind == "lock"``: ``key`` is the
    lock, ``member`` the run's token) or a delivery slot (``"slot"``: ``key`` the subscriber's
    in-flight zset, ``member`` the attempt's job id, ``breaker`` its breaker hash)."""

    kind: str
    key: str
    member: str
    breaker: str = ""
    lost: bool = False
    """Set when a renewal found the lease lapsed or held by another: act on it no more."""


@dataclass(frozen=True, slots=True)
class Renewed:
    jobs: int
    """How many of the given jobs' in-progress keys were renewed."""
    lost: tuple[Lease, ...] = ()
    """The leases that could not be renewed (now marked lost, and no longer held)."""


@dataclass
class Leases:
    """The leases one worker process holds, and their renewal."""

    redis: aioredis.Redis
    queue_name: str
    lease_ms: int
    _held: dict[int, Lease] = field(default_factory=dict)

    def hold_lock(self, payment_id: str, token: str) -> Lease:
        """Renew the fetch lock of ``payment_id`` (taken with ``token``) until dropped."""
        return self._hold(Lease("lock", payment_lock_key(payment_id), token))

    def hold_slot(self, subscriber_id: str, job_id: str) -> Lease:
        """Renew the in-flight slot (and probe) of the attempt ``job_id`` until dropped."""
        lease = Lease("slot", inflight_key(subscriber_id), job_id, breaker_key(subscriber_id))
        return self._hold(lease)

    def drop(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its work is over)."""
        self._held.pop(id(lease), None)

    def held(self) -> list[Lease]:
        return list(self._held.values())

    def _hold(self, lease: Lease) -> Lease:
        self._held[id(lease)] = lease
        return lease

    async def renew(self, job_ids: Iterable[str], now_ms: int) -> Renewed:
        """Renew the in-progress keys of ``job_ids`` and every lease held, in one script call."""
        jobs = [arq_in_progress_key(job_id) for job_id in job_ids]
        leases = self.held()
        locks = [lease for lease in leases if lease.kind == "lock"]
        slots = [lease for lease in leases if lease.kind == "slot"]
        if not jobs and not leases:
            return Renewed(0)
        keys = [self.queue_name, *jobs, *(lock.key for lock in locks)]
        for slot in slots:
            keys += [slot.key, slot.breaker]
        args: list[str | int] = [now_ms, self.lease_ms, len(jobs), len(locks), len(slots)]
        args += [lock.member for lock in locks]
        args += [slot.member for slot in slots]
        reply = await RENEW(self.redis, keys, args)
        lost = []
        for lease, flag in zip([*locks, *slots], reply[1:], strict=True):
            if not int(flag):
                lease.lost = True
                self.drop(lease)
                lost.append(lease)
        return Renewed(int(reply[0]), tuple(lost))
