"""The sweeper's visits: each bucket's pages whose time has come (a deadline or an expiry),
fired by ``fire_due.lua``; on a Redis Cluster every node at once, each its own buckets."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode

from presence.keys import BUCKETS
from presence.model import Change, ReplicasBehind, StoreUnavailable, SweepResult
from presence.store.errors import unavailable_as_store_error
from presence.store.nodes import Promotions, by_node, on_each_node
from presence.store.pages import Pages, changes_of
from presence.store.replication import ReplicaWait
from presence.store.scripts import Client, run_scripts

log = logging.getLogger("presence.store")

PARTIAL_SWEEP_LOG_SECONDS = 30.0
"""While a Redis Cluster node is down, sweeps skip it, saying so at most this often."""


@dataclass
class _Swept:
    """What sweeping some buckets did."""

    changes: list[Change] = field(default_factory=list)
    more: bool = False
    lag_ms: int = 0
    endpoints_expired: int = 0
    next_due_in_ms: int | None = None
    replicas_behind: int = 0


class Sweeps:
    """Sweeps of the pages of a store (see the module)."""

    def __init__(
        self, redis: Client, pages: Pages, wait: ReplicaWait | None, promotions: Promotions
    ) -> None:
        self.redis = redis
        self.pages = pages
        self.keys = pages.keys
        self.wait = wait
        self.promotions = promotions
        self._partial_logged = 0.0

    async def sweep(self, limit: int) -> SweepResult:
        """Visits about ``limit`` pages whose time has come, firing what is due in each."""
        # An even share per bucket: pages are spread evenly over the buckets.
        share = max(1, limit // BUCKETS)
        if isinstance(self.redis, RedisCluster):
            swept = await self._sweep_cluster(self.redis, share)
        else:
            async with unavailable_as_store_error():
                swept = [await self._sweep_buckets(range(BUCKETS), share)]
        soonest = [part.next_due_in_ms for part in swept if part.next_due_in_ms is not None]
        return SweepResult(
            [change for part in swept for change in part.changes],
            more=any(part.more for part in swept),
            lag_ms=max(part.lag_ms for part in swept),
            endpoints_expired=sum(part.endpoints_expired for part in swept),
            next_due_in_ms=min(soonest, default=None),
            replicas_behind=sum(part.replicas_behind for part in swept),
        )

    async def _sweep_buckets(
        self, buckets: Sequence[int], share: int, node: ClusterNode | None = None
    ) -> _Swept:
        """Sweeps ``buckets`` (on a Redis Cluster: those whose slots ``node`` serves)."""
        # Each node's own clock says what is due on it: fire_due.lua goes by the same clock to
        # decide whether a deadline has come, so a node whose clock lags another's can
        # neither have its deadlines skipped nor be asked again and again about early ones.
        now = await self.pages.now_ms(self.redis, node)
        # The first pages of each bucket by due time, one more than its share: those due are
        # visited, and the first one not due says when to come back.
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.zrange(self.keys.due_pages(bucket), 0, share, withscores=True)
            per_bucket: list[list[tuple[str, float]]] = await pipe.execute()
        due = [[(m, int(score)) for m, score in first if score <= now] for first in per_bucket]
        later = [int(score) for first in per_bucket for _, score in first if score > now]
        next_due_in = min(later) - now if later else None
        if not any(due):
            return _Swept(next_due_in_ms=next_due_in)
        # Another replica may visit the same pages meanwhile: fire_due.lua reads the due
        # time again inside its atomic step, so only the first visit fires anything.
        calls = [
            self.pages.fire_call(member, bucket)
            for bucket, found in zip(buckets, due, strict=True)
            for member, _ in found[:share]
        ]
        replies: list[list[str]] = []
        behind = 0
        for reply in await run_scripts(self.redis, calls, self.wait):
            if isinstance(reply, ReplicasBehind):
                # Fired and published already: counted, and kept (replication.py).
                behind += 1
                reply = reply.reply
            if isinstance(reply, Exception):
                raise reply
            replies.append(reply)
        done = [reply for reply in replies if reply[0] == "done"]
        oldest = min(score for found in due for _, score in found)
        return _Swept(
            [change for reply in done for change in changes_of(reply[2:])],
            more=any(len(found) > share for found in due),
            lag_ms=max(0, now - oldest),
            endpoints_expired=sum(int(reply[1]) for reply in done),
            next_due_in_ms=next_due_in,
            replicas_behind=behind,
        )

    async def _sweep_cluster(self, cluster: RedisCluster, share: int) -> list[_Swept]:
        """Sweeps every node of the cluster at once, each its own buckets. A node that is
        down does not hold up the others: only when none could be swept is it an error."""
        async with unavailable_as_store_error():
            await cluster.initialize()
            self.promotions.check(cluster)
            groups = by_node(cluster, [[self.keys.due_pages(bucket)] for bucket in range(BUCKETS)])

        async def sweep_node(node: ClusterNode, buckets: list[int]) -> _Swept:
            async with unavailable_as_store_error():
                return await self._sweep_buckets(buckets, share, node)

        swept: list[_Swept] = []
        failed: list[tuple[str, Exception]] = []
        for (node, _), outcome in zip(groups, await on_each_node(groups, sweep_node), strict=True):
            if isinstance(outcome, StoreUnavailable):
                failed.append((node.name, outcome))
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                swept.append(outcome)
        if failed and not swept:
            raise failed[0][1]
        if failed and time.monotonic() - self._partial_logged > PARTIAL_SWEEP_LOG_SECONDS:
            self._partial_logged = time.monotonic()
            for name, error in failed:
                log.warning("sweep: Redis Cluster node %s skipped: %s", name, error)
        return swept
