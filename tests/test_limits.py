"""Limits against the real HTTP server and the real Redis, at their boundaries, with errors
that name the limit.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest

from harness.processes import RedisServer
from presence.twilio.samples import SERVICE_SID, reachability
from tests.hostile import (
    FORM,
    JSON,
    PATH,
    Observer,
    Start,
    World,
    event_params,
    form_body,
    json_request,
)
from tests.hostile import world as world  # the alias keeps this fixture where pytest finds it
from tests.support import RunningApp, sign


async def _stream(body: bytes, size: int = 1000) -> Any:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_the_body_limit_is_exact_and_named(
    start_service: Start, redis_server: RedisServer
) -> None:
    """PRESENCE_MAX_BODY_BYTES: a body of exactly the limit is read, one byte more is a 413
    whose message names the limit, with or without a Content-Length."""
    service: RunningApp = await start_service(max_body_bytes=4096)
    url = service.webhook_url
    base = urlencode(reachability("alice", "E1", 1, True, connected=True)) + "&Padding="
    at_limit = (base + "x" * (4096 - len(base))).encode()
    assert len(at_limit) == 4096
    headers = {
        "Content-Type": FORM,
        "X-Twilio-Signature": sign(url, parse_qsl(at_limit.decode())),
    }
    async with Observer(redis_server.url) as observer:
        response = await service.client.post(PATH, data=at_limit, headers=headers)
        assert (response.status, await response.json()) == (200, {"status": "applied"})
        await observer.published()
        over = at_limit + b"x"
        over_headers = headers | {"X-Twilio-Signature": sign(url, parse_qsl(over.decode()))}
        before = await observer.snapshot()
        for data in (over, _stream(over), _stream(b"x" * 10_000_000, 65536)):
            response = await service.client.post(PATH, data=data, headers=over_headers)
            assert response.status == 413
            assert await response.json() == {
                "error": "payload_too_large",
                "message": "the body is larger than 4096 bytes",
            }
        assert await observer.snapshot() == before
        assert await observer.published() == []


async def test_the_parameter_limit_is_exact_and_named(world: World) -> None:
    """200 parameters are read; 201 are a 400 naming the limit, in a form or in JSON, signed."""
    url = world.url()
    event = list(reachability("bounded", "E1", 1, True, connected=True).items())
    padded = [*event, *((f"P{n}", "v") for n in range(200 - len(event)))]
    assert len(padded) == 200
    status, reply = await world.post(
        "",
        form_body(padded),
        [("Content-Type", FORM), ("X-Twilio-Signature", sign(url, padded))],
    )
    assert (status, reply) == (200, {"status": "applied"})
    await world.observer.published()
    too_many = [*padded, ("P999", "v")]
    over = {
        "error": "invalid_payload",
        "message": "body: has more than 200 parameters",
        "detail": [{"field": "body", "message": "has more than 200 parameters"}],
    }
    before = await world.observer.snapshot()
    status, reply = await world.post(
        "",
        form_body(too_many),
        [("Content-Type", FORM), ("X-Twilio-Signature", sign(url, too_many))],
    )
    assert (status, reply) == (400, over)
    body = json.dumps(dict(too_many)).encode()
    query, signature = json_request(url, body)
    status, reply = await world.post(
        query, body, [("Content-Type", JSON), ("X-Twilio-Signature", signature)]
    )
    assert (status, reply) == (400, over)
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []


@pytest.mark.parametrize("field", ["Identity", "EndpointId", "ItemKey"])
async def test_the_name_limit_counts_characters_and_names_the_field(
    world: World, field: str
) -> None:
    """1024 characters (4096 bytes of emoji) are a name; 1025 are a 400 naming the field."""
    url = world.url()
    event_type = "map_item_added" if field == "ItemKey" else "endpoint_connected"
    for length, expected in ((1024, 200), (1025, 400)):
        params = event_params(event_type, "limit-" + field, "E1", 1, True) | {field: "🙂" * length}
        pairs = list(params.items())
        status, reply = await world.post(
            "",
            form_body(pairs),
            [("Content-Type", FORM), ("X-Twilio-Signature", sign(url, pairs))],
        )
        assert status == expected, reply
        if expected == 400:
            assert reply["detail"] == [
                {"field": field, "message": "must be at most 1024 characters"}
            ]
    if field == "Identity":
        found = await world.service.client.post(
            f"/v1/services/{SERVICE_SID}/lookup", json={"identities": ["🙂" * 1024]}
        )
        assert (await found.json())["identities"][0]["online"] is True
        # Percent-encoded, its request line is 12 KB: past aiohttp's default limit of 8190.
        path = f"/v1/services/{SERVICE_SID}/identities/{quote('🙂' * 1024, safe='')}"
        read = await world.service.client.get(path)
        assert read.status == 200, await read.text()
        assert (await read.json())["online"] is True


async def test_query_limits_name_themselves(start_service: Start) -> None:
    """More than 1000 names, a lookup body over 8 MiB, and a page over 1000 are refused with
    a message that names the limit."""
    service: RunningApp = await start_service()
    base = f"/v1/services/{SERVICE_SID}"
    response = await service.client.post(f"{base}/lookup", json={"identities": ["a"] * 1001})
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_body",
        "message": 'the body must be {"identities": [1 to 1000 names]}',
    }
    response = await service.client.get(f"{base}/online?limit=1001")
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_limit",
        "message": "limit must be an integer from 1 to 1000",
    }
    huge = b'{"identities": ["' + b"x" * (8 * 1024 * 1024) + b'"]}'
    for data in (io.BytesIO(huge), _stream(huge, 65536)):
        response = await service.client.post(f"{base}/lookup", data=data)
        assert response.status == 413
        reply = await response.json()
        assert reply["error"] == "payload_too_large"
        assert "8388608" in reply["message"], reply
