"""Coalesced writes: script calls made together share one Redis round trip.

Webhooks that arrive together each need one Lua script. Sent one by one, every script is a
round trip, with the Python overhead of a command each; here the calls made while the
previous batch is on its way are gathered and sent as one pipeline. A batch is flushed on
the next event-loop tick after the first call, or as soon as the one before it returns.

Only one batch is in flight at a time, so calls run in Redis in the order they were made:
two webhooks of one identity are applied in their order of arrival. On a Redis Cluster the
batch is split by node, each node getting its part in order, and a node that is down fails
only the calls it serves.
Each caller is answered once its own script has run, with its own reply or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.commands.core import AsyncScript

from presence.store.scripts import Client, ScriptCall, run_scripts

MAX_BATCH = 512
"""Calls per pipeline at most: beyond this, a batch would hold its first caller too long."""


@dataclass
class _Call:
    """A queued script call, and the future its caller awaits."""

    script: ScriptCall
    reply: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Coalescer:
    """Runs script calls on ``redis`` in pipelines of the calls made together."""

    def __init__(self, redis: Client, *, max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        """Runs ``script`` with ``keys`` and ``args``; returns its reply or raises its error."""
        call = _Call(ScriptCall(script, keys, args))
        self._pending.append(call)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="presence-coalescer")
        # Shielded: once queued, the script runs whatever happens to this caller, so the
        # batch it shares with others is never torn.
        return await asyncio.shield(call.reply)

    async def _send_all(self) -> None:
        try:
            # One tick's grace, so that the calls made in the same tick share the first batch.
            await asyncio.sleep(0)
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._send(batch)
        except BaseException:
            # Cancelled (the loop is closing): nothing will send what is left.
            for call in self._pending:
                call.reply.cancel()
            self._pending.clear()
            raise
        finally:
            self._sender = None

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._run(batch)
        except Exception as error:
            for call in batch:
                call.reply.set_exception(error)
            return
        except BaseException:
            for call in batch:
                call.reply.cancel()
            raise
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _run(self, batch: Sequence[_Call]) -> list[Any]:
        # One pipeline (one per node of a Redis Cluster); scripts a restarted Redis has
        # forgotten are loaded and their calls, which did not run, made again.
        return await run_scripts(self.redis, [call.script for call in batch])
