"""The push subscriptions' store (``presence.store.push``), the same on a real Redis, the
embedded store and a Redis Cluster: at most 100 per service, created in order, changed,
rotated and deleted; one lease holder at a time, whose commits a former holder cannot make."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from presence.push.records import KEPT_ATTEMPTS, MAX_SUBSCRIPTIONS, Attempt, Subscription
from presence.store.push import SubscriptionStore, TooManySubscriptions
from presence.store.scripts import Client
from presence.twilio.samples import SERVICE_SID
from tests.support import make_store

OTHER_SID = "IS" + "1" * 32
LEASE_MS = 10_000


def new(
    subscription_id: str, created_at_ms: int = 0, service_sid: str = SERVICE_SID
) -> Subscription:
    return Subscription(
        id=subscription_id,
        service_sid=service_sid,
        url="https://receiver.example/presence?key=k",
        description=None,
        enabled=True,
        created_at_ms=created_at_ms,
        secret="whsec_first",
        cursor="cursor-0",
    )


async def acquire(
    subscriptions: SubscriptionStore, subscription_id: str, replica: str
) -> tuple[str, Subscription] | None:
    (taken,) = await subscriptions.acquire([(SERVICE_SID, subscription_id)], replica, LEASE_MS)
    assert not isinstance(taken, Exception)
    return taken


async def renew(
    subscriptions: SubscriptionStore, subscription_id: str, holder: str
) -> Subscription | None:
    (found,) = await subscriptions.renew([(SERVICE_SID, subscription_id, holder)], LEASE_MS)
    assert not isinstance(found, Exception)
    return found


def places(
    answers: Sequence[tuple[str, Subscription] | Subscription | Exception | None],
) -> list[tuple[str, str] | None]:
    """The subscription each answer is of (None: not taken, or not renewed)."""
    found: list[tuple[str, str] | None] = []
    for answer in answers:
        assert not isinstance(answer, Exception)
        subscription = answer[1] if isinstance(answer, tuple) else answer
        found.append(None if subscription is None else (subscription.service_sid, subscription.id))
    return found


@pytest.fixture
def subscriptions(backend: Client) -> SubscriptionStore:
    return make_store(backend, None).subscriptions


async def test_a_subscription_reads_back_as_created_and_services_keep_their_own(
    subscriptions: SubscriptionStore,
) -> None:
    for n in (3, 1, 2):
        await subscriptions.create(new(f"sub_{n}", created_at_ms=n))
    await subscriptions.create(new("sub_other", service_sid=OTHER_SID))

    assert await subscriptions.get(SERVICE_SID, "sub_1") == new("sub_1", created_at_ms=1)
    # Oldest first; each service its own.
    assert [s.id for s in await subscriptions.of_service(SERVICE_SID)] == [
        "sub_1",
        "sub_2",
        "sub_3",
    ]
    assert [s.id for s in await subscriptions.of_service(OTHER_SID)] == ["sub_other"]
    assert sorted(s.id for s in await subscriptions.every_subscription()) == [
        "sub_1",
        "sub_2",
        "sub_3",
        "sub_other",
    ]
    assert await subscriptions.get(SERVICE_SID, "sub_none") is None


async def test_a_service_has_at_most_its_limit(subscriptions: SubscriptionStore) -> None:
    for n in range(MAX_SUBSCRIPTIONS):
        await subscriptions.create(new(f"sub_{n:03}", created_at_ms=n))
    with pytest.raises(TooManySubscriptions):
        await subscriptions.create(new("sub_over"))
    assert await subscriptions.get(SERVICE_SID, "sub_over") is None
    await subscriptions.create(new("sub_elsewhere", service_sid=OTHER_SID))  # per service
    assert await subscriptions.delete(SERVICE_SID, "sub_000")
    await subscriptions.create(new("sub_again", created_at_ms=1000))
    assert len(await subscriptions.of_service(SERVICE_SID)) == MAX_SUBSCRIPTIONS


async def test_update_rotate_and_delete_say_when_there_is_nothing(
    subscriptions: SubscriptionStore,
) -> None:
    await subscriptions.create(new("sub_1"))
    updated = await subscriptions.update(SERVICE_SID, "sub_1", {"url": "https://b.example/"})
    assert updated is not None
    assert updated.url == "https://b.example/"
    rotated = await subscriptions.rotate(SERVICE_SID, "sub_1", "whsec_second", 5_000)
    assert rotated is not None
    assert rotated.secrets_at(4_999) == ["whsec_second", "whsec_first"]
    assert rotated.secrets_at(5_000) == ["whsec_second"]
    # A second rotation drops the oldest: at most two sign.
    again = await subscriptions.rotate(SERVICE_SID, "sub_1", "whsec_third", 5_000)
    assert again is not None
    assert again.secrets_at(0) == ["whsec_third", "whsec_second"]

    assert await subscriptions.delete(SERVICE_SID, "sub_1")
    assert not await subscriptions.delete(SERVICE_SID, "sub_1")
    assert await subscriptions.update(SERVICE_SID, "sub_1", {"url": "https://c.example/"}) is None
    assert await subscriptions.rotate(SERVICE_SID, "sub_1", "whsec_x", 0) is None
    assert await subscriptions.get(SERVICE_SID, "sub_1") is None


async def test_one_holder_at_a_time_and_a_former_one_cannot_commit(
    subscriptions: SubscriptionStore,
) -> None:
    await subscriptions.create(new("sub_1"))
    taken = await acquire(subscriptions, "sub_1", "replica-a")
    assert taken is not None
    first, found = taken
    assert first.startswith("replica-a:")
    assert found.cursor == "cursor-0"
    assert await acquire(subscriptions, "sub_1", "replica-b") is None
    assert await subscriptions.commit(SERVICE_SID, "sub_1", first, {"cursor": "cursor-1"})
    assert await renew(subscriptions, "sub_1", first) is not None

    # Given back, the lease goes to another, with a newer fencing token.
    await subscriptions.release(SERVICE_SID, "sub_1", first)
    taken = await acquire(subscriptions, "sub_1", "replica-b")
    assert taken is not None
    second, found = taken
    assert second != first
    assert found.cursor == "cursor-1"
    # The former holder: not renewed, its commit refused, its release a no-op.
    assert await renew(subscriptions, "sub_1", first) is None
    assert not await subscriptions.commit(SERVICE_SID, "sub_1", first, {"cursor": "cursor-0"})
    await subscriptions.release(SERVICE_SID, "sub_1", first)
    assert await acquire(subscriptions, "sub_1", "replica-a") is None
    found_now = await subscriptions.get(SERVICE_SID, "sub_1")
    assert found_now is not None
    assert found_now.cursor == "cursor-1"


async def test_leases_taken_and_renewed_together_answer_each_in_its_place(
    subscriptions: SubscriptionStore,
) -> None:
    # Two services (two slots; on a Cluster, two nodes as likely as one), one lease held by
    # another replica: each answer is the one of the lease in its place.
    for sid in (SERVICE_SID, OTHER_SID):
        for n in (1, 2):
            await subscriptions.create(new(f"sub_{n}", service_sid=sid))
    assert await acquire(subscriptions, "sub_2", "replica-b") is not None
    wanted = [(OTHER_SID, "sub_1"), (SERVICE_SID, "sub_2"), (SERVICE_SID, "sub_1"),
              (OTHER_SID, "sub_2"), (SERVICE_SID, "sub_none")]  # fmt: skip
    taken = await subscriptions.acquire(wanted, "replica-a", LEASE_MS)
    assert places(taken) == [
        (OTHER_SID, "sub_1"), None, (SERVICE_SID, "sub_1"), (OTHER_SID, "sub_2"), None,
    ]  # fmt: skip
    holders = {key: t[0] for key, t in zip(wanted, taken, strict=True) if isinstance(t, tuple)}

    await subscriptions.update(OTHER_SID, "sub_2", {"enabled": "0"})
    await subscriptions.update(SERVICE_SID, "sub_1", {"url": "https://moved.example/"})
    leases = [(sid, sub, holder) for (sid, sub), holder in holders.items()]
    leases.append((SERVICE_SID, "sub_2", holders[OTHER_SID, "sub_1"]))  # not its holder
    renewed = await subscriptions.renew(leases, LEASE_MS)
    assert places(renewed) == [
        (OTHER_SID, "sub_1"), (SERVICE_SID, "sub_1"), None, None,
    ]  # fmt: skip
    assert isinstance(renewed[1], Subscription)
    assert renewed[1].url == "https://moved.example/"
    assert await subscriptions.renew([], LEASE_MS) == []


async def test_a_disabled_or_deleted_subscription_loses_its_lease_at_renewal(
    subscriptions: SubscriptionStore,
) -> None:
    await subscriptions.create(new("sub_1"))
    taken = await acquire(subscriptions, "sub_1", "replica-a")
    assert taken is not None
    await subscriptions.update(SERVICE_SID, "sub_1", {"enabled": "0"})
    assert await renew(subscriptions, "sub_1", taken[0]) is None
    assert await acquire(subscriptions, "sub_1", "replica-b") is None

    await subscriptions.update(SERVICE_SID, "sub_1", {"enabled": "1"})
    taken = await acquire(subscriptions, "sub_1", "replica-b")
    assert taken is not None
    assert await subscriptions.delete(SERVICE_SID, "sub_1")
    assert await renew(subscriptions, "sub_1", taken[0]) is None
    assert not await subscriptions.commit(SERVICE_SID, "sub_1", taken[0], {"cursor": "x"})
    assert await subscriptions.get(SERVICE_SID, "sub_1") is None  # not brought back


async def test_the_last_attempts_are_kept_newest_first(subscriptions: SubscriptionStore) -> None:
    await subscriptions.create(new("sub_1"))
    taken = await acquire(subscriptions, "sub_1", "replica-a")
    assert taken is not None
    made = [Attempt(n, f"msg_{n}", 500, None, 3) for n in range(KEPT_ATTEMPTS + 7)]
    for batch in (made[:20], made[20:]):
        assert await subscriptions.commit(SERVICE_SID, "sub_1", taken[0], {}, batch)
    kept = await subscriptions.attempts(SERVICE_SID, "sub_1")
    assert kept == list(reversed(made))[:KEPT_ATTEMPTS]
    assert await subscriptions.delete(SERVICE_SID, "sub_1")
    assert await subscriptions.attempts(SERVICE_SID, "sub_1") == []


async def test_replicas_count_while_alive(subscriptions: SubscriptionStore) -> None:
    assert await subscriptions.live_replicas("a", until_ms=2_000, now_ms=1_000) == 1
    assert await subscriptions.live_replicas("b", until_ms=2_500, now_ms=1_000) == 2
    # a's time ran out; b left.
    assert await subscriptions.live_replicas("c", until_ms=9_000, now_ms=2_100) == 2
    await subscriptions.leave("b")
    assert await subscriptions.live_replicas("c", until_ms=9_000, now_ms=2_100) == 1
