"""The Lua scripts: one per atomic operation, each registered once per client.

Every script receives all the keys it touches in KEYS, and those keys share one hash tag,
so each runs on a single Redis Cluster slot. ``reachability.lua`` and ``tick.lua`` are sent
with ``prelude.lua`` in front of them: the presence rules they share.
"""

from __future__ import annotations

from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (files("presence.store") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _with_prelude(name: str) -> str:
    return source("prelude") + "\n" + source(name)


class Scripts:
    """The scripts, registered on one client (loaded into Redis on first use, and again
    after a Redis restart has flushed its script cache)."""

    def __init__(self, redis: Redis) -> None:
        self.reachability: AsyncScript = redis.register_script(_with_prelude("reachability"))
        self.tick: AsyncScript = redis.register_script(_with_prelude("tick"))
        self.record: AsyncScript = redis.register_script(source("record"))
