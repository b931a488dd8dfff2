"""``presence subscriptions``, run as a process against a running service on a real Redis:
each action prints the reply's JSON and exits 0 on a 2xx, else 1."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from harness.processes import free_port
from presence.twilio.samples import SERVICE_SID
from tests.receiver import Receiver
from tests.support import RunningApp

Start = Callable[..., Awaitable[RunningApp]]

ADMIN = "admin-token-0123456789"
READER = "api-token-0123456789"
COMMAND_TIMEOUT_SECONDS = 60


async def presence(
    service_url: str, *arguments: str, token: str | None = ADMIN, reader: str | None = None
) -> tuple[int, Any, str]:
    """``presence subscriptions --url ... --service ... <arguments>``: its exit status, the
    JSON it printed (None for nothing), and what it wrote to stderr."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PRESENCE_ADMIN_TOKEN", "PRESENCE_API_TOKEN")
    }
    if token is not None:
        environ["PRESENCE_ADMIN_TOKEN"] = token
    if reader is not None:
        environ["PRESENCE_API_TOKEN"] = reader
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "presence", "subscriptions"),
        *("--url", service_url, "--service", SERVICE_SID),
        *arguments,
        env=environ,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    text = out.decode()
    return process.returncode, json.loads(text) if text.strip() else None, err.decode()


@pytest.fixture
async def service_url(start_service: Start) -> str:
    service = await start_service(
        api_token=READER, admin_token=ADMIN, push_allow_private=True, push_timeout_seconds=1
    )
    return str(service.client.make_url("/")).rstrip("/")


async def test_every_action_prints_the_reply_and_exits_0_on_a_2xx(
    service_url: str, receiver: Receiver
) -> None:
    status, created, _ = await presence(
        service_url, "add", receiver.url, "--description", "the backend"
    )
    assert status == 0
    assert created["secret"].startswith("whsec_")
    assert created["description"] == "the backend"
    sub = created["id"]
    receiver.secrets = [created["secret"]]

    status, listed, _ = await presence(service_url, "list")
    assert (status, [s["id"] for s in listed["subscriptions"]]) == (0, [sub])
    assert "secret" not in listed["subscriptions"][0]
    # Reading takes the API token when the admin one is not at hand.
    status, shown, _ = await presence(service_url, "show", sub, token=None, reader=READER)
    assert (status, shown["id"], shown["state"]) == (0, sub, "active")

    status, tested, _ = await presence(service_url, "test", sub)
    assert (status, tested["status"]) == (0, 200)
    assert [r.event["type"] for r in receiver.requests] == ["presence.ping"]
    assert receiver.requests[0].event["data"]["subscription_id"] == sub

    status, rotated, _ = await presence(
        service_url, "rotate-secret", sub, "--previous-expires-in", "0"
    )
    assert status == 0
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]

    status, disabled, _ = await presence(service_url, "disable", sub)
    assert (status, disabled["state"]) == (0, "disabled")
    status, enabled, _ = await presence(service_url, "enable", sub)
    assert (status, enabled["state"]) == (0, "active")
    status, attempts, _ = await presence(service_url, "attempts", sub)
    assert (status, attempts) == (0, {"attempts": []})  # a test ping is not an attempt

    status, removed, _ = await presence(service_url, "remove", sub)
    assert (status, removed) == (0, None)  # 204: nothing to print
    status, missing, _ = await presence(service_url, "show", sub)
    assert (status, missing["error"]) == (1, "unknown_subscription")


async def test_a_refusal_exits_1_with_the_error_printed(
    service_url: str, receiver: Receiver
) -> None:
    status, refused, _ = await presence(service_url, "add", receiver.url, token=READER)
    assert (status, refused["error"]) == (1, "forbidden")
    status, refused, _ = await presence(service_url, "add", receiver.url, token=None)
    assert (status, refused["error"]) == (1, "unauthorized")
    status, refused, _ = await presence(service_url, "add", "ftp://example.com/")
    assert (status, refused["error"]) == (1, "invalid_url")
    status, listed, _ = await presence(service_url, "list")
    assert (status, listed) == (0, {"subscriptions": []})


async def test_a_service_that_does_not_answer_exits_1_saying_so() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    status, printed, err = await presence(url, "list")
    assert (status, printed) == (1, None)
    assert f"could not reach {url}" in err
