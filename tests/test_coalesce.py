"""Coalesced writes: calls made together share a pipeline, run in order, and each caller gets
its own reply, on a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from harness.processes import RedisServer
from presence.events import ReachabilityEvent, parse_event
from presence.store import resp
from presence.store.coalesce import EAGER_BATCH, Coalescer
from presence.store.scripts import Script, ScriptCall
from presence.twilio.samples import reachability
from tests.support import make_store

APPEND = """
if ARGV[1] == 'fail' then
  return redis.error_reply('refused ' .. ARGV[1])
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return redis.call('LLEN', KEYS[1])
"""


class CountingCoalescer(Coalescer):
    """Records the size of each pipeline it sends (each is one round trip)."""

    def __init__(self, redis: Redis, **options: Any) -> None:
        super().__init__(redis, **options)
        self.pipelines: list[int] = []
        self.sending = asyncio.Event()

    def _dispatched(self, batch: Any) -> None:
        self.pipelines.append(len(batch))
        self.sending.set()


@pytest.fixture
async def append(redis: Redis) -> Script:
    await redis.script_load(APPEND)
    return Script(APPEND)


async def test_calls_made_together_share_one_round_trip_and_keep_their_order(
    redis: Redis, append: Script
) -> None:
    writes = CountingCoalescer(redis)
    replies = await asyncio.gather(*(writes.call(append, ["log"], [str(n)]) for n in range(300)))
    assert writes.pipelines == [300]
    # Each caller got its own reply: its position in the list, in the order of the calls.
    assert replies == list(range(1, 301))
    assert await redis.lrange("log", 0, -1) == [str(n) for n in range(300)]


async def test_a_batch_is_bounded_and_the_rest_follows_in_order(
    redis: Redis, append: Script
) -> None:
    writes = CountingCoalescer(redis, max_batch=10)
    replies = await asyncio.gather(*(writes.call(append, ["log"], [str(n)]) for n in range(35)))
    assert writes.pipelines == [10, 10, 10, 5]
    assert replies == list(range(1, 36))


async def test_calls_made_while_a_batch_is_in_flight_form_the_next_one(
    redis: Redis, append: Script
) -> None:
    writes = CountingCoalescer(redis)
    first = asyncio.create_task(writes.call(append, ["log"], ["first"]))
    await writes.sending.wait()
    later = [asyncio.create_task(writes.call(append, ["log"], [str(n)])) for n in range(20)]
    assert await first == 1
    assert [await task for task in later] == list(range(2, 22))
    # EAGER_BATCH of them went at once, while the rest were being made; the rest followed.
    assert writes.pipelines == [1, EAGER_BATCH, 20 - EAGER_BATCH]


async def test_calls_made_together_go_in_eager_batches_while_they_are_made(
    redis: Redis, append: Script
) -> None:
    """Redis runs the first calls of a burst while the service makes the rest: a burst is
    not all made first, then all sent to wait together (the service idle meanwhile)."""
    writes = CountingCoalescer(redis)
    assert await writes.call(append, ["log"], ["first"]) == 1  # the connection is up
    burst = [asyncio.ensure_future(writes.call(append, ["log"], [str(n)])) for n in range(40)]
    await asyncio.sleep(0)  # the 40 calls are made, in this one iteration of the loop
    # Two eager batches were written while they were made; the sender has the rest.
    assert writes.pipelines == [1, EAGER_BATCH, EAGER_BATCH]
    assert await asyncio.gather(*burst) == list(range(2, 42))
    assert writes.pipelines == [1, EAGER_BATCH, EAGER_BATCH, 40 - 2 * EAGER_BATCH]
    assert await redis.lrange("log", 0, -1) == ["first", *(str(n) for n in range(40))]


async def test_no_eager_batch_goes_ahead_of_a_batch_the_sender_took(
    redis: Redis, append: Script
) -> None:
    writes = CountingCoalescer(redis)
    assert await writes.call(append, ["log"], ["first"]) == 1
    pipe = writes._pipe
    assert pipe is not None
    entered, gate = asyncio.Event(), asyncio.Event()
    ready = pipe.ready

    async def held_ready() -> None:
        # The sender has taken its batch and waits here (as for a reconnection).
        entered.set()
        await gate.wait()
        await ready()

    pipe.ready = held_ready  # type: ignore[method-assign]
    taken = [asyncio.ensure_future(writes.call(append, ["log"], [f"t{n}"])) for n in range(5)]
    await asyncio.wait_for(entered.wait(), 10)
    later = [asyncio.ensure_future(writes.call(append, ["log"], [str(n)])) for n in range(20)]
    await asyncio.sleep(0)  # the 20 calls are made: more than an eager batch
    assert writes.pipelines == [1]  # nothing went ahead of the batch taken
    gate.set()
    await asyncio.gather(*taken, *later)
    assert writes.pipelines[:2] == [1, 5]
    assert await redis.lrange("log", 0, -1) == [
        "first",
        *(f"t{n}" for n in range(5)),
        *(str(n) for n in range(20)),
    ]


async def test_an_error_reaches_only_its_own_caller(redis: Redis, append: Script) -> None:
    writes = Coalescer(redis)
    results = await asyncio.gather(
        writes.call(append, ["log"], ["a"]),
        writes.call(append, ["log"], ["fail"]),
        writes.call(append, ["log"], ["b"]),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], ResponseError)
    assert "refused fail" in str(results[1])
    assert results[2] == 2


async def test_scripts_forgotten_by_redis_are_loaded_again(redis: Redis, append: Script) -> None:
    writes = Coalescer(redis)
    assert await writes.call(append, ["log"], ["before"]) == 1
    await redis.script_flush()
    replies = await asyncio.gather(*(writes.call(append, ["log"], [str(n)]) for n in range(5)))
    # Refused with NOSCRIPT, loaded, run once: no call lost, none run twice.
    assert replies == [2, 3, 4, 5, 6]
    assert await redis.llen("log") == 6


async def test_a_cancelled_caller_does_not_tear_its_batch(redis: Redis, append: Script) -> None:
    writes = Coalescer(redis)
    tasks = [asyncio.create_task(writes.call(append, ["log"], [str(n)])) for n in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    assert await tasks[0] == 1
    assert await tasks[2] == 3
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    # Queued before it was cancelled, the script ran: a webhook is applied whole or not at all.
    assert await redis.lrange("log", 0, -1) == ["0", "1", "2"]


async def test_every_caller_of_a_batch_learns_that_redis_is_away(
    private_redis: RedisServer,
) -> None:
    client = Redis.from_url(private_redis.url, decode_responses=True)
    script = Script(APPEND)
    writes = Coalescer(client)
    try:
        assert await writes.call(script, ["log"], ["up"]) == 1
        private_redis.stop()
        results = await asyncio.gather(
            *(writes.call(script, ["log"], [str(n)]) for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, RedisConnectionError) for result in results)
        private_redis.start()
        assert await writes.call(script, ["log"], ["back"]) == 2
    finally:
        await client.aclose()


async def test_one_identitys_webhooks_arriving_together_apply_in_order(redis: Redis) -> None:
    store = make_store(redis, None)
    events: list[ReachabilityEvent] = []
    for event_id in range(1, 201):
        connected = event_id % 2 == 1
        params = reachability("alice", "E1", event_id, connected, connected=connected)
        event = parse_event(params.items())
        assert isinstance(event, ReachabilityEvent)
        events.append(event)
    results = await asyncio.gather(*(store.apply_reachability(event) for event in events))
    # Out of order, some would be stale; in order, every one applies.
    assert {result.outcome.value for result in results} == {"applied"}
    presence = await store.identity(events[0].service_sid, "alice")
    assert presence.last_event_id == 200


async def test_many_calls_of_one_caller_share_a_round_trip_with_their_errors_in_place(
    redis: Redis, append: Script
) -> None:
    """How a lookup's reads go (one call per bucket): every reply, or the error it met, in
    order, and one round trip for all."""
    writes = CountingCoalescer(redis)
    calls = [ScriptCall(append, ["log"], ["fail" if n % 3 == 1 else str(n)]) for n in range(9)]

    replies = await writes.call_many(calls)

    assert writes.pipelines == [9]
    assert [r if isinstance(r, int) else type(r).__name__ for r in replies] == [
        1, "ResponseError", 2, 3, "ResponseError", 4, 5, "ResponseError", 6
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("identity", "endpoint"),
    [
        ("alice", "3f2a9c1e-5b7d-4e21-9a0c-8d6f4b2e1a37"),
        ("élodie@example.com", "E1"),
        ("名前", "endpoint with spaces and ünïcode"),
        ("x" * 300, "y" * 300),
    ],
)
def test_a_webhooks_call_is_packed_as_its_command_would_be(identity: str, endpoint: str) -> None:
    """The calls of the webhooks are packed from parts kept per page: byte for byte the
    command their keys and arguments make, the second call of a page as the first."""
    store = make_store(Redis(), None)
    for event_id in (1, 2):
        params = reachability(identity, endpoint, event_id, True, connected=event_id == 1)
        event = parse_event(params.items())
        assert isinstance(event, ReachabilityEvent)
        call = store.pages.event_call(event)
        assert call.packed == resp.pack(call.script.command(call.keys, call.args))


async def test_a_webhook_is_sent_to_redis_packed_as_its_page_made_it(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook's call reaches Redis as ``event_call`` packed it: nothing is packed again on
    the way, and Redis applies it."""
    store = make_store(redis, None)
    events = []
    for event_id in (1, 2):
        params = reachability("alice", "E1", event_id, True, connected=event_id == 1)
        event = parse_event(params.items())
        assert isinstance(event, ReachabilityEvent)
        events.append(event)
    await store.apply_reachability(events[0])  # the library loaded, the store prepared
    packed: list[Sequence[Any]] = []
    real_pack = resp.pack

    def counting_pack(args: Sequence[Any]) -> bytes:
        packed.append(args)
        return real_pack(args)

    monkeypatch.setattr(resp, "pack", counting_pack)
    result = await store.apply_reachability(events[1])
    assert result.outcome.value == "applied"
    assert packed == []
    presence = await store.identity(events[1].service_sid, "alice")
    assert presence.last_event_id == 2


async def test_no_eager_batch_goes_ahead_when_a_recovery_releases_the_sender(
    redis: Redis, append: Script
) -> None:
    """A recovery's lock, released, wakes the sender with the batch it took: calls made
    before it resumes must not be written ahead of that batch."""
    writes = CountingCoalescer(redis)
    assert await writes.call(append, ["log"], ["first"]) == 1
    await writes._recovering.acquire()  # as _settle does while it loads scripts again
    taken = [asyncio.ensure_future(writes.call(append, ["log"], [f"t{n}"])) for n in range(5)]
    for _ in range(100):  # until the sender has taken the 5 calls and waits for the lock
        if writes._holding:
            break
        await asyncio.sleep(0)
    assert writes._holding
    later = [asyncio.ensure_future(writes.call(append, ["log"], [str(n)])) for n in range(20)]
    writes._recovering.release()
    await asyncio.sleep(0)  # the 20 calls are made before the sender resumes
    await asyncio.gather(*taken, *later)
    assert writes.pipelines[:2] == [1, 5]
    assert await redis.lrange("log", 0, -1) == [
        "first",
        *(f"t{n}" for n in range(5)),
        *(str(n) for n in range(20)),
    ]
