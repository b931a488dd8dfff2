"""The query API over real HTTP on a real Redis: one identity, lookups, listing, stats, health."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import pytest

from harness.processes import RedisServer
from presence.events import ReachabilityEvent, parse_event
from presence.store.connections import redis_client
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import OTHER_SERVICE_SID, RunningApp, make_store

Start = Callable[..., Awaitable[RunningApp]]
BASE = f"/v1/services/{SERVICE_SID}"


async def connect(service: RunningApp, identity: str, event_id: int = 1, **kw: str) -> None:
    params = reachability(identity, "E1", event_id, True, connected=True, **kw)
    event = parse_event(params.items())
    assert isinstance(event, ReachabilityEvent)
    await service.store.apply_reachability(event)


async def disconnect(service: RunningApp, identity: str, event_id: int) -> None:
    event = parse_event(reachability(identity, "E1", event_id, False, connected=False).items())
    assert isinstance(event, ReachabilityEvent)
    await service.store.apply_reachability(event)


async def get_json(service: RunningApp, path: str, status: int = 200) -> object:
    response = await service.client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def test_an_identity_is_answered_as_documented(start_service: Start) -> None:
    service = await start_service()
    await connect(service, "alice", 42)

    body = await get_json(service, f"{BASE}/identities/alice")

    assert isinstance(body, dict)
    assert body.pop("changed_at").endswith("Z")
    assert body == {
        "service_sid": SERVICE_SID,
        "identity": "alice",
        "online": True,
        "pending_offline": False,
        "endpoints": ["E1"],
        "last_event_id": 42,
        "version": 1,
    }


@pytest.mark.parametrize(
    "identity", ["a/b", "x:y", "{tag}", "100%", "with space", "émoji 🎉", "?q=1#f", "..a"]
)
async def test_identities_with_any_characters_are_found_percent_encoded(
    start_service: Start, identity: str
) -> None:
    service = await start_service()
    await connect(service, identity)

    body = await get_json(service, f"{BASE}/identities/{quote(identity, safe='')}")

    assert isinstance(body, dict)
    assert body["identity"] == identity
    assert body["online"] is True


async def test_dot_segments_are_found_by_lookup(start_service: Start) -> None:
    # HTTP clients remove "." and ".." path segments, so those two are asked by lookup.
    service = await start_service()
    await connect(service, ".")

    response = await service.client.post(f"{BASE}/lookup", json={"identities": [".", ".."]})
    assert [i["online"] for i in (await response.json())["identities"]] == [True, False]


async def test_services_are_separate(start_service: Start) -> None:
    service = await start_service()
    await connect(service, "alice", service_sid=OTHER_SERVICE_SID)

    body = await get_json(service, f"{BASE}/identities/alice")
    assert isinstance(body, dict)
    assert body["online"] is False


@pytest.mark.parametrize(
    "path",
    [
        "/v1/services/IS123/identities/alice",
        "/v1/services/ACfedcba9876543210fedcba9876543210/stats",
        "/v1/services/IS" + "z" * 32 + "/online",
    ],
)
async def test_a_bad_service_sid_is_a_400(start_service: Start, path: str) -> None:
    service = await start_service()
    body = await get_json(service, path, 400)
    assert isinstance(body, dict)
    assert body["error"] == "invalid_service_sid"
    assert body["message"]


async def test_a_too_long_identity_is_a_400(start_service: Start) -> None:
    service = await start_service()
    body = await get_json(service, f"{BASE}/identities/{'x' * 1025}", 400)
    assert isinstance(body, dict)
    assert body["error"] == "invalid_identity"


async def test_a_lookup_answers_in_request_order(start_service: Start) -> None:
    service = await start_service()
    for name in ("ann", "cid"):
        await connect(service, name)

    names = ["cid", "bob", "ann", "cid"]
    response = await service.client.post(f"{BASE}/lookup", json={"identities": names})

    assert response.status == 200
    found = (await response.json())["identities"]
    assert [(i["identity"], i["online"]) for i in found] == [
        ("cid", True),
        ("bob", False),
        ("ann", True),
        ("cid", True),
    ]
    assert found[1]["version"] == 0


async def test_a_lookup_of_a_thousand_is_answered(start_service: Start) -> None:
    service = await start_service()
    for n in range(0, 1000, 7):
        await connect(service, f"user-{n}")

    names = [f"user-{n}" for n in range(1000)]
    response = await service.client.post(f"{BASE}/lookup", json={"identities": names})

    found = (await response.json())["identities"]
    assert [i["identity"] for i in found] == names
    assert [i["online"] for i in found] == [n % 7 == 0 for n in range(1000)]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"identities": []}',
        b'{"identities": "alice"}',
        b'{"identities": [1]}',
        b'{"identities": [""]}',
        b'{"names": ["alice"]}',
        ('{"identities": [' + ",".join('"a"' for _ in range(1001)) + "]}").encode(),
    ],
)
async def test_a_bad_lookup_is_a_400(start_service: Start, body: bytes) -> None:
    service = await start_service()
    response = await service.client.post(f"{BASE}/lookup", data=io.BytesIO(body))
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_body"


async def list_all(service: RunningApp, limit: int) -> tuple[list[str], int]:
    names: list[str] = []
    pages = 0
    cursor = None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        body = await get_json(service, f"{BASE}/online{query}")
        assert isinstance(body, dict)
        assert len(body["identities"]) <= limit
        names += body["identities"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return names, pages


async def test_the_online_listing_pages_through_everyone_once(start_service: Start) -> None:
    service = await start_service()
    expected = {f"user-{n:03d}" for n in range(250)}
    for name in expected:
        await connect(service, name)
    await connect(service, "elsewhere", service_sid=OTHER_SERVICE_SID)

    names, pages = await list_all(service, 100)

    assert len(names) == len(set(names)) == 250
    assert set(names) == expected
    assert pages in (3, 4)
    default = await get_json(service, f"{BASE}/online")
    assert isinstance(default, dict)
    assert len(default["identities"]) == 100


async def test_the_listing_keeps_those_who_stay_online_while_others_come_and_go(
    start_service: Start,
) -> None:
    service = await start_service()
    stayers = {f"stay-{n}" for n in range(60)}
    for name in stayers:
        await connect(service, name)
    seen: list[str] = []
    cursor = None
    churn = 0
    while True:
        query = "?limit=7" + (f"&cursor={cursor}" if cursor else "")
        body = await get_json(service, f"{BASE}/online{query}")
        assert isinstance(body, dict)
        seen += body["identities"]
        # Between pages, others come online.
        churn += 1
        await connect(service, f"come-{churn}")
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert stayers <= set(seen)
    assert len(seen) == len(set(seen))


async def test_pending_offline_identities_are_listed_and_offline_ones_are_not(
    start_service: Start,
) -> None:
    service = await start_service()
    await connect(service, "stays")
    await connect(service, "leaving")
    await disconnect(service, "leaving", 2)

    names, _ = await list_all(service, 10)
    assert sorted(names) == ["leaving", "stays"]

    stats = await get_json(service, f"{BASE}/stats")
    assert stats == {"online": 2, "pending_offline": 1, "endpoints": 1}


async def test_the_listing_with_versions_gives_each_identity_its_version(
    start_service: Start,
) -> None:
    service = await start_service(offline_grace_seconds=0)
    for n in range(30):
        await connect(service, f"v{n}")
    # Flapped identities: offline then online again, two versions later.
    for n in range(0, 30, 3):
        await disconnect(service, f"v{n}", 2)
        await connect(service, f"v{n}", 3)
    listed: dict[str, int] = {}
    cursor = None
    while True:
        query = "?limit=7&versions=true" + (f"&cursor={cursor}" if cursor else "")
        body = await get_json(service, f"{BASE}/online{query}")
        assert isinstance(body, dict)
        for item in body["identities"]:
            assert set(item) == {"identity", "version"}
            assert item["identity"] not in listed
            listed[item["identity"]] = item["version"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    found = await service.store.lookup(SERVICE_SID, sorted(listed))
    assert listed == {p.identity: p.version for p in found}
    assert {n for n, v in listed.items() if v == 3} == {f"v{n}" for n in range(0, 30, 3)}
    assert len(listed) == 30
    # Without versions (or versions=false), names alone.
    plain = await get_json(service, f"{BASE}/online?limit=1000&versions=false")
    assert isinstance(plain, dict)
    assert sorted(plain["identities"]) == sorted(listed)


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?limit=-1",
        "?cursor=bm9wZQ",
        "?cursor=@",
        "?versions=yes",
        "?versions=1",
        "?versions=TRUE",
    ],
)
async def test_a_bad_listing_query_is_a_400(start_service: Start, query: str) -> None:
    service = await start_service()
    body = await get_json(service, f"{BASE}/online{query}", 400)
    assert isinstance(body, dict)
    assert body["error"] in ("invalid_limit", "invalid_cursor", "invalid_versions")


async def test_stats_count_endpoints_across_identities(start_service: Start) -> None:
    service = await start_service()
    for n in range(30):
        await connect(service, f"u{n}")
    event = parse_event(reachability("u0", "E2", 2, True, connected=True).items())
    assert isinstance(event, ReachabilityEvent)
    await service.store.apply_reachability(event)

    stats = await get_json(service, f"{BASE}/stats")
    assert stats == {"online": 30, "pending_offline": 0, "endpoints": 31}
    other = await get_json(service, f"/v1/services/{OTHER_SERVICE_SID}/stats")
    assert other == {"online": 0, "pending_offline": 0, "endpoints": 0}


async def test_the_api_token_is_required_when_set(start_service: Start) -> None:
    service = await start_service(api_token="s3cret")
    path = f"{BASE}/identities/alice"

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        response = await service.client.get(path, headers=headers)
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    ok = await service.client.get(path, headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    assert (await service.client.get("/healthz")).status == 200


async def test_unknown_routes_and_methods_are_json_errors(start_service: Start) -> None:
    service = await start_service()
    missing = await get_json(service, "/v2/nothing", 404)
    assert isinstance(missing, dict)
    assert missing["error"] == "not_found"
    response = await service.client.delete(f"{BASE}/stats")
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


async def test_health_and_readiness(start_service: Start, private_redis: RedisServer) -> None:
    service = await start_service(redis_url=private_redis.url)
    assert await get_json(service, "/healthz") == {"status": "ok"}
    assert await get_json(service, "/readyz") == {"status": "ready"}

    private_redis.stop()
    assert await get_json(service, "/healthz") == {"status": "ok"}
    body = await get_json(service, "/readyz", 503)
    assert isinstance(body, dict)
    assert body["error"] == "store_unavailable"
    unavailable = await get_json(service, f"{BASE}/identities/alice", 503)
    assert isinstance(unavailable, dict)
    assert unavailable["error"] == "store_unavailable"

    private_redis.start()
    assert await get_json(service, "/readyz") == {"status": "ready"}


@pytest.mark.parametrize(
    "cursor",
    [
        base64.urlsafe_b64encode(b"[" * 5000).decode(),
        base64.urlsafe_b64encode(b'[3, "a\\ud800"]').decode(),
    ],
)
async def test_a_crafted_cursor_is_a_400(start_service: Start, cursor: str) -> None:
    service = await start_service()
    body = await get_json(service, f"{BASE}/online?cursor={cursor}", 400)
    assert isinstance(body, dict)
    assert body["error"] == "invalid_cursor"


async def test_a_lookup_name_that_is_not_unicode_is_a_400(start_service: Start) -> None:
    service = await start_service()
    response = await service.client.post(
        f"{BASE}/lookup", data=b'{"identities": ["ok", "bad\\udc80"]}'
    )
    assert response.status == 400
    assert "identities[1]" in (await response.json())["message"]


async def test_a_lookup_of_the_longest_names_is_not_bound_by_the_webhook_limit(
    start_service: Start,
) -> None:
    service = await start_service(max_body_bytes=1024)
    names = [f"{n:04d}" + "é" * 1020 for n in range(1000)]
    body = json.dumps({"identities": names}).encode()  # about 6 MB, escaped

    response = await service.client.post(f"{BASE}/lookup", data=io.BytesIO(body))

    assert response.status == 200
    assert len((await response.json())["identities"]) == 1000


async def test_a_burst_of_queries_waits_for_a_connection_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    # Far more queries at once than connections: each waits for a free one.
    store = make_store(redis_client(redis_server.url, max_connections=2), None)
    names = [f"user-{n}" for n in range(100)]
    try:
        pages = await asyncio.gather(*(store.lookup(SERVICE_SID, names) for _ in range(30)))
    finally:
        await store.close()
    assert [len(page) for page in pages] == [100] * 30
