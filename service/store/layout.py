"""Every Redis key, key prefix and job-id format of kartahook, in one place.

Each key is one format string (``{name}`` fields); the Python key functions below format it, and
the Lua scripts get the same format strings as Lua key functions (:func:`lua_key_functions`,
prepended to every script by :mod:`service.store.scripts`), so the layout is one fact in one
place. arq's own key names are imported from :mod:`arq.constants`, not copied.

:data:`KEY_PATTERNS` lists every key with its type and lifetime; ``docs/architecture.md`` shows
it as a table (a test holds the two equal).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from arq.constants import (
    default_queue_name,
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

from service.domain.events import EventHint, event_digest

# ---- arq -------------------------------------------------------------------------------------

DEFAULT_QUEUE = default_queue_name
ARQ_JOB_PREFIX = job_key_prefix
ARQ_IN_PROGRESS_PREFIX = in_progress_key_prefix
ARQ_RETRY_PREFIX = retry_key_prefix
ARQ_RESULT_PREFIX = result_key_prefix
HEALTH_CHECK_SUFFIX = health_check_key_suffix
# How long the keys of a pending (subscriber, payment) line (its deliveries, order, head and the
# snapshots they refer to) live after their last write: longer than the retry horizon (3 days)
# and any sensible pause of a subscriber; a line nobody touched for this long is forgotten.
LINE_TTL_S = 30 * 86_400
# How long what an operator must act on (dead letters, stuck payments) is kept by default
# (Settings.operator_ttl_s).
OPERATOR_TTL_S = 30 * 86_400
# How long a job key lives beyond its run time (arq's ``expires_extra_ms``; arq's default is one
# day). A job whose key expires before a worker reaches it is lost ("job expired"), so this is
# how long a backlog may last without losing a stored webhook or a delivery: seven days, longer
# than the providers' retry windows. Every writer of jobs uses it, arq's pools and workers too.
ARQ_EXPIRES_EXTRA_MS = 7 * 86_400_000

# The arq functions that ingestion, processing and delivery enqueue.
PROCESS_EVENT = "process_event"
FANOUT_DELIVER = "fanout_deliver"
FANOUT_WAKE = "fanout_wake"

# ---- key formats -------------------------------------------------------------------------------

KEY_PREFIX = "kh:"

QUEUE = "{queue}"
HEALTH_CHECK = "{queue}" + HEALTH_CHECK_SUFFIX
ARQ_JOB = ARQ_JOB_PREFIX + "{job_id}"
ARQ_IN_PROGRESS = ARQ_IN_PROGRESS_PREFIX + "{job_id}"
ARQ_RETRY = ARQ_RETRY_PREFIX + "{job_id}"
ARQ_RESULT = ARQ_RESULT_PREFIX + "{job_id}"

# One hash per payment holds its stored events (docs/decisions/event-hash.md): one field per
# event, its dedupe marker, whose value is the event's raw record (compressed). A hash of a few
# short fields is one small listpack (with the Redis setting of service.store.redis_config):
# one key's overhead per payment instead of one per webhook.
EVENT = KEY_PREFIX + "ev:{payment_id}"
# The field of an event: the first EVENT_FIELD_CHARS (64 bits) of its digest (of (source,
# event id)), written as a signed 64-bit decimal integer (:func:`event_field`). Within one
# payment's few events 64 bits are plenty to tell them apart (two of a payment's 100 events
# collide with a probability below 10^-15); as an integer a listpack keeps it in 10 bytes
# instead of 18 as hex text, which keeps a payment's five events under a 1 KiB allocation
# (docs/decisions/event-hash.md), and it still reads as text (redis-cli HGET works).
EVENT_FIELD = "{number}"
EVENT_FIELD_CHARS = 16
UNROUTABLE = KEY_PREFIX + "unroutable"

PAYMENT_STATE = KEY_PREFIX + "pay:{payment_id}:state"
PAYMENT_LOCK = KEY_PREFIX + "pay:{payment_id}:lock"
PAYMENT_DIRTY = KEY_PREFIX + "pay:{payment_id}:dirty"
TRANSITIONS = KEY_PREFIX + "transitions"

FO_PREFIX = KEY_PREFIX + "fo:"
DELIVERY = FO_PREFIX + "d:{sub}:{tid}"
# A transition's delivery body, stored once for all its deliveries (compressed,
# service.store.compression) with the count of pending and dead deliveries that refer to it:
# deleted when the last of them is delivered or dropped.
SNAPSHOT = FO_PREFIX + "s:{tid}"
# What is left of a payment's finished deliveries, for history and replay, is kept in the
# payment's state hash (PAYMENT_STATE: one key per payment at rest), one short field per
# (subscriber, seq) (service.store.records).
RECORD_FIELD = "{sub}:{seq}"
ORDER = FO_PREFIX + "o:{sub}:{payment_id}"
HEAD = FO_PREFIX + "h:{sub}:{payment_id}"
WAITING = FO_PREFIX + "w:{sub}"
INFLIGHT = FO_PREFIX + "f:{sub}"
BREAKER = FO_PREFIX + "b:{sub}"
DEAD_ALL = FO_PREFIX + "dead"
DEAD = FO_PREFIX + "dead:{sub}"
ATTEMPT_LOG = FO_PREFIX + "log:{sub}"

SUBSCRIBERS = KEY_PREFIX + "subscribers"
# Bumped by every write to the registry, in the same transaction: a worker's cached copy is
# current exactly when its version is this one (the scripts that act on it check it).
SUBSCRIBERS_VERSION = KEY_PREFIX + "subscribers:version"

# Convergence (docs/processing.md "Convergence"): non-terminal payments by next check time (ms),
# and the payments still not terminal at the horizon, by when they were found stuck (capped).
CONVERGE = KEY_PREFIX + "converge"
STUCK = KEY_PREFIX + "stuck"

EVENT_DLQ_ENTRIES = KEY_PREFIX + "dlq:events"
EVENT_DLQ_INDEX = KEY_PREFIX + "dlq:events:index"

# History (docs/decisions/history.md): written by the processing job, off the ingestion path.
# A payment's timeline is kept in its state hash (PAYMENT_STATE): a header field and one short
# field per processing run of a hint ({n}: the run's number, base 36; service.store.history).
HISTORY_HEADER = "h"
HISTORY_RUN = "r{n}"
# The payments with a timeline, newest first seen first; capped and aged (their timeline fields
# leave their state hash with them).
HISTORY_PAYMENTS = KEY_PREFIX + "h:payments"
# Events processed in one minute ({minute}: epoch minutes), by source: the overview's rates.
HISTORY_RATE = KEY_PREFIX + "h:rate:{minute}"

# ---- job-id formats ----------------------------------------------------------------------------

EVENT_JOB_ID = "evt:{digest}"
EVENT_RETRY_JOB_ID = "{event_job_id}:r{attempt}"
EVENT_DLQ_RETRY_JOB_ID = "{event_job_id}:dlq{now_ms}"
DELIVER_JOB_ID = "fdl:{sub}:{tid}:{gen}"
# A subscriber's wake job (``fanout_wake``, docs/fanout.md "Isolation"): one per breaker cycle,
# ``at`` = the cycle's ``open_until``, so every delivery parked behind that open breaker ensures
# the same one job; or one per recheck of deliveries parked over the cap, ``at`` = its due time.
WAKE_JOB_ID = "fwk:{sub}:{at}"
# A convergence check of a payment: one per (payment, schedule start, step), so a check is
# enqueued once however many workers run converge_due.lua.
CONVERGE_JOB_ID = "cv:{payment_id}:{first}:{step}"
# The source of the hints convergence checks carry (never an inbound source's name).
CONVERGENCE_SOURCE = "convergence"
# A member of DEAD_ALL: which delivery is dead.
DEAD_MEMBER = "{sub}/{tid}"


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """One key (or family of keys) in Redis: its format, Redis type and lifetime."""

    pattern: str
    type: str
    ttl: str


KEY_PATTERNS: tuple[KeyPattern, ...] = (
    KeyPattern(QUEUE, "zset", "none"),
    KeyPattern(HEALTH_CHECK, "string", "health check interval + 1 s"),
    KeyPattern(ARQ_JOB, "string", "time until due + ARQ_EXPIRES_EXTRA_MS"),
    KeyPattern(ARQ_IN_PROGRESS, "string", "worker_lease_s, renewed while the job runs"),
    KeyPattern(ARQ_RETRY, "string", "88400 s (arq)"),
    KeyPattern(ARQ_RESULT, "string", "keep_result"),
    KeyPattern(EVENT, "hash", "max(dedupe_ttl_s, raw_ttl_s), from the payment's latest new event"),
    KeyPattern(UNROUTABLE, "list", "none (capped)"),
    KeyPattern(
        PAYMENT_STATE,
        "hash",
        "state_ttl_s; FINAL_STATE_TTL_S once final (history_ttl_s if history wrote it first)",
    ),
    KeyPattern(PAYMENT_LOCK, "string", "worker_lease_s, renewed while the fetch runs"),
    KeyPattern(PAYMENT_DIRTY, "string", "dirty_ttl_s"),
    KeyPattern(TRANSITIONS, "stream", "none (capped)"),
    KeyPattern(
        DELIVERY,
        "hash",
        "LINE_TTL_S while pending (deleted when done: a record), operator_ttl_s once dead",
    ),
    KeyPattern(
        SNAPSHOT, "hash", "LINE_TTL_S, operator_ttl_s once dead (deleted with its last reference)"
    ),
    KeyPattern(ORDER, "zset", "LINE_TTL_S (emptied as the line advances)"),
    KeyPattern(HEAD, "string", "LINE_TTL_S (deleted when the head finishes)"),
    KeyPattern(WAITING, "zset", "none"),
    KeyPattern(INFLIGHT, "zset", "none (members expire by score)"),
    KeyPattern(BREAKER, "hash", "none"),
    KeyPattern(DEAD_ALL, "zset", "none (entries older than operator_ttl_s trimmed)"),
    KeyPattern(DEAD, "zset", "none (entries older than operator_ttl_s trimmed)"),
    KeyPattern(ATTEMPT_LOG, "list", "none (capped)"),
    KeyPattern(SUBSCRIBERS, "hash", "none"),
    KeyPattern(SUBSCRIBERS_VERSION, "string", "none"),
    KeyPattern(CONVERGE, "zset", "none (a member per non-terminal payment)"),
    KeyPattern(STUCK, "zset", "none (capped: converge_stuck_max)"),
    KeyPattern(EVENT_DLQ_ENTRIES, "hash", "none (entries older than operator_ttl_s trimmed)"),
    KeyPattern(EVENT_DLQ_INDEX, "zset", "none (entries older than operator_ttl_s trimmed)"),
    KeyPattern(HISTORY_PAYMENTS, "list", "none (capped: history_index_max; aged: history_ttl_s)"),
    KeyPattern(HISTORY_RATE, "hash", "600 s"),
)


def fields(pattern: str) -> list[str]:
    """The ``{name}`` fields of a format, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]


def prefix(pattern: str) -> str:
    """The constant part of a format that is a prefix and one field at its end."""
    head, brace, tail = pattern.partition("{")
    if not brace or fields(pattern) != [tail[:-1]] or not tail.endswith("}"):
        raise ValueError(f"{pattern!r} is not a prefix followed by one field")
    return head


# ---- keys --------------------------------------------------------------------------------------


def arq_job_key(job_id: str) -> str:
    return ARQ_JOB.format(job_id=job_id)


def arq_in_progress_key(job_id: str) -> str:
    return ARQ_IN_PROGRESS.format(job_id=job_id)


def arq_retry_key(job_id: str) -> str:
    return ARQ_RETRY.format(job_id=job_id)


def arq_result_key(job_id: str) -> str:
    return ARQ_RESULT.format(job_id=job_id)


def health_check_key(queue: str) -> str:
    return HEALTH_CHECK.format(queue=queue)


def event_key(payment_id: str) -> str:
    """The hash of a payment's stored events (a field per event: :func:`event_field`)."""
    return EVENT.format(payment_id=payment_id)


def event_field(source: str, event_id: str) -> str:
    """An event's field in its payment's event hash: its dedupe marker, whose value is its
    (compressed) raw record. The digest's first 64 bits as a signed 64-bit integer, in the
    canonical decimal form Redis stores as an integer."""
    return EVENT_FIELD.format(number=digest_number(event_digest(source, event_id)))


def digest_number(digest: str) -> int:
    """The first :data:`EVENT_FIELD_CHARS` hex characters of ``digest`` as a signed 64-bit
    integer (two's complement)."""
    value = int(digest[:EVENT_FIELD_CHARS], 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def payment_state_key(payment_id: str) -> str:
    return PAYMENT_STATE.format(payment_id=payment_id)


def payment_lock_key(payment_id: str) -> str:
    return PAYMENT_LOCK.format(payment_id=payment_id)


def payment_dirty_key(payment_id: str) -> str:
    return PAYMENT_DIRTY.format(payment_id=payment_id)


def delivery_key(subscriber_id: str, transition_id: str) -> str:
    return DELIVERY.format(sub=subscriber_id, tid=transition_id)


def snapshot_key(transition_id: str) -> str:
    return SNAPSHOT.format(tid=transition_id)


def records_key(payment_id: str) -> str:
    """Where a payment's delivery records are kept: its state hash."""
    return payment_state_key(payment_id)


def record_field(subscriber_id: str, seq: int) -> str:
    return RECORD_FIELD.format(sub=subscriber_id, seq=seq)


def parse_record_field(name: str) -> tuple[str, int]:
    """(subscriber id, seq) of a record field (RECORD_FIELD)."""
    sub, _, seq = name.rpartition(RECORD_FIELD[len("{sub}") : -len("{seq}")])
    return sub, int(seq)


def order_key(subscriber_id: str, payment_id: str) -> str:
    return ORDER.format(sub=subscriber_id, payment_id=payment_id)


def head_key(subscriber_id: str, payment_id: str) -> str:
    return HEAD.format(sub=subscriber_id, payment_id=payment_id)


def waiting_key(subscriber_id: str) -> str:
    return WAITING.format(sub=subscriber_id)


def inflight_key(subscriber_id: str) -> str:
    return INFLIGHT.format(sub=subscriber_id)


def breaker_key(subscriber_id: str) -> str:
    return BREAKER.format(sub=subscriber_id)


def dead_key(subscriber_id: str) -> str:
    return DEAD.format(sub=subscriber_id)


def attempt_log_key(subscriber_id: str) -> str:
    return ATTEMPT_LOG.format(sub=subscriber_id)


def run_field(n: int) -> str:
    """The state hash field of a payment's run ``n`` (base 36, as history_record.lua names it)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        n, r = divmod(n, 36)
        text = digits[r] + text
        if n == 0:
            return HISTORY_RUN.format(n=text)


def history_rate_key(minute: int) -> str:
    return HISTORY_RATE.format(minute=minute)


# ---- job ids -----------------------------------------------------------------------------------


def event_job_id(source: str, event_id: str) -> str:
    """The arq job id of a stored event, the same for every copy of the event."""
    return EVENT_JOB_ID.format(digest=event_digest(source, event_id))


def hint_job_id(hint: EventHint) -> str:
    """The arq job id of the stored event ``hint`` stands for (:func:`event_job_id`)."""
    return event_job_id(hint.source, hint.event_id)


def event_retry_job_id(source: str, event_id: str, attempt: int) -> str:
    """The job id of processing's try number ``attempt`` + 1 of a stored event."""
    return EVENT_RETRY_JOB_ID.format(event_job_id=event_job_id(source, event_id), attempt=attempt)


def event_dlq_retry_job_id(event_job: str, now_ms: int) -> str:
    """The job id of a dead-lettered event queued again by an operator."""
    return EVENT_DLQ_RETRY_JOB_ID.format(event_job_id=event_job, now_ms=now_ms)


def deliver_job_id(subscriber_id: str, transition_id: str, gen: int) -> str:
    return DELIVER_JOB_ID.format(sub=subscriber_id, tid=transition_id, gen=gen)


def wake_job_id(subscriber_id: str, at_ms: int) -> str:
    """The wake job of ``subscriber_id`` for ``at_ms``: the ``open_until`` of a breaker cycle,
    or the due time of a recheck."""
    return WAKE_JOB_ID.format(sub=subscriber_id, at=at_ms)


def converge_job_id(payment_id: str, first_ms: int, step: int) -> str:
    return CONVERGE_JOB_ID.format(payment_id=payment_id, first=first_ms, step=step)


def parse_deliver_job_id(job_id: str) -> int:
    """The generation number at the end of a delivery job id (-1 when it has none)."""
    try:
        return int(job_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def dead_member(subscriber_id: str, transition_id: str) -> str:
    return DEAD_MEMBER.format(sub=subscriber_id, tid=transition_id)


def parse_dead_member(member: str) -> tuple[str, str] | None:
    """(subscriber id, webhook-id) of a member of DEAD_ALL; None when it is not one."""
    sub, sep, tid = member.partition(DEAD_MEMBER[len("{sub}") : -len("{tid}")])
    return (sub, tid) if sep else None


def deliver_job_target(job_id: str) -> tuple[str, str]:
    """(subscriber id, webhook-id) of a delivery job id."""
    parts = job_id.split(":")
    return parts[1], parts[2]


# ---- the same layout, for Lua ------------------------------------------------------------------

# The key and job-id formats Lua scripts derive themselves (keys discovered inside a script:
# docs/decisions/lua-keys.md), by the name of their Lua function.
LUA_KEY_FUNCTIONS: dict[str, str] = {
    "arq_job_key": ARQ_JOB,
    "deliver_job_id": DELIVER_JOB_ID,
    "wake_job_id": WAKE_JOB_ID,
    "dead_member": DEAD_MEMBER,
    "delivery_key": DELIVERY,
    "snapshot_key": SNAPSHOT,
    "records_key": PAYMENT_STATE,
    "record_field": RECORD_FIELD,
    "order_key": ORDER,
    "head_key": HEAD,
    "waiting_key": WAITING,
    "inflight_key": INFLIGHT,
    "breaker_key": BREAKER,
    "payment_state_key": PAYMENT_STATE,
    "converge_job_id": CONVERGE_JOB_ID,
}


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def lua_function(name: str, pattern: str) -> str:
    """A Lua function of the fields of ``pattern`` that returns the formatted string."""
    params = fields(pattern)
    parts = []
    for literal, field, _, _ in string.Formatter().parse(pattern):
        if literal:
            parts.append(lua_string(literal))
        if field is not None:
            parts.append(field)
    return f"local function {name}({', '.join(params)})\n  return {' .. '.join(parts)}\nend\n"


def lua_key_functions() -> str:
    """``lua/lib/keys.lua``: one Lua function per entry of :data:`LUA_KEY_FUNCTIONS`."""
    return "".join(lua_function(name, pattern) for name, pattern in LUA_KEY_FUNCTIONS.items())
