"""Row ``redis``: Redis time per webhook, this release's ``apply_event`` against the previous
release's script, on the same stream of webhooks in the same run.

The previous release's script is the rules and ``apply_event.lua`` as of commit 05b5c3f (the
commit before the version became 0.2.0; its feed already numbers each change), vendored in
``bench/previous/`` as it was, so that a clean checkout runs it. It is sent as that release
sent it: the rule files in front of the operation, by EVALSHA.

One fresh redis-server holds both: the previous script writes in database 1, this release's
store in database 0, under the same key names, so both see pages of the same shape. The
stream is the ingest row's (``bench/support.py`` ``webhook_requests``): rounds over the
identities, connects and disconnects alternating (the disconnect with IsIdentityOnline=false,
so every round after the first is a rebalancing flap suppressed by the grace), each round's
EventIds above the last. It goes in batches of ``BATCH`` calls, each batch to the previous
script and then to this release's store, one pipeline each; INFO commandstats is read around
every batch, so each side's Redis time is its own top-level command's (``evalsha`` or
``fcall``: the commands a script calls are counted inside it) whatever the other side uses.
Each side gets its release's arguments: the same but for the EndpointId, which this release
packs in the service (``presence/store/endpoints.py``) and the previous one took as text.
Both sides must answer every webhook alike (the outcome and the flap flag), or the row fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.fill import endpoint_of, event, make_store
from bench.loads import commandstats_delta
from bench.support import loadavg, redis_server
from presence.events import ReachabilityEvent
from presence.store import resp
from presence.store.pages import EVENT_ARGS
from presence.store.redis import RedisStore
from presence.store.scripts import ScriptCall, run_scripts

PREVIOUS = Path(__file__).parent / "previous"
PREVIOUS_RULES = (
    "clock",
    "codec",
    "state",
    "publish",
    "endpoints",
    "ordering",
    "expiry",
    "deadline",
    "flap",
)
"""The previous release's rule files, in the order it sent them (not ``scripts.RULES``: that
release as it was, whatever this one's rules become)."""

IDENTITIES = 20_000
ROUNDS = 6
BATCH = 1000
PREFIX = "r"
WARM_SID = "IS" + "0" * 32


def previous_script() -> str:
    """The previous release's apply_event script, as it sent it."""
    names = [*PREVIOUS_RULES, "apply_event"]
    return "\n".join((PREVIOUS / f"{name}.lua").read_text(encoding="utf-8") for name in names)


def previous_args(call: ScriptCall, event: ReachabilityEvent) -> list[resp.Arg]:
    """``call``'s ARGV as the previous release took it: the same, but for the EndpointId as
    text (this release sends it packed, ``presence/store/endpoints.py``)."""
    args = list(call.args)
    args[-EVENT_ARGS] = event.endpoint_id
    return args


def stream(identities: int, rounds: int) -> list[ReachabilityEvent]:
    """The ingest row's stream: connect, then disconnect (the last endpoint: offline
    pending), alternating per round, EventIds rising."""
    events = []
    for r in range(rounds):
        connected = r % 2 == 0
        for i in range(identities):
            event_id = r * identities + i + 1
            events.append(event(PREFIX, i, endpoint_of(PREFIX, i), event_id, connected=connected))
    return events


async def _stats(client: Redis) -> dict[str, tuple[int, int]]:
    stats = await client.info("commandstats")
    return {name[8:]: (v["calls"], v["usec"]) for name, v in stats.items()}


class _Side:
    """One side's Redis time: the usec and calls of its top-level command, summed."""

    def __init__(self) -> None:
        self.usec = 0
        self.calls = 0
        self.command = ""
        self.seconds = 0.0

    def add(self, delta: dict[str, Any], command: str, calls: int) -> None:
        found = delta.get(command)
        if found is None or found["calls"] != calls:
            raise RuntimeError(f"expected {calls} {command} calls, Redis counted {found}")
        self.command = command
        self.usec += found["usec"]
        self.calls += found["calls"]

    def result(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "calls": self.calls,
            "usec": self.usec,
            "usec_per_call": round(self.usec / max(1, self.calls), 2),
            "wall_seconds": round(self.seconds, 2),
        }


def _outcomes(replies: list[Any]) -> list[tuple[str, str]]:
    out = []
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        out.append((str(reply[0]), str(reply[1])))
    return out


async def _measure(url: str, identities: int, rounds: int) -> dict[str, Any]:
    new_store: RedisStore = make_store(url)
    old_client = Redis.from_url(url.rsplit("/", 1)[0] + "/1", decode_responses=True)
    stats_client = Redis.from_url(url, decode_responses=True)
    old_sha = await old_client.script_load(previous_script())
    old_side, new_side = _Side(), _Side()
    outcomes: dict[str, int] = {}
    try:
        await new_store.prepare()
        # Loaded before the measure (a call refused as unknown counts in commandstats too).
        await new_store.apply_many(
            [event("w", 0, endpoint_of("w", 0), 1, connected=True, service_sid=WARM_SID)]
        )
        events = stream(identities, rounds)
        for start in range(0, len(events), BATCH):
            batch = events[start : start + BATCH]
            calls = [new_store.pages.event_call(e) for e in batch]
            old_commands = [
                resp.pack(("EVALSHA", old_sha, len(c.keys), *c.keys, *previous_args(c, e)))
                for c, e in zip(calls, batch, strict=True)
            ]
            before = await _stats(stats_client)
            t0 = time.perf_counter()
            old_replies = await resp.execute(old_client, old_commands)
            old_side.seconds += time.perf_counter() - t0
            middle = await _stats(stats_client)
            t0 = time.perf_counter()
            new_replies = await run_scripts(new_store.redis, calls)
            new_side.seconds += time.perf_counter() - t0
            after = await _stats(stats_client)
            old_side.add(commandstats_delta(before, middle), "evalsha", len(batch))
            top = commandstats_delta(middle, after)
            new_side.add(top, "fcall" if "fcall" in top else "evalsha", len(batch))
            old, new = _outcomes(old_replies), _outcomes(new_replies)
            if old != new:
                raise RuntimeError("the previous script and this release answered differently")
            for status, flap in new:
                key = f"{status}{' (flap suppressed)' if flap == '1' else ''}"
                outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        await new_store.close()
        await old_client.aclose()
        await stats_client.aclose()
    previous, current = old_side.result(), new_side.result()
    return {
        "previous": previous,
        "current": current,
        "ratio": round(current["usec_per_call"] / previous["usec_per_call"], 3),
        "outcomes": outcomes,
    }


def run(workdir: Path, identities: int = IDENTITIES, rounds: int = ROUNDS) -> dict[str, Any]:
    redis = redis_server(workdir / "redis-time")
    try:
        started = loadavg()
        result = asyncio.run(_measure(redis.url, identities, rounds))
    finally:
        redis.stop()
    return {
        "method": (
            f"{identities:,} identities x {rounds} rounds (connect, disconnect alternating), "
            f"{BATCH} calls a pipeline, each batch to the previous script then to this release"
        ),
        "previous_source": "bench/previous/ (commit 05b5c3f)",
        "previous_sha1": hashlib.sha1(previous_script().encode()).hexdigest(),
        "identities": identities,
        "rounds": rounds,
        **result,
        "loadavg_at_start": started,
        "loadavg_at_end": loadavg(),
    }
