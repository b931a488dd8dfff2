"""Push subscriptions in Redis, shared by every replica: each one a hash, every key of one
service's in one hash slot (so each operation is one script, on a Redis Cluster too); a
lease per subscription says which replica delivers it, with a fencing token its commits must
carry. The keys are in ``presence.keys``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from presence.keys import Keyspace
from presence.push.records import KEPT_ATTEMPTS, MAX_SUBSCRIPTIONS, Attempt, Subscription
from presence.store.errors import as_store_error, unavailable_as_store_error
from presence.store.scripts import Client, ScriptCall, Scripts, run_scripts


class TooManySubscriptions(Exception):
    """The service has ``MAX_SUBSCRIPTIONS`` already."""


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


class SubscriptionStore:
    """The push subscriptions of every service (see the module)."""

    def __init__(self, redis: Client, keys: Keyspace, scripts: Scripts) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    async def _one(self, call: ScriptCall) -> Any:
        async with unavailable_as_store_error():
            (reply,) = await run_scripts(self.redis, [call])
        if isinstance(reply, Exception):
            raise reply
        return reply

    @staticmethod
    def _record(subscription_id: str, flat: Sequence[Any]) -> Subscription:
        return Subscription.from_fields(subscription_id, _pairs(flat))

    # -- what the API does -----------------------------------------------------------------

    async def create(self, subscription: Subscription) -> None:
        """Raises ``TooManySubscriptions``."""
        sid, keys = subscription.service_sid, self.keys
        # Known to every replica's discovery before it exists (an entry for a service with
        # none left costs a look, nothing more).
        async with unavailable_as_store_error():
            await self.redis.sadd(keys.push_services, sid)
        fields = [item for pair in subscription.fields().items() for item in pair]
        outcome = await self._one(
            ScriptCall(
                self.scripts.push_create,
                [keys.push_ids(sid), keys.push_subscription(sid, subscription.id)],
                [subscription.id, subscription.created_at_ms, MAX_SUBSCRIPTIONS, *fields],
            )
        )
        if outcome == "too_many":
            raise TooManySubscriptions(f"a service has at most {MAX_SUBSCRIPTIONS} subscriptions")

    async def get(self, service_sid: str, subscription_id: str) -> Subscription | None:
        key = self.keys.push_subscription(service_sid, subscription_id)
        async with unavailable_as_store_error():
            found: dict[str, str] = await self.redis.hgetall(key)  # type: ignore[assignment]
        return Subscription.from_fields(subscription_id, found) if found else None

    async def of_service(self, service_sid: str) -> list[Subscription]:
        """The service's subscriptions, oldest first."""
        return (await self._of_services([service_sid]))[service_sid]

    async def _of_services(self, services: Sequence[str]) -> dict[str, list[Subscription]]:
        """Each service's subscriptions, oldest first: in two round trips, however many there
        are (a replica's every turn reads them all, on an event loop that may be busy)."""
        async with unavailable_as_store_error():
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in services:
                    pipe.zrange(self.keys.push_ids(sid), 0, -1)
                listed: list[list[str]] = await pipe.execute() if services else []
            wanted = [(sid, str(i)) for sid, ids in zip(services, listed, strict=True) for i in ids]
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid, sub in wanted:
                    pipe.hgetall(self.keys.push_subscription(sid, sub))
                records: list[dict[str, str]] = await pipe.execute() if wanted else []
        found: dict[str, list[Subscription]] = {sid: [] for sid in services}
        for (sid, sub), fields in zip(wanted, records, strict=True):
            if fields:  # deleted between the two reads
                found[sid].append(Subscription.from_fields(sub, fields))
        return found

    async def update(
        self, service_sid: str, subscription_id: str, fields: dict[str, str]
    ) -> Subscription | None:
        """Sets fields of a subscription (None: it does not exist)."""
        flat = await self._one(
            ScriptCall(
                self.scripts.push_update,
                [self.keys.push_subscription(service_sid, subscription_id)],
                [item for pair in fields.items() for item in pair],
            )
        )
        return self._record(subscription_id, flat) if flat else None

    async def rotate(
        self, service_sid: str, subscription_id: str, secret: str, previous_until_ms: int
    ) -> Subscription | None:
        flat = await self._one(
            ScriptCall(
                self.scripts.push_rotate,
                [self.keys.push_subscription(service_sid, subscription_id)],
                [secret, previous_until_ms],
            )
        )
        return self._record(subscription_id, flat) if flat else None

    async def delete(self, service_sid: str, subscription_id: str) -> bool:
        keys, sid, sub = self.keys, service_sid, subscription_id
        existed = await self._one(
            ScriptCall(
                self.scripts.push_delete,
                [
                    keys.push_ids(sid),
                    keys.push_subscription(sid, sub),
                    keys.push_lease(sid, sub),
                    keys.push_fence(sid, sub),
                    keys.push_attempts(sid, sub),
                ],
                [sub],
            )
        )
        return bool(existed)

    async def attempts(self, service_sid: str, subscription_id: str) -> list[Attempt]:
        """The last attempts, newest first."""
        async with unavailable_as_store_error():
            found = await self.redis.lrange(
                self.keys.push_attempts(service_sid, subscription_id), 0, KEPT_ATTEMPTS - 1
            )
        return [Attempt.from_json(str(text)) for text in found]

    async def time_ms(self) -> int:
        """Redis' own time (any node's, on a Cluster): what lags are measured by."""
        async with unavailable_as_store_error():
            seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- what the deliverers do ------------------------------------------------------------

    async def every_subscription(self) -> list[Subscription]:
        """Every service's subscriptions (for the replicas to share them out)."""
        async with unavailable_as_store_error():
            services = sorted(await self.redis.smembers(self.keys.push_services))
        found = await self._of_services([str(sid) for sid in services])
        return [subscription for sid in found for subscription in found[sid]]

    async def live_replicas(self, replica: str, until_ms: int, now_ms: int) -> int:
        """Says this replica is alive until ``until_ms``; how many are alive now."""
        key = self.keys.push_replicas
        async with unavailable_as_store_error(), self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {replica: until_ms})
            pipe.zremrangebyscore(key, "-inf", now_ms)
            pipe.zcard(key)
            replies = await pipe.execute()
        return int(replies[-1])

    async def leave(self, replica: str) -> None:
        """This replica is no longer alive (it stops)."""
        async with unavailable_as_store_error():
            await self.redis.zrem(self.keys.push_replicas, replica)

    async def acquire(
        self, leases: Sequence[tuple[str, str]], replica: str, lease_ms: int
    ) -> list[tuple[str, Subscription] | Exception | None]:
        """For each (ServiceSid, subscription id), its lease for ``replica``: the holder name
        ("<replica>:<token>") and the subscription; None when another holds it, or it is
        disabled or gone; the error (``StoreUnavailable`` for "not now") of one that could
        not be asked. In one round trip per node, however many."""
        keys = self.keys
        calls = [
            ScriptCall(
                self.scripts.push_acquire,
                [
                    keys.push_subscription(sid, sub),
                    keys.push_lease(sid, sub),
                    keys.push_fence(sid, sub),
                ],
                [replica, lease_ms],
            )
            for sid, sub in leases
        ]
        found: list[tuple[str, Subscription] | Exception | None] = []
        for (_, sub), reply in zip(leases, await self._many(calls), strict=True):
            if isinstance(reply, Exception) or not reply:
                found.append(reply or None)
            else:
                found.append((f"{replica}:{reply[0]}", self._record(sub, reply[1:])))
        return found

    async def renew(
        self, leases: Sequence[tuple[str, str, str]], lease_ms: int
    ) -> list[Subscription | Exception | None]:
        """For each (ServiceSid, subscription id, holder), the lease kept and the subscription
        as it is now; None when the lease is lost (or the subscription disabled or gone); the
        error of one that could not be asked. In one round trip per node, however many."""
        keys = self.keys
        calls = [
            ScriptCall(
                self.scripts.push_renew,
                [keys.push_subscription(sid, sub), keys.push_lease(sid, sub)],
                [holder, lease_ms],
            )
            for sid, sub, holder in leases
        ]
        return [
            reply if isinstance(reply, Exception) else self._record(sub, reply) if reply else None
            for (_, sub, _), reply in zip(leases, await self._many(calls), strict=True)
        ]

    async def _many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Each call's reply, or its error as the store says it."""
        async with unavailable_as_store_error():
            replies = await run_scripts(self.redis, calls)
        return [as_store_error(r) if isinstance(r, Exception) else r for r in replies]

    async def release(self, service_sid: str, subscription_id: str, holder: str) -> None:
        await self._one(
            ScriptCall(
                self.scripts.push_release,
                [self.keys.push_lease(service_sid, subscription_id)],
                [holder],
            )
        )

    async def commit(
        self,
        service_sid: str,
        subscription_id: str,
        holder: str,
        fields: dict[str, str],
        attempts: Sequence[Attempt] = (),
    ) -> bool:
        """Writes what the holder delivered; False when it no longer holds the lease."""
        keys, sid, sub = self.keys, service_sid, subscription_id
        outcome = await self._one(
            ScriptCall(
                self.scripts.push_commit,
                [
                    keys.push_subscription(sid, sub),
                    keys.push_lease(sid, sub),
                    keys.push_attempts(sid, sub),
                ],
                [
                    holder,
                    len(fields),
                    *(item for pair in fields.items() for item in pair),
                    *(attempt.to_json() for attempt in attempts),
                ],
            )
        )
        return bool(outcome == "ok")
