"""Push subscriptions (CONTRACT section 10), on a real Redis, with receivers of the test's
own that verify every request with the ``standardwebhooks`` package (tests/receiver.py):
managing them over the API, what is delivered and how, the secret's rotation, ``410 Gone``,
a reset past the retention, and every refusal the contract names."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from harness.processes import RedisServer, free_port
from presence.feed.cursor import FeedCursor, Position
from presence.keys import Keyspace
from presence.settings import load_settings
from presence.store.connections import open_store
from presence.store.redis import RedisStore
from presence.twilio.samples import SERVICE_SID, reachability
from presence.web.app import create_app
from tests.receiver import Receiver
from tests.support import RunningApp, serve_app, wait_until

Start = Callable[..., Awaitable[RunningApp]]

ADMIN = "admin-token-0123456789"
READER = "api-token-0123456789"
SUBSCRIPTIONS = f"/v1/services/{SERVICE_SID}/subscriptions"


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


async def call(
    service: RunningApp,
    method: str,
    path: str,
    token: str | None = ADMIN,
    body: Any = None,
) -> tuple[int, Any]:
    response = await service.client.request(method, path, json=body, headers=bearer(token))
    text = await response.text()
    return response.status, (await response.json() if text else None)


async def subscribe(service: RunningApp, receiver: Receiver, **fields: Any) -> dict[str, Any]:
    status, created = await call(
        service, "POST", SUBSCRIPTIONS, body={"url": receiver.url, **fields}
    )
    assert status == 201, created
    receiver.secrets = [created["secret"]]
    return dict(created)


async def flip(service: RunningApp, name: str, event_id: int, online: bool) -> None:
    params = reachability(name, "E1", event_id, online, connected=online)
    assert await service.status_of(params) == "applied"


async def listing(service: RunningApp) -> tuple[dict[str, int], str]:
    """The listing with versions, and its feed_cursor."""
    status, page = await call(
        service, "GET", f"/v1/services/{SERVICE_SID}/online?versions=true&limit=1000", READER
    )
    assert status == 200, page
    assert page["next_cursor"] is None
    return {item["identity"]: item["version"] for item in page["identities"]}, page["feed_cursor"]


@pytest.fixture
async def service(start_service: Start) -> RunningApp:
    """The service on the suite's Redis, offline at once (grace 0), with both tokens, and
    receivers on this host allowed."""
    return await start_service(
        api_token=READER,
        admin_token=ADMIN,
        offline_grace_seconds=0,
        push_allow_private=True,
        push_timeout_seconds=1,
    )


async def test_changes_are_pushed_signed_in_version_order_and_the_view_is_online(
    service: RunningApp, receiver: Receiver
) -> None:
    await flip(service, "before", 1, True)
    held, cursor = await listing(service)
    created = await subscribe(service, receiver, since=cursor, description="the backend")
    assert created["url"] == receiver.url
    assert created["state"] == "active"
    for n in range(20):
        await flip(service, f"user-{n}", 1, True)
    for n in range(0, 20, 2):
        await flip(service, f"user-{n}", 2, False)
    truth, _ = await listing(service)

    await wait_until(lambda: receiver.view(held) == set(truth), 20, "every change pushed")
    changes = receiver.acknowledged()
    assert len(changes) == 30
    for request in receiver.requests:
        assert request.verified_by == (0,)
        assert request.user_agent.startswith("presence/")
    by_identity: dict[str, list[int]] = {}
    for request in changes:
        data = request.event["data"]
        by_identity.setdefault(data["identity"], []).append(data["version"])
        assert request.event["timestamp"] == data["changed_at"]
        assert data["service_sid"] == SERVICE_SID
    assert all(versions == sorted(versions) for versions in by_identity.values())


# -- tokens ------------------------------------------------------------------------------------


async def test_reading_takes_either_token_and_managing_the_admin_one(
    service: RunningApp, receiver: Receiver
) -> None:
    created = await subscribe(service, receiver)
    one = f"{SUBSCRIPTIONS}/{created['id']}"
    for path in (SUBSCRIPTIONS, one, f"{one}/attempts"):
        for token in (READER, ADMIN):
            assert (await call(service, "GET", path, token))[0] == 200, (path, token)
        status, body = await call(service, "GET", path, None)
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = await call(service, "GET", path, "wrong")
        assert (status, body["error"]) == (401, "unauthorized")
    managing = [
        ("POST", SUBSCRIPTIONS, {"url": receiver.url}),
        ("PATCH", one, {"description": "x"}),
        ("POST", f"{one}/rotate-secret", {}),
        ("POST", f"{one}/disable", None),
        ("POST", f"{one}/enable", None),
        ("POST", f"{one}/test", None),
        ("DELETE", one, None),
    ]
    for method, path, body in managing:
        status, reply = await call(service, method, path, READER, body)
        assert (status, reply["error"]) == (403, "forbidden"), (method, path)
        status, reply = await call(service, method, path, None, body)
        assert (status, reply["error"]) == (401, "unauthorized"), (method, path)
    # The admin token reads the rest of /v1/ too.
    assert (await call(service, "GET", f"/v1/services/{SERVICE_SID}/stats", ADMIN))[0] == 200


async def test_on_a_real_redis_without_an_admin_token_every_subscription_route_is_403(
    start_service: Start,
) -> None:
    for tokens in ({}, {"api_token": READER}):
        service = await start_service(**tokens)
        for method, path in (("GET", SUBSCRIPTIONS), ("POST", SUBSCRIPTIONS)):
            status, reply = await call(service, method, path, tokens.get("api_token"), {})
            assert (status, reply["error"]) == (403, "forbidden"), tokens
            assert "PRESENCE_ADMIN_TOKEN" in reply["message"]


async def test_with_only_the_admin_token_it_is_needed_to_read_too(start_service: Start) -> None:
    service = await start_service(admin_token=ADMIN)
    assert (await call(service, "GET", SUBSCRIPTIONS, None))[0] == 401
    assert (await call(service, "GET", SUBSCRIPTIONS, ADMIN))[0] == 200
    assert (await call(service, "GET", f"/v1/services/{SERVICE_SID}/stats", None))[0] == 401


async def test_on_the_embedded_store_subscriptions_work_and_creating_one_warns(
    aiohttp_client: AiohttpClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """No token and no Redis: managing is open, as the rest of the embedded store, and the
    warning says the subscriptions end with the process."""
    settings = load_settings(offline_grace_seconds=0, push_allow_private=True)
    assert settings.embedded
    store = open_store(settings)
    service = RunningApp(await serve_app(aiohttp_client, create_app(settings, store)), store)
    with caplog.at_level(logging.WARNING, logger="presence"):
        await subscribe(service, receiver)
    assert "push subscriptions are lost when this process exits" in caplog.text
    await flip(service, "alice", 1, True)
    await wait_until(lambda: len(receiver.acknowledged()) == 1, 10, "alice pushed")
    [pushed] = receiver.acknowledged()
    assert pushed.event["data"]["identity"] == "alice"
    assert pushed.verified_by == (0,)


# -- what is refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.com/hook"}, "invalid_url"),
        ({"url": "https://"}, "invalid_url"),
        ({"url": "example.com/hook"}, "invalid_url"),
        ({"url": "https://example.com/" + "a" * 2030}, "invalid_url"),
        ({"url": "https://example.com:99999/"}, "invalid_url"),
        ({"url": 7}, "invalid_url"),
        ({}, "invalid_url"),
        ({"url": "http://127.0.0.1:9/hook"}, "invalid_url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "invalid_url"),
        ({"url": "http://[::ffff:127.0.0.1]/hook"}, "invalid_url"),
        ({"url": "http://[::1]/hook"}, "invalid_url"),
        ({"url": "http://100.64.0.1/hook"}, "invalid_url"),
        ({"url": "http://10.1.2.3/hook"}, "invalid_url"),
        ({"url": "http://0.0.0.0/hook"}, "invalid_url"),
        ({"url": "http://224.0.0.1/hook"}, "invalid_url"),
        ({"url": "http://localhost/hook"}, "invalid_url"),
        ({"url": "https://example.com/", "description": "d" * 201}, "invalid_description"),
        ({"url": "https://example.com/", "description": 3}, "invalid_description"),
        ({"url": "https://example.com/", "since": "not-a-cursor"}, "invalid_cursor"),
        ({"url": "https://example.com/", "since": 12}, "invalid_cursor"),
        ([], "invalid_body"),
        ("a string", "invalid_body"),
    ],
)
async def test_a_bad_subscription_gets_the_contracts_error(
    start_service: Start, body: Any, code: str
) -> None:
    service = await start_service(admin_token=ADMIN)  # private addresses not allowed
    status, reply = await call(service, "POST", SUBSCRIPTIONS, body=body)
    assert (status, reply["error"]) == (400, code), reply
    assert (await call(service, "GET", SUBSCRIPTIONS))[1] == {"subscriptions": []}


async def test_a_body_that_is_not_json_is_invalid_body(service: RunningApp) -> None:
    response = await service.client.post(
        SUBSCRIPTIONS, data=b"{nope", headers=bearer(ADMIN) | {"Content-Type": "application/json"}
    )
    assert (response.status, (await response.json())["error"]) == (400, "invalid_body")


async def test_an_unknown_subscription_is_404_on_every_route(service: RunningApp) -> None:
    one = f"{SUBSCRIPTIONS}/sub_00000000000000000000"
    for method, path, body in [
        ("GET", one, None),
        ("PATCH", one, {"description": "x"}),
        ("DELETE", one, None),
        ("POST", f"{one}/rotate-secret", None),
        ("POST", f"{one}/enable", None),
        ("POST", f"{one}/disable", None),
        ("POST", f"{one}/test", None),
        ("GET", f"{one}/attempts", None),
    ]:
        status, reply = await call(service, method, path, body=body)
        assert (status, reply["error"]) == (404, "unknown_subscription"), (method, path)


async def test_a_service_has_at_most_100_subscriptions(service: RunningApp) -> None:
    for n in range(100):
        status, _ = await call(service, "POST", SUBSCRIPTIONS, body={"url": f"https://e.com/{n}"})
        assert status == 201
    status, reply = await call(service, "POST", SUBSCRIPTIONS, body={"url": "https://e.com/x"})
    assert (status, reply["error"]) == (409, "too_many_subscriptions")
    listed = (await call(service, "GET", SUBSCRIPTIONS))[1]["subscriptions"]
    assert [s["url"] for s in listed] == [f"https://e.com/{n}" for n in range(100)]


# -- what is shown -----------------------------------------------------------------------------


async def test_the_secret_is_shown_on_creation_and_rotation_only_and_the_url_without_secrets(
    service: RunningApp,
) -> None:
    url = "https://user:pass@hooks.example.com:8443/presence?key=s3cret#frag"
    status, created = await call(service, "POST", SUBSCRIPTIONS, body={"url": url})
    assert status == 201
    assert created["url"] == url
    assert created["secret"].startswith("whsec_")
    assert created["description"] is None
    assert set(created) == {
        "id", "service_sid", "url", "description", "state", "created_at", "lag_seconds",
        "last_success_at", "last_failure_at", "last_failure", "consecutive_failures", "secret",
    }  # fmt: skip
    one = f"{SUBSCRIPTIONS}/{created['id']}"
    shown = "https://hooks.example.com:8443/presence"
    replies = [
        (await call(service, "GET", one))[1],
        (await call(service, "GET", SUBSCRIPTIONS))[1]["subscriptions"][0],
        (await call(service, "PATCH", one, body={"description": "d"}))[1],
        (await call(service, "POST", f"{one}/disable"))[1],
        (await call(service, "POST", f"{one}/enable"))[1],
    ]
    for reply in replies:
        assert reply["url"] == shown
        assert "secret" not in reply
    rotated = (await call(service, "POST", f"{one}/rotate-secret"))[1]
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    assert rotated["url"] == shown
    assert replies[2]["description"] == "d"
    assert (await call(service, "DELETE", one)) == (204, None)
    assert (await call(service, "GET", one))[0] == 404


# -- delivery ------------------------------------------------------------------------------------


async def shown(service: RunningApp, created: dict[str, Any]) -> dict[str, Any]:
    status, reply = await call(service, "GET", f"{SUBSCRIPTIONS}/{created['id']}", ADMIN)
    assert status == 200, reply
    return dict(reply)


async def test_a_failing_receiver_makes_the_subscription_failing_until_a_2xx(
    service: RunningApp, receiver: Receiver
) -> None:
    receiver.status = 500
    created = await subscribe(service, receiver)
    await flip(service, "alice", 1, True)

    async def failing() -> bool:
        return bool((await shown(service, created))["state"] == "failing")

    await wait_until(failing, 10, "the subscription failing")
    found = await shown(service, created)
    assert found["last_failure"] == 500
    assert found["consecutive_failures"] >= 1
    assert found["last_success_at"] is None
    assert found["lag_seconds"] > 0
    attempts = (await call(service, "GET", f"{SUBSCRIPTIONS}/{created['id']}/attempts"))[1]
    assert attempts["attempts"][0]["status"] == 500
    assert attempts["attempts"][0]["error"] is None
    # Retried with the same webhook-id, after a backoff: at least a second apart.
    tries = [r for r in receiver.requests if r.type == "presence.changed"]
    assert {r.webhook_id for r in tries} == {tries[0].webhook_id}
    receiver.status = None

    async def active() -> bool:
        found = await shown(service, created)
        return bool(found["state"] == "active" and found["lag_seconds"] == 0)

    await wait_until(active, 10, "the subscription active again")
    found = await shown(service, created)
    assert (found["consecutive_failures"], found["last_failure"]) == (0, 500)
    assert found["last_success_at"] is not None
    assert [r.event["data"]["identity"] for r in receiver.acknowledged()] == ["alice"]


async def test_one_identitys_failing_change_holds_back_its_own_changes_only(
    service: RunningApp, receiver: Receiver
) -> None:
    receiver.refused = {"stuck"}
    await subscribe(service, receiver)
    await flip(service, "stuck", 1, True)
    await flip(service, "stuck", 2, False)
    for n in range(10):
        await flip(service, f"user-{n}", 1, True)
    await wait_until(lambda: len(receiver.acknowledged()) == 10, 20, "the others pushed")
    assert {r.event["data"]["identity"] for r in receiver.acknowledged()} == {
        f"user-{n}" for n in range(10)
    }
    # Only the first of its changes was tried: the second waits behind it.
    tried = {
        r.event["data"]["version"]
        for r in receiver.requests
        if r.event["data"]["identity"] == "stuck"
    }
    assert tried == {1}
    receiver.refused = set()
    await wait_until(lambda: len(receiver.acknowledged()) == 12, 20, "its changes pushed")
    stuck = [r for r in receiver.acknowledged() if r.event["data"]["identity"] == "stuck"]
    assert [r.event["data"]["version"] for r in stuck] == [1, 2]


async def test_a_receiver_away_is_probed_one_attempt_at_a_time_then_sent_everything(
    service: RunningApp, receiver: Receiver
) -> None:
    """Thirty changes wait while the receiver's port is closed: after the first failures
    (the attempts in flight), one attempt goes at a time on a doubling backoff, not thirty
    on their own schedules; its return sends them all."""
    await subscribe(service, receiver)
    await receiver.down()
    for n in range(30):
        await flip(service, f"user-{n}", 1, True)

    async def connect_failures() -> float:
        text = await (await service.client.get("/metrics")).text()
        [line] = [x for x in text.splitlines() if 'outcome="connect"' in x and "deliveries" in x]
        return float(line.rpartition(" ")[2])

    async def probing() -> bool:
        return await connect_failures() >= 5

    await wait_until(probing, 10, "the first attempts failing")
    first_round = await connect_failures()
    await asyncio.sleep(8)  # the time the probes' backoff is measured over
    # Probes at most 1, 2 and 4 s apart; unprobed, thirty changes retried at 1, 2 and 4 s
    # would make some ninety attempts.
    assert await connect_failures() - first_round <= 5
    await receiver.start()
    await wait_until(lambda: len(receiver.acknowledged()) == 30, 30, "everything sent")


async def test_410_gone_disables_the_subscription(service: RunningApp, receiver: Receiver) -> None:
    receiver.status = 410
    created = await subscribe(service, receiver)
    await flip(service, "alice", 1, True)

    async def disabled() -> bool:
        return bool((await shown(service, created))["state"] == "disabled")

    await wait_until(disabled, 10, "the subscription disabled")
    sent = len(receiver.requests)
    await flip(service, "bob", 1, True)
    await asyncio.sleep(2.5)  # a renewal and more: nothing more is sent
    assert len(receiver.requests) == sent == 1


async def test_a_rotated_secret_signs_beside_the_new_one_for_the_overlap_only(
    service: RunningApp, receiver: Receiver
) -> None:
    created = await subscribe(service, receiver)
    one = f"{SUBSCRIPTIONS}/{created['id']}"
    old = created["secret"]
    rotated = (
        await call(service, "POST", f"{one}/rotate-secret", body={"previous_expires_in": 60})
    )[1]
    receiver.secrets = [old, rotated["secret"]]
    await asyncio.sleep(2.5)  # the holder's next renewal brings the new secret
    await flip(service, "alice", 1, True)
    await wait_until(lambda: len(receiver.acknowledged()) == 1, 10, "alice pushed")
    assert receiver.acknowledged()[0].verified_by == (0, 1)
    # A new rotation with no overlap: the old secrets no longer sign.
    newest = (await call(service, "POST", f"{one}/rotate-secret", body={"previous_expires_in": 0}))[
        1
    ]
    receiver.secrets = [old, rotated["secret"], newest["secret"]]
    await asyncio.sleep(2.5)
    await flip(service, "bob", 1, True)
    await wait_until(lambda: len(receiver.acknowledged()) == 2, 10, "bob pushed")
    assert receiver.acknowledged()[1].verified_by == (2,)
    for value in (-1, 86401, "60", 1.5):
        status, reply = await call(
            service, "POST", f"{one}/rotate-secret", body={"previous_expires_in": value}
        )
        assert (status, reply["error"]) == (400, "invalid_body"), value


async def test_a_ping_is_sent_once_now_and_changes_nothing(
    service: RunningApp, receiver: Receiver
) -> None:
    created = await subscribe(service, receiver)
    one = f"{SUBSCRIPTIONS}/{created['id']}"
    status, outcome = await call(service, "POST", f"{one}/test")
    assert status == 200
    assert (outcome["status"], outcome["error"]) == (200, None)
    assert outcome["webhook_id"].startswith("msg_")
    [ping] = receiver.requests
    assert ping.type == "presence.ping"
    assert ping.webhook_id == outcome["webhook_id"]
    assert ping.event["data"] == {"service_sid": SERVICE_SID, "subscription_id": created["id"]}
    assert ping.verified_by == (0,)
    assert (await call(service, "GET", f"{one}/attempts"))[1] == {"attempts": []}
    await receiver.down()
    status, outcome = await call(service, "POST", f"{one}/test")
    assert (status, outcome["status"], outcome["error"]) == (200, None, "connect")
    assert (await shown(service, created))["consecutive_failures"] == 0


@pytest.mark.parametrize("bypassed", [False, True])
async def test_requests_go_through_http_proxy_unless_no_proxy_names_the_host(
    start_service: Start, monkeypatch: pytest.MonkeyPatch, bypassed: bool
) -> None:
    """The receiver's name resolves nowhere: only a proxy can deliver to it."""
    forwarded: list[tuple[str, str, bytes]] = []

    async def proxy(request: web.Request) -> web.Response:
        forwarded.append((request.method, request.headers["Host"], await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        if bypassed:
            monkeypatch.setenv("NO_PROXY", "receiver.invalid")
        service = await start_service(admin_token=ADMIN, offline_grace_seconds=0)
        status, created = await call(
            service, "POST", SUBSCRIPTIONS, body={"url": "http://receiver.invalid/presence"}
        )
        assert status == 201, created
        await flip(service, "alice", 1, True)

        async def settled() -> bool:
            return (await shown(service, created))[
                "last_failure" if bypassed else "last_success_at"
            ] is not None

        await wait_until(settled, 10, "an attempt")
        if bypassed:
            assert (await shown(service, created))["last_failure"] == "dns"
            assert forwarded == []
        else:
            [(method, host, body)] = forwarded
            assert (method, host) == ("POST", "receiver.invalid")
            assert json.loads(body)["data"]["identity"] == "alice"
    finally:
        await runner.cleanup()


async def test_an_unresolvable_name_is_accepted_and_fails_with_dns(service: RunningApp) -> None:
    status, created = await call(
        service, "POST", SUBSCRIPTIONS, body={"url": "http://nowhere.invalid/hook"}
    )
    assert status == 201
    await flip(service, "alice", 1, True)

    async def dns() -> bool:
        return bool((await shown(service, created))["last_failure"] == "dns")

    await wait_until(dns, 10, "an attempt failing with dns")


async def test_a_private_address_is_refused_at_each_attempt_unless_allowed(
    start_service: Start, receiver: Receiver
) -> None:
    """Allowed when it was created (here, by a replica that allows them); refused by one
    that does not, at the attempt."""
    allowing = await start_service(admin_token=ADMIN, push_allow_private=True)
    created = await subscribe(allowing, receiver)
    await allowing.client.close()
    refusing = await start_service(admin_token=ADMIN, offline_grace_seconds=0)
    await flip(refusing, "alice", 1, True)

    async def refused() -> bool:
        return bool((await shown(refusing, created))["last_failure"] == "address_refused")

    await wait_until(refused, 15, "an attempt refused")
    assert receiver.requests == []


async def test_disable_stops_delivery_and_enable_goes_on_from_the_cursor(
    service: RunningApp, receiver: Receiver
) -> None:
    created = await subscribe(service, receiver)
    one = f"{SUBSCRIPTIONS}/{created['id']}"
    assert (await call(service, "POST", f"{one}/disable"))[1]["state"] == "disabled"
    await asyncio.sleep(2.5)
    await flip(service, "alice", 1, True)
    await asyncio.sleep(2.5)
    assert receiver.requests == []
    assert (await shown(service, created))["lag_seconds"] > 0
    assert (await call(service, "POST", f"{one}/enable"))[1]["state"] == "active"
    await wait_until(lambda: len(receiver.acknowledged()) == 1, 10, "alice pushed once enabled")
    assert (await call(service, "DELETE", one))[0] == 204
    await asyncio.sleep(2.5)
    await flip(service, "bob", 1, True)
    await asyncio.sleep(2.5)
    assert len(receiver.requests) == 1


@pytest.mark.slow
async def test_a_receiver_away_longer_than_the_retention_gets_a_reset_then_changes(
    start_service: Start, redis_server: RedisServer, redis: Redis, receiver: Receiver
) -> None:
    """A feed that keeps changes 6 s (the setting's least is a minute: the store is made
    here): the receiver down for longer, its committed cursor passes the retention."""
    store = RedisStore(
        Redis.from_url(redis_server.url, decode_responses=True),
        Keyspace(),
        offline_grace_ms=0,
        endpoint_ttl_ms=0,
        feed_retention_ms=6000,
    )
    service = await start_service(
        store=store, api_token=READER, admin_token=ADMIN, push_allow_private=True
    )
    created = await subscribe(service, receiver)
    await flip(service, "alice", 1, True)
    await wait_until(lambda: len(receiver.acknowledged()) == 1, 10, "alice pushed")
    await receiver.down()
    await flip(service, "bob", 1, True)
    await asyncio.sleep(7)  # bob's change, never acknowledged, leaves the retention
    await receiver.start()
    await wait_until(lambda: bool(receiver.acknowledged("presence.reset")), 20, "a reset")
    [reset] = receiver.acknowledged("presence.reset")
    assert reset.event["data"] == {"service_sid": SERVICE_SID, "reason": "retention"}
    # The reset is a barrier: nothing before it came after it.
    after = [r for r in receiver.requests if r.at > reset.at and r.type == "presence.changed"]
    assert all(r.event["data"]["identity"] != "alice" for r in after)
    await flip(service, "carol", 1, True)
    await wait_until(
        lambda: any(r.event["data"]["identity"] == "carol" for r in receiver.acknowledged()),
        10,
        "changes again after the reset",
    )
    assert (await shown(service, created))["state"] == "active"


async def test_a_since_past_the_retention_starts_with_a_reset(
    service: RunningApp, receiver: Receiver
) -> None:
    _, cursor = await listing(service)
    old = FeedCursor.decode(cursor)
    stale = replace(old, position=Position(old.position.ms - 2 * 86_400_000, 0, 0), snapshot=None)
    await subscribe(service, receiver, since=stale.encode())
    await wait_until(lambda: bool(receiver.acknowledged("presence.reset")), 10, "a reset first")
    assert receiver.requests[0].type == "presence.reset"
    assert receiver.requests[0].event["data"]["reason"] == "retention"
