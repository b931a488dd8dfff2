"""ServiceRunner: webhooks below the router, answered as the routed app answers them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from harness.processes import RedisServer
from presence.settings import load_settings
from presence.store.connections import open_store
from presence.twilio.samples import SERVICE_SID, reachability
from presence.web.app import create_app
from presence.web.runner import WEBHOOKS, webhooks_first
from tests.support import AUTH_TOKEN, RunningApp, serve_app

Start = Callable[..., Awaitable[RunningApp]]


@pytest.mark.parametrize(
    ("method", "path", "headers", "taken"),
    [
        ("POST", "/webhooks/sync", {}, "webhooks"),
        ("POST", "/webhooks/sync?bodySHA256=ab12", {}, "webhooks"),
        ("POST", "/webhooks/sync", {"Expect": "100-continue"}, "routed"),
        ("GET", "/webhooks/sync", {}, "routed"),
        ("HEAD", "/webhooks/sync", {}, "routed"),
        ("POST", "/webhooks/sync/", {}, "routed"),
        ("POST", "/webhooks/syncs", {}, "routed"),
        ("POST", "/webhooks/%73ync", {}, "routed"),
        ("POST", "/v1/services/x/lookup", {}, "routed"),
    ],
)
async def test_only_a_plain_webhook_post_skips_the_router(
    method: str, path: str, headers: dict[str, str], taken: str
) -> None:
    seen: list[str] = []

    def answering(name: str) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
        async def answer(request: web.BaseRequest) -> web.Response:
            seen.append(name)
            return web.Response()

        return answer

    handle = webhooks_first(answering("webhooks"), answering("routed"))
    await handle(make_mocked_request(method, path, headers=headers))
    assert seen == [taken]


async def test_the_served_app_answers_webhooks_below_the_router(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, redis: Redis
) -> None:
    """The runner of ``presence serve`` (and of every in-process test) hands webhooks to
    ``app[WEBHOOKS]``, and nothing else."""
    settings = load_settings(redis_url=redis_server.url, twilio_auth_token=AUTH_TOKEN)
    store = open_store(settings)
    app = create_app(settings, store)
    answered = app[WEBHOOKS]
    calls: list[str] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return await answered(request)

    app[WEBHOOKS] = counted
    service = RunningApp(await serve_app(aiohttp_client, app), store)
    assert (
        await service.status_of(reachability("alice", "E1", 1, True, connected=True)) == "applied"
    )
    assert calls == ["/webhooks/sync"]
    # Through the router, the same handler answers the same webhook the same way.
    again = await service.post_signed(
        reachability("alice", "E1", 1, True, connected=True), Expect="100-continue"
    )
    assert again.status == 200
    assert (await again.json())["status"] == "duplicate"
    health = await service.client.get("/healthz")
    assert health.status == 200
    assert calls == ["/webhooks/sync"]


async def test_a_bug_under_a_webhook_is_a_json_500_without_the_router(
    start_service: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await start_service()

    async def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.store, "apply_reachability", broken)
    response = await service.post_signed(reachability("alice", "E1", 1, True, connected=True))
    assert response.status == 500
    assert (await response.json())["error"] == "internal_error"
    # The store is untouched, and answers as before once the bug is gone.
    monkeypatch.undo()
    assert not (await service.store.identity(SERVICE_SID, "alice")).online
    assert (
        await service.status_of(reachability("alice", "E1", 1, True, connected=True)) == "applied"
    )
