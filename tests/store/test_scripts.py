"""The one script runner: scripts load with their libraries and constants from the layout, run
by SHA with a reload after NOSCRIPT, and the generated Lua key functions give the Python keys."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio as aioredis

from service.store import layout
from service.store.jobs import arq_job_bytes
from service.store.scripts import LUA_DIR, Script, build_source, load_source

SCRIPTS = sorted(path.stem for path in LUA_DIR.glob("*.lua"))


def test_every_script_names_its_keys_argv_and_reply() -> None:
    """Each script file starts with a comment block that has KEYS, ARGV and Reply lines."""
    assert len(SCRIPTS) >= 9
    for name in SCRIPTS:
        head = (LUA_DIR / f"{name}.lua").read_text().split("\n\n", 1)[0]
        comments = [line for line in head.splitlines() if line.startswith("--")]
        text = "\n".join(comments)
        assert "-- KEYS:" in text and "-- ARGV:" in text and "-- Reply:" in text, name


@pytest.mark.parametrize("name", SCRIPTS)
async def test_every_script_compiles_on_redis(redis: aioredis.Redis, name: str) -> None:
    """Each script, with its libraries and constants filled in, is accepted by SCRIPT LOAD."""
    script = Script.load(name)
    assert "{{" not in script.source
    assert await redis.script_load(script.source) == script.sha


async def test_lua_key_functions_give_the_layout_keys(redis: aioredis.Redis) -> None:
    """lib/keys.lua, generated from the layout, builds the same keys and job ids as Python."""
    script = Script(
        build_source(
            "-- lib: keys\n"
            "return {delivery_key(ARGV[1], ARGV[2]), order_key(ARGV[1], ARGV[3]),"
            " head_key(ARGV[1], ARGV[3]), waiting_key(ARGV[1]), inflight_key(ARGV[1]),"
            " breaker_key(ARGV[1]), deliver_job_id(ARGV[1], ARGV[2], ARGV[4]),"
            " arq_job_key(ARGV[5]), dead_member(ARGV[1], ARGV[2])}"
        )
    )
    reply = await script(redis, [], ["sub-1", "msg_x", "pay_9", 3, "evt:abc"])
    assert [item.decode() for item in reply] == [
        layout.delivery_key("sub-1", "msg_x"),
        layout.order_key("sub-1", "pay_9"),
        layout.head_key("sub-1", "pay_9"),
        layout.waiting_key("sub-1"),
        layout.inflight_key("sub-1"),
        layout.breaker_key("sub-1"),
        layout.deliver_job_id("sub-1", "msg_x", 3),
        layout.arq_job_key("evt:abc"),
        layout.dead_member("sub-1", "msg_x"),
    ]
    assert layout.parse_dead_member(layout.dead_member("sub-1", "msg_x")) == ("sub-1", "msg_x")


async def test_lua_job_body_is_arq_job_bytes(redis: aioredis.Redis) -> None:
    """The delivery job body the Lua library writes is byte-equal to arq_job_bytes'."""
    script = Script(
        build_source(
            "-- lib: jobs\n"
            "return arq_job_body(FANOUT_DELIVER, '[' .. cjson.encode(ARGV[1]) .. ','"
            " .. cjson.encode(ARGV[2]) .. ']', tonumber(ARGV[3]))"
        )
    )
    body = await script(redis, [], ["sub-1", "msg_x", 1_700_000_000_123])
    expected = arq_job_bytes(layout.FANOUT_DELIVER, ["sub-1", "msg_x"], 1_700_000_000_123)
    assert body == expected
    assert orjson.loads(body)["f"] == layout.FANOUT_DELIVER


async def test_script_reloads_after_noscript(redis: aioredis.Redis) -> None:
    """A script run by SHA is loaded again after the script cache is flushed, and runs."""
    script = Script("return tonumber(ARGV[1]) + 1")
    assert await script(redis, [], [1]) == 2
    await redis.script_flush()
    assert await script(redis, [], [41]) == 42


def test_unknown_placeholder_is_refused() -> None:
    """A placeholder the layout does not define fails the load instead of reaching Redis."""
    with pytest.raises(KeyError):
        build_source("return {{NO_SUCH_CONSTANT}}")


def test_loaded_sources_hold_no_placeholders() -> None:
    """Every library a script names is found and every placeholder filled."""
    for name in SCRIPTS:
        assert "{{" not in load_source(name)
