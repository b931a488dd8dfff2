"""Row "instructions": the CPU work of a webhook, a GET and a lookup, counted in instructions.

Each server runs under valgrind's callgrind, which counts the instructions it executes
only while the harness has turned counting on: around a fixed number of requests, after a
warm-up. A count does not depend on what else the machine is doing, nor on the CPU's speed,
so two runs of the same code agree within 2 to 3%, where CPU seconds per request on a shared
two-core machine move by 10 to 20% from run to run: this is the row to compare one change
with the next. It leaves out what instructions do not show (cache misses, system calls'
time in the kernel), so the CPU rows of ``ingest`` and ``get`` stay the verdicts.

The service (``presence serve``, signatures checked, access log on, a redis-server of its
own, an hour's grace so that no deadline falls due while a load is counted) and the bare
reference (``bench/reference.py``) each take the same webhooks and GETs, and the minimal
real-work reference (``bench/reference_work.py``: the signature and one Lua call) the same
webhooks; the service also takes 1000-name lookups, counted per name. The client is the
harness, in this process: under valgrind the servers run some 50 times slower, so the client
never keeps them waiting.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.support import API_TOKEN, AUTH_TOKEN, ROOT, endpoint_id, log, redis_server
from harness.processes import ServerProcess, free_port, service_env
from presence.twilio.samples import SERVICE_SID, reachability
from presence.twilio.signing import form_headers

WEBHOOKS = 2000
GETS = 2000
LOOKUPS = 40
LOOKUP_NAMES = 1000
IDENTITIES = 1000
CONCURRENCY = 32
GRACE_SECONDS = 3600
START_SECONDS = 600.0
"""Starting under valgrind: the imports alone take a minute on a slow machine."""

Request = tuple[str, str, dict[str, Any]]
"""Method, URL and the keyword arguments of an aiohttp request."""


def _webhooks(url: str, prefix: str, count: int) -> list[Request]:
    """``count`` distinct signed webhooks over IDENTITIES identities: each round of them
    connects, the next disconnects, EventIds rising, so every one is applied."""
    rng = random.Random(prefix)
    endpoints = [endpoint_id(rng) for _ in range(IDENTITIES)]
    requests: list[Request] = []
    for k in range(count):
        rnd, i = divmod(k, IDENTITIES)
        connected = rnd % 2 == 0
        params = reachability(
            f"{prefix}-{i:06d}", endpoints[i], k + 1, connected, connected=connected
        )
        requests.append(
            ("POST", url, {"data": params, "headers": form_headers(AUTH_TOKEN, url, params)})
        )
    return requests


async def send_all(requests: list[Request]) -> None:
    """Sends each request, CONCURRENCY at a time; raises unless every answer is a 2xx."""
    pending = iter(requests)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for method, url, options in pending:
                async with session.request(method, url, **options) as reply:
                    body = await reply.read()
                    if not 200 <= reply.status < 300:
                        raise RuntimeError(f"{method} {url}: {reply.status} {body[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


class Counted:
    """A server under callgrind, counting only while ``count`` runs. ``{port}`` in its
    command is the free port it is given."""

    def __init__(self, workdir: Path, name: str, command: list[str], **env: str) -> None:
        self.out = workdir / f"callgrind-{name}.out"
        self.port = free_port()
        command = [part.replace("{port}", str(self.port)) for part in command]
        valgrind = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={self.out}",
        ]  # fmt: skip
        environment = service_env(port=str(self.port), **env)
        self.server = ServerProcess(
            [*valgrind, *command],
            workdir / f"callgrind-{name}.log",
            port=self.port,
            env=environment,
        )
        self.dumps = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Counted:
        self.server.start(within=START_SECONDS)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.server.pid)],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def count(self, requests: list[Request]) -> int:
        """The instructions the server executed to answer ``requests``."""
        self._control("--zero")
        self._control("--instr=on")
        asyncio.run(send_all(requests))
        self._control("--instr=off")
        self._control("--dump")
        self.dumps += 1
        return _totals(Path(f"{self.out}.{self.dumps}"))


def reference_command() -> list[str]:
    """The bare reference's command, for ``Counted``."""
    return [sys.executable, str(ROOT / "bench" / "reference.py"), "--port={port}"]


def _totals(dump: Path) -> int:
    deadline = time.monotonic() + 60
    while True:
        # The dump is written by the server once it sees the request: wait for its totals.
        text = dump.read_text() if dump.exists() else ""
        found = re.search(r"^totals: (\d+)", text, re.M)
        if found:
            return int(found.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no totals to {dump}")
        time.sleep(0.2)


def _gets(base: str, names: list[str], count: int, headers: dict[str, str]) -> list[Request]:
    rng = random.Random(count)
    return [
        (
            "GET",
            f"{base}/v1/services/{SERVICE_SID}/identities/{rng.choice(names)}",
            {"headers": headers},
        )
        for _ in range(count)
    ]


def _measure(
    server: Counted, warm: Callable[[], None], loads: Sequence[tuple[str, list[Request], int]]
) -> dict[str, float]:
    """Per load, its instructions divided by its count (requests, or names looked up)."""
    warm()
    found: dict[str, float] = {}
    for name, requests, per in loads:
        log(f"instructions: {name}, {len(requests)} requests")
        found[name] = round(server.count(requests) / per)
    return found


def run(workdir: Path) -> dict[str, Any]:
    """Instructions per webhook and per GET for the service and the bare reference, and per
    name of a lookup for the service."""
    redis = redis_server(workdir / "redis-instructions")
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    names = [f"seed-{i:06d}" for i in range(IDENTITIES)]
    lookups_of = [f"absent-{i}" for i in range(IDENTITIES // 5)] + names
    try:
        service = Counted(
            workdir,
            "presence",
            [sys.executable, "-m", "presence", "serve"],
            redis_url=redis.url,
            twilio_auth_token=AUTH_TOKEN,
            api_token=API_TOKEN,
            # No deadline falls due while a load is counted: the sweeper's work would be
            # counted with whichever load it fell in, as much as the timing made it.
            offline_grace_seconds=str(GRACE_SECONDS),
        )
        with service:
            hook = f"{service.url}/webhooks/sync"
            rng = random.Random(1)
            lookup = f"{service.url}/v1/services/{SERVICE_SID}/lookup"
            bodies = [
                (
                    "POST",
                    lookup,
                    {
                        "data": json.dumps({"identities": rng.sample(lookups_of, LOOKUP_NAMES)}),
                        "headers": {**auth, "Content-Type": "application/json"},
                    },
                )
                for _ in range(LOOKUPS)
            ]

            def warm() -> None:
                log("instructions: presence under callgrind, warming up")
                asyncio.run(send_all(_webhooks(hook, "warm", IDENTITIES)))
                asyncio.run(send_all(_webhooks(hook, "seed", IDENTITIES)))
                asyncio.run(send_all(_gets(service.url, names, 200, auth) + bodies[:4]))

            presence = _measure(
                service,
                warm,
                [
                    ("get", _gets(service.url, names, GETS, auth), GETS),
                    ("lookup_name", bodies, LOOKUPS * LOOKUP_NAMES),
                    ("webhook", _webhooks(hook, "main", WEBHOOKS), WEBHOOKS),
                ],
            )
        reference = Counted(workdir, "reference", reference_command())
        with reference:
            hook = f"{reference.url}/webhooks/sync"

            def warm_reference() -> None:
                log("instructions: the reference under callgrind, warming up")
                asyncio.run(
                    send_all(
                        _webhooks(hook, "warm", IDENTITIES) + _gets(reference.url, names, 200, auth)
                    )
                )

            bare = _measure(
                reference,
                warm_reference,
                [
                    ("webhook", _webhooks(hook, "main", WEBHOOKS), WEBHOOKS),
                    ("get", _gets(reference.url, names, GETS, auth), GETS),
                ],
            )
        script = str(ROOT / "bench" / "reference_work.py")
        work = Counted(
            workdir,
            "work",
            [
                sys.executable,
                script,
                "--redis-url",
                redis.url,
                "--token",
                AUTH_TOKEN,
                "--port={port}",
            ],
        )
        with work:
            hook = f"{work.url}/webhooks/sync"

            def warm_work() -> None:
                log("instructions: the real-work reference under callgrind, warming up")
                asyncio.run(send_all(_webhooks(hook, "warm", IDENTITIES)))

            minimal = _measure(
                work, warm_work, [("webhook", _webhooks(hook, "main", WEBHOOKS), WEBHOOKS)]
            )
    finally:
        redis.stop()
    return {
        "presence": presence,
        "reference": bare,
        "work_reference": minimal,
        "ratio": {k: round(presence[k] / bare[k], 2) for k in bare},
        "requests": {
            "webhook": WEBHOOKS,
            "get": GETS,
            "lookup": LOOKUPS,
            "lookup_names": LOOKUP_NAMES,
        },
    }
