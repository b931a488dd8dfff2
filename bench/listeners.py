"""What a busy service also carries while it takes webhooks: 1,000 change-feed streams (990
following 10 identities each, 10 following every change, as row "feed") and one push
subscription to a receiver here that answers 204 at once. Run as a process of its own beside
a load (``python -m bench.listeners BASE_URL PREFIX``): it prints ``LISTENING`` once all is
open, then, when its standard input closes, deletes the subscription and prints one line
``LISTENERSJSON {...}`` with what the streams and the receiver got.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from urllib.parse import urlsplit

import uvloop

from bench.feed import FOLLOWING_ALL, IDENTITIES_EACH, Clients
from bench.push import Receiver, admin, subscribe
from presence.twilio.samples import SERVICE_SID

STREAMS = 1000


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def main(base: str, prefix: str) -> None:
    port = urlsplit(base).port
    assert port is not None
    rng = random.Random(11)
    population = [f"{prefix}-{i:06d}" for i in range(50_000)]
    filters: list[list[str] | None] = [None] * FOLLOWING_ALL
    filters += [rng.sample(population, IDENTITIES_EACH) for _ in range(STREAMS - FOLLOWING_ALL)]
    clients = Clients(port, filters)
    await clients.start()
    receiver = Receiver()
    await receiver.start()
    subscription = subscribe(base, SERVICE_SID, receiver.url)
    print("LISTENING", flush=True)
    await _stdin_closed()
    # Gone with the streams: the rows after this one run on a service that carries nothing.
    admin(base, "DELETE", f"/v1/services/{SERVICE_SID}/subscriptions/{subscription}")
    clients.stop()
    await receiver.stop()
    report = {
        "streams": STREAMS,
        "stream_errors": clients.errors,
        "stream_changes": clients.received,
        "pushed": receiver.requests,
    }
    print("LISTENERSJSON " + json.dumps(report), flush=True)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2]))
