"""The receivers of docs/push.md, run as they are printed: each, as its own process, is
subscribed to the service on a real Redis, acknowledges every change with a 204, and refuses
a request whose signature does not verify with a 401.

Each runs with the real ``standardwebhooks`` library of its language: the Python one from
PyPI (the lock), the Node one from npm (``tests/node``, installed by scripts/test with
``npm ci`` from its package-lock.json)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.processes import free_port
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import RunningApp, wait_until

Start = Callable[..., Awaitable[RunningApp]]

PUSH_DOCS = Path(__file__).resolve().parent.parent / "docs" / "push.md"
ADMIN = "admin-token-0123456789"
SUBSCRIPTIONS = f"/v1/services/{SERVICE_SID}/subscriptions"

NODE_MODULES = Path(__file__).resolve().parent / "node" / "node_modules"


def snippet(language: str) -> str:
    """The first ``language`` block of docs/push.md's "A receiver"."""
    section = PUSH_DOCS.read_text(encoding="utf-8").split("## A receiver", 1)[1]
    found = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert found is not None, f"no {language} receiver in {PUSH_DOCS}"
    return found.group(1)


@contextlib.asynccontextmanager
async def running(command: list[str], cwd: Path, env: dict[str, str]) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def answers(url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        async with aiohttp.ClientSession() as session, session.post(url, data=b"{}") as reply:
            return reply.status == 401  # listening, and refusing what is not signed
    return False


async def exercise(service: RunningApp, url: str) -> None:
    """With the receiver listening on ``url``, six changes are pushed to it: each is
    acknowledged with a 204, and a forged request is refused with a 401."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    await wait_until(lambda: answers(url), 20, "the receiver to listen")
    for n in range(6):
        params = reachability(f"user-{n}", "E1", 1, True, connected=True)
        assert await service.status_of(params) == "applied"
    reply = await service.client.get(SUBSCRIPTIONS, headers=headers)
    [subscription] = (await reply.json())["subscriptions"]
    one = f"{SUBSCRIPTIONS}/{subscription['id']}"

    async def attempts() -> list[dict[str, Any]]:
        reply = await service.client.get(f"{one}/attempts", headers=headers)
        found: list[dict[str, Any]] = (await reply.json())["attempts"]
        return found

    async def six_attempts() -> bool:
        return len(await attempts()) >= 6

    await wait_until(six_attempts, 20, "six changes pushed")
    assert [a["status"] for a in await attempts()] == [204] * 6
    reply = await service.client.get(one, headers=headers)
    shown = await reply.json()
    assert (shown["state"], shown["lag_seconds"]) == ("active", 0)
    forged = {
        "webhook-id": "msg_forged",
        "webhook-timestamp": "1",
        "webhook-signature": "v1,AAAA",
        "content-type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b'{"type":"presence.reset"}', headers=forged) as reply,
    ):
        assert reply.status == 401


async def subscribed(service: RunningApp, url: str) -> dict[str, str]:
    reply = await service.client.post(
        SUBSCRIPTIONS, json={"url": url}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert reply.status == 201, await reply.text()
    return {"PRESENCE_PUSH_SECRET": (await reply.json())["secret"]}


@pytest.fixture
async def service(start_service: Start) -> RunningApp:
    return await start_service(admin_token=ADMIN, push_allow_private=True, push_timeout_seconds=2)


async def test_the_python_receiver_of_the_docs_acknowledges_and_refuses(
    service: RunningApp, tmp_path: Path
) -> None:
    (tmp_path / "receiver.py").write_text(snippet("python"), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/presence"
    env = await subscribed(service, url)
    async with running([sys.executable, "receiver.py"], tmp_path, {**env, "PORT": str(port)}):
        await exercise(service, url)


async def test_the_node_receiver_of_the_docs_acknowledges_and_refuses(
    service: RunningApp, tmp_path: Path
) -> None:
    (tmp_path / "receiver.mjs").write_text(snippet("js"), encoding="utf-8")
    assert (NODE_MODULES / "standardwebhooks").is_dir(), (
        "npm's standardwebhooks is not installed: scripts/test installs it "
        "(npm ci --prefix tests/node)"
    )
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    port = free_port()
    url = f"http://127.0.0.1:{port}/presence"
    env = await subscribed(service, url)
    async with running(["node", "receiver.mjs"], tmp_path, {**env, "PORT": str(port)}):
        await exercise(service, url)
