"""``presence serve --workers N``: one port, N processes, one Redis, one view of the metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from harness.processes import RedisServer, Service
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import AUTH_TOKEN, json_lines, post_webhook, wait_until

pytestmark = pytest.mark.slow  # `presence serve --workers` processes

WEBHOOKS = 40


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisServer, redis: Redis) -> Iterator[Service]:
    """``presence serve --workers 2`` on the suite's Redis (emptied first)."""
    service = Service(
        tmp_path / "service.log",
        redis_url=redis_server.url,
        twilio_auth_token=AUTH_TOKEN,
        log_format="json",
    ).start("--workers", "2")
    # The port answers as soon as the first worker listens; wait for the second too.
    deadline = time.monotonic() + 20
    while service.output().count("listening on") < 2:
        assert time.monotonic() < deadline, "the second worker never listened"
        time.sleep(0.05)
    yield service
    service.kill(signal.SIGTERM)


def worker_pids(service: Service) -> list[int]:
    return [int(pid) for pid in re.findall(r"started worker pid (\d+)", service.output())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


async def test_workers_share_the_port_redis_and_metrics(workers: Service) -> None:
    # Each webhook on a connection of its own, so the kernel spreads them over the workers.
    replies = await asyncio.gather(
        *(
            post_webhook(workers.url, reachability(f"user-{n}", "E1", 1, True, connected=True))
            for n in range(WEBHOOKS)
        )
    )
    assert replies == [(200, {"status": "applied"})] * WEBHOOKS

    def handled_by() -> set[int]:
        return {
            line["pid"]
            for line in json_lines(workers.output())
            if line["logger"] == "presence.access" and line["path"] == "/webhooks/sync"
        }

    await wait_until(lambda: len(handled_by()) == 2, what="both workers to have handled webhooks")
    assert handled_by() == set(worker_pids(workers))

    # Whichever worker answers the scrape reports what all of them counted.
    for _ in range(4):
        text = await get_text(f"{workers.url}/metrics")
        counted = {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "presence_webhooks"
            for sample in family.samples
        }
        assert counted == {"applied": WEBHOOKS}
    stats = await get_text(f"{workers.url}/v1/services/{SERVICE_SID}/stats")
    assert json.loads(stats)["online"] == WEBHOOKS

    pids = worker_pids(workers)
    assert workers.process is not None
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(timeout=20) == 0
    assert not any(alive(pid) for pid in pids)


async def test_a_worker_that_dies_is_replaced(workers: Service) -> None:
    first, second = worker_pids(workers)
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: len(worker_pids(workers)) == 3, within=10, what="a new worker")
    replacement = worker_pids(workers)[2]
    assert alive(second)
    assert alive(replacement)

    # The replacement serves: keep opening connections until one lands on it.
    async def replacement_answers() -> bool:
        await get_text(f"{workers.url}/healthz")
        return any(
            line["pid"] == replacement and line["logger"] == "presence.access"
            for line in json_lines(workers.output())
        )

    await wait_until(replacement_answers, within=15, what="the new worker to answer")
