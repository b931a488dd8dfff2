"""Waiting for replicas (``PRESENCE_REDIS_WAIT_REPLICAS``): after a batch of writes, Redis
``WAIT`` on the connection that made them, until that many replicas hold them.

Redis answers WAIT once the replicas hold the connection's offset. From Redis 7.2 on (and in
Valkey) that offset moves only when the connection's command propagated a write (7.0 moves it
on any command). A script that answers duplicate or stale writes nothing, yet its answer
rests on a state that another connection (another replica of the service, Twilio's first
delivery) may have written a moment ago and no replica holds yet. So each batch writes a
barrier first, a SET of the
``w`` key of the bucket of one of its calls (on a Redis Cluster, on that node): the barrier
comes after everything the node had run when the batch ran, and the WAIT behind it covers
every state the batch's replies were read from.

When fewer replicas confirm in time, every call of the batch fails with ``ReplicasBehind``
(a 503): the writes stay on the master (and reach the replicas later, or are lost in a
failover), and Twilio's retry is answered duplicate or stale, after a WAIT of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.keys import barrier_beside
from presence.model import ReplicasBehind

Command = tuple[str | int, ...]


@dataclass(frozen=True)
class ReplicaWait:
    """How many replicas must hold a batch's writes, and how long to wait for them."""

    replicas: int
    timeout_ms: int

    def commands(self, keys: Sequence[Sequence[str]]) -> list[Command]:
        """The barrier and WAIT that follow a batch of calls with these KEYS (all on one
        Redis, or one node of a Redis Cluster)."""
        barrier = next((b for call in keys if call and (b := barrier_beside(call[0]))), None)
        # Calls without keys (a collection event without a token) store nothing: nothing
        # they read needs waiting for, and there is no key to place a barrier by.
        first: Command = ("SET", barrier, "1") if barrier is not None else ("PING",)
        return [first, ("WAIT", self.replicas, self.timeout_ms)]

    def settle(self, replies: list[Any]) -> list[Any]:
        """The replies of the batch's calls, from those of the batch plus ``commands``: each
        one that is not an error replaced by ``ReplicasBehind`` when WAIT fell short."""
        *calls, barrier, confirmed = replies
        if isinstance(barrier, Exception):
            problem = f"the barrier before WAIT failed: {barrier}"
        elif isinstance(confirmed, Exception):
            problem = f"WAIT failed: {confirmed}"
        elif int(confirmed) < self.replicas:
            problem = (
                f"{confirmed} of {self.replicas} replicas confirmed the write within "
                f"{self.timeout_ms} ms"
            )
        else:
            return calls
        return [
            reply if isinstance(reply, Exception) else ReplicasBehind(problem, reply)
            for reply in calls
        ]
