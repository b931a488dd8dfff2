"""``POST /webhooks/sync`` over real HTTP, on a real Redis: every event type, every bad input."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from harness.processes import RedisServer
from presence.events import EVENT_TYPES
from presence.twilio.samples import (
    ACCOUNT_SID,
    DOCUMENT_SID,
    LIST_SID,
    MAP_SID,
    SERVICE_SID,
    collection_event,
    reachability,
)
from tests.support import ChangeRecorder, RunningApp, sign, signed_form, wait_until

Start = Callable[..., Awaitable[RunningApp]]
COLLECTION_TYPES = sorted(EVENT_TYPES - {"endpoint_connected", "endpoint_disconnected"})
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def _alice_version(service: RunningApp) -> int:
    return (await service.store.identity(SERVICE_SID, "alice")).version


async def test_reachability_events_are_applied(start_service: Start) -> None:
    service = await start_service()
    connect = reachability("alice", "E1", 1, True, connected=True)
    disconnect = reachability("alice", "E1", 2, False, connected=False)

    assert await service.status_of(connect) == "applied"
    assert await service.status_of(connect) == "duplicate"
    assert await service.status_of(disconnect) == "applied"
    assert await service.status_of(connect) == "stale"
    state = await service.store.identity(SERVICE_SID, "alice")
    assert state.online
    assert state.pending_offline


@pytest.mark.parametrize("event_type", COLLECTION_TYPES)
async def test_every_collection_event_is_republished_normalised(
    start_service: Start, redis: Redis, event_type: str
) -> None:
    service = await start_service()
    params = collection_event(event_type)
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        assert await service.status_of(params) == "applied"
        [message] = await recorder.sync()

    assert message["event_type"] == event_type
    assert message["account_sid"] == ACCOUNT_SID
    assert message["service_sid"] == SERVICE_SID
    assert message["identity"] == "alice"
    assert message["endpoint_id"] == "EP-alice-1"
    kind = event_type.split("_")[0]
    sid = {"document": DOCUMENT_SID, "list": LIST_SID, "map": MAP_SID}[kind]
    assert message[f"{kind}_sid"] == sid
    assert isinstance(message[f"{kind}_revision"], int)
    # Every parameter of the event's table is there, in snake_case, *Data parsed as JSON.
    for name, value in params.items():
        if name in ("EventType", "AccountSid", "ServiceSid", "Identity", "EndpointId"):
            continue
        snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
        expected = json.loads(value) if name.endswith("Data") else value
        assert str(message[snake]) == str(expected) or message[snake] == expected


async def test_a_document_event_is_published_exactly_as_documented(
    start_service: Start, redis: Redis
) -> None:
    service = await start_service()
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        await service.status_of(collection_event("document_updated"))
        assert await recorder.sync() == [
            {
                "event_type": "document_updated",
                "account_sid": ACCOUNT_SID,
                "service_sid": SERVICE_SID,
                "identity": "alice",
                "endpoint_id": "EP-alice-1",
                "document_sid": DOCUMENT_SID,
                "document_revision": 3,
                "document_unique_name": "settings",
                "document_data": {"theme": "dark", "size": [1, 2]},
            }
        ]


async def test_a_rest_initiated_event_has_no_endpoint(start_service: Start, redis: Redis) -> None:
    service = await start_service()
    params = collection_event("map_removed", Identity="system")
    del params["EndpointId"]
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        assert await service.status_of(params) == "applied"
        [message] = await recorder.sync()
    assert message["identity"] == "system"
    assert message["endpoint_id"] is None


async def test_a_retry_with_the_same_idempotency_token_is_a_duplicate(
    start_service: Start, redis: Redis
) -> None:
    service = await start_service()
    params = collection_event("document_updated")
    token = {"I-Twilio-Idempotency-Token": "c1b1d3f0-retry"}
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        assert await service.status_of(params, **token) == "applied"
        assert await service.status_of(params, **token) == "duplicate"
        assert await service.status_of(params) == "applied"
        assert len(await recorder.sync()) == 2


async def test_an_item_event_whose_event_id_was_seen_is_a_duplicate(
    start_service: Start, redis: Redis
) -> None:
    service = await start_service()
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        assert await service.status_of(collection_event("list_item_added", EventId="12")) == (
            "applied"
        )
        assert await service.status_of(collection_event("list_item_updated", EventId="12")) == (
            "duplicate"
        )
        # Late but new: published, in the order it came.
        assert await service.status_of(collection_event("list_item_added", EventId="11")) == (
            "applied"
        )
        # Another list's EventIds are its own.
        other = collection_event("list_item_added", EventId="12", ListSid="ES" + "9" * 32)
        assert await service.status_of(other) == "applied"
        assert [m["event_id"] for m in await recorder.sync()] == [12, 11, 12]


async def test_an_unknown_event_type_is_ignored(start_service: Start, redis: Redis) -> None:
    service = await start_service()
    params = {"EventType": "stream_message_published", "AccountSid": ACCOUNT_SID, "Foo": "bar"}
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        assert await service.status_of(params) == "ignored"
        assert await recorder.sync() == []


async def test_the_system_identity_is_never_tracked(start_service: Start) -> None:
    service = await start_service()
    params = reachability("system", "E1", 1, True, connected=True)

    assert await service.status_of(params) == "ignored"
    assert not (await service.store.identity(SERVICE_SID, "system")).online


async def test_unlisted_parameters_are_ignored(start_service: Start) -> None:
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)
    params |= {"DateCreated": "2026-11-23T10:00:00Z", "SomethingNew": "x"}

    assert await service.status_of(params) == "applied"


async def test_a_bad_payload_names_every_bad_field(start_service: Start) -> None:
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)
    params |= {"AccountSid": "AC123", "EventId": "-4", "IsIdentityOnline": "maybe"}
    del params["Identity"]

    response = await service.post_signed(params)

    assert response.status == 400
    body = await response.json()
    assert body["error"] == "invalid_payload"
    assert {d["field"]: d["message"] for d in body["detail"]} == {
        "AccountSid": "must be AC followed by 32 hex digits",
        "Identity": "is required",
        "EventId": "must be an integer >= 0",
        "IsIdentityOnline": "must be true or false",
    }
    assert await _alice_version(service) == 0


BAD_FIELDS: list[tuple[str, dict[str, str], str]] = [
    ("endpoint_connected", {"ServiceSid": "IS" + "g" * 32}, "ServiceSid"),
    ("endpoint_connected", {"EndpointId": ""}, "EndpointId"),
    ("endpoint_connected", {"EventId": "1.5"}, "EventId"),
    ("endpoint_connected", {"EventId": str(2**53)}, "EventId"),
    ("endpoint_disconnected", {"IsIdentityOnline": "1"}, "IsIdentityOnline"),
    ("endpoint_connected", {"Identity": "x" * 1025}, "Identity"),
    ("document_created", {"DocumentData": "{not json"}, "DocumentData"),
    ("document_updated", {"DocumentSid": "ES" + "1" * 32}, "DocumentSid"),
    ("document_removed", {"DocumentRevision": "three"}, "DocumentRevision"),
    ("list_created", {"ListSid": "ES123"}, "ListSid"),
    ("list_item_added", {"ItemIndex": "-1"}, "ItemIndex"),
    ("list_item_updated", {"ItemData": "NaN"}, "ItemData"),
    ("list_item_removed", {"EventId": ""}, "EventId"),
    ("map_created", {"MapRevision": "0x10"}, "MapRevision"),
    ("map_item_added", {"ItemKey": ""}, "ItemKey"),
    ("map_item_updated", {"ItemRevision": "-2"}, "ItemRevision"),
    ("map_item_removed", {"MapSid": "mp" + "3" * 32}, "MapSid"),
]


@pytest.mark.parametrize(("event_type", "change", "field"), BAD_FIELDS)
async def test_each_malformed_parameter_is_refused(
    start_service: Start, event_type: str, change: dict[str, str], field: str
) -> None:
    service = await start_service()
    params = (
        reachability("alice", "E1", 1, True, connected=event_type == "endpoint_connected")
        if event_type.startswith("endpoint")
        else collection_event(event_type)
    )
    params |= change
    params["EventType"] = event_type

    response = await service.post_signed(params)

    assert response.status == 400
    assert [d["field"] for d in (await response.json())["detail"]] == [field]


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
async def test_each_required_parameter_is_required(start_service: Start, event_type: str) -> None:
    service = await start_service()
    params = (
        reachability("alice", "E1", 1, True, connected=event_type == "endpoint_connected")
        if event_type.startswith("endpoint")
        else collection_event(event_type)
    )
    optional = {"EventType", "EndpointId", "DocumentUniqueName", "ListUniqueName", "MapUniqueName"}
    if event_type.startswith("endpoint"):
        optional.discard("EndpointId")
    for name in sorted(set(params) - optional):
        response = await service.post_signed({k: v for k, v in params.items() if k != name})
        assert response.status == 400, name
        assert (await response.json())["detail"] == [{"field": name, "message": "is required"}]


async def test_a_missing_event_type_is_refused(start_service: Start) -> None:
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)
    del params["EventType"]

    response = await service.post_signed(params)
    assert response.status == 400
    assert (await response.json())["detail"] == [{"field": "EventType", "message": "is required"}]


async def test_a_parameter_given_twice_is_refused(start_service: Start) -> None:
    service = await start_service()
    pairs = [*reachability("alice", "E1", 1, True, connected=True).items(), ("EventId", "9")]
    body = urlencode(pairs)
    signature = sign(service.webhook_url, pairs)

    response = await service.client.post(
        "/webhooks/sync", data=body, headers=FORM | {"X-Twilio-Signature": signature}
    )

    assert response.status == 400
    detail = (await response.json())["detail"]
    assert detail == [{"field": "EventId", "message": "given more than once"}]


async def test_a_json_body_signed_with_its_sha256_is_accepted(start_service: Start) -> None:
    service = await start_service()
    body = json.dumps(
        {
            "EventType": "endpoint_connected",
            "AccountSid": ACCOUNT_SID,
            "ServiceSid": SERVICE_SID,
            "Identity": "alice",
            "EndpointId": "E1",
            "EventId": 5,
            "IsIdentityOnline": True,
        }
    ).encode()
    path = "/webhooks/sync?bodySHA256=" + hashlib.sha256(body).hexdigest()
    url = str(service.client.make_url(path))
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": sign(url, None)}

    response = await service.client.post(path, data=body, headers=headers)
    assert response.status == 200
    assert await response.json() == {"status": "applied"}
    assert (await service.store.identity(SERVICE_SID, "alice")).last_event_id == 5

    tampered = body.replace(b'"EventId": 5', b'"EventId": 6')
    response = await service.client.post(path, data=tampered, headers=headers)
    assert response.status == 403
    unsigned_hash = await service.client.post("/webhooks/sync", data=body, headers=headers)
    assert unsigned_hash.status == 403


async def test_a_json_document_event_may_carry_its_data_as_an_object(
    start_service: Start, redis: Redis
) -> None:
    service = await start_service(allow_unsigned_webhooks=True)
    params: dict[str, Any] = dict(collection_event("document_created"))
    params["DocumentData"] = {"nested": {"deep": [1, None, True]}}
    params["DocumentRevision"] = 4
    async with ChangeRecorder(redis, "presence:sync-events") as recorder:
        response = await service.client.post("/webhooks/sync", json=params)
        assert response.status == 200
        [message] = await recorder.sync()
    assert message["document_data"] == {"nested": {"deep": [1, None, True]}}
    assert message["document_revision"] == 4


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[1, 2]", "application/json"),
        (b"{not json", "application/json"),
        (b"[" * 100_000, "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b"EventType=endpoint_connected&Identity=%FF%FE", FORM["Content-Type"]),
        (b"Identity=\xff", FORM["Content-Type"]),
        ("&".join(f"P{n}=v" for n in range(201)).encode(), FORM["Content-Type"]),
    ],
)
async def test_a_body_that_cannot_be_read_is_refused(
    start_service: Start, body: bytes, content_type: str
) -> None:
    service = await start_service(allow_unsigned_webhooks=True)

    response = await service.client.post(
        "/webhooks/sync", data=body, headers={"Content-Type": content_type}
    )

    assert response.status == 400
    reply = await response.json()
    assert reply["error"] == "invalid_payload"
    assert reply["detail"][0]["field"] == "body"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Twilio-Signature": ""},
        {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        {"X-Twilio-Signature": "Ω non-ascii"},
    ],
)
async def test_a_webhook_without_a_valid_signature_is_refused(
    start_service: Start, headers: dict[str, str]
) -> None:
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)

    response = await service.client.post(
        "/webhooks/sync", data=urlencode(params), headers=FORM | headers
    )

    assert response.status == 403
    assert (await response.json())["error"] == "invalid_signature"
    assert await _alice_version(service) == 0


async def test_a_signature_for_other_parameters_or_another_url_is_refused(
    start_service: Start,
) -> None:
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)
    signature = sign(service.webhook_url, params)
    altered = params | {"Identity": "mallory"}
    elsewhere = sign(service.webhook_url.replace("/webhooks/sync", "/other"), params)
    other_token = sign(service.webhook_url, params, token="f" * 32)

    for body, sig in ((altered, signature), (params, elsewhere), (params, other_token)):
        response = await service.client.post(
            "/webhooks/sync", data=urlencode(body), headers=FORM | {"X-Twilio-Signature": sig}
        )
        assert response.status == 403
    assert not (await service.store.identity(SERVICE_SID, "mallory")).online


async def test_either_token_is_accepted_during_a_rotation(start_service: Start) -> None:
    old, new = "a" * 32, "b" * 32
    service = await start_service(twilio_auth_token=f"{old},{new}")

    for event_id, token in ((1, old), (2, new)):
        params = reachability("a", "E1", event_id, True, connected=True)
        assert (await service.post_signed(params, token)).status == 200
    refused = await service.post_signed(reachability("a", "E1", 3, True, connected=True))
    assert refused.status == 403


async def test_behind_a_proxy_the_public_url_is_what_is_signed(start_service: Start) -> None:
    public = "https://presence.example.com/hooks/twilio-sync"
    service = await start_service(webhook_url=public)
    params = reachability("alice", "E1", 1, True, connected=True)

    for signed_url in (public, "https://presence.example.com:443/hooks/twilio-sync"):
        headers = FORM | {"X-Twilio-Signature": sign(signed_url, params)}
        response = await service.client.post(
            "/webhooks/sync", data=urlencode(params), headers=headers
        )
        assert response.status == 200
    # The URL the request reached is no longer accepted.
    assert (await service.post_signed(params)).status == 403


async def test_a_webhook_url_with_connection_overrides_is_signed_without_them(
    start_service: Start,
) -> None:
    """Twilio's connection overrides (``#rc=3&rp=ct,rt,5xx``) "do not make it into the
    signature computation": the URL without its fragment is what is checked, and nothing
    else (JSON bodies too, whose ``bodySHA256`` query goes where Twilio puts it)."""
    public = "https://presence.example.com/webhooks/sync"
    service = await start_service(webhook_url=public + "#rc=3&rp=ct,rt,5xx")

    async def post(signed_url: str, event_id: int) -> int:
        params = reachability("alice", "E1", event_id, True, connected=True)
        headers = FORM | {"X-Twilio-Signature": sign(signed_url, params)}
        response = await service.client.post(
            "/webhooks/sync", data=urlencode(params), headers=headers
        )
        return response.status

    assert await post(public, 1) == 200
    assert await post(public + "#rc=3&rp=ct,rt,5xx", 2) == 403
    assert await post(public + "#", 2) == 403
    assert await post(str(service.client.make_url("/webhooks/sync")), 2) == 403


async def test_a_signature_by_sha256_settings_is_accepted(start_service: Start) -> None:
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)
    signature = sign(service.webhook_url, params, algorithm="HMAC_SHA256")
    headers = FORM | {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }

    response = await service.client.post("/webhooks/sync", data=urlencode(params), headers=headers)
    assert response.status == 200


async def test_another_account_is_refused(start_service: Start) -> None:
    service = await start_service(account_sid="AC" + "9" * 32)
    params = reachability("alice", "E1", 1, True, connected=True)

    response = await service.post_signed(params)

    assert response.status == 403
    assert (await response.json())["error"] == "account_not_allowed"
    assert await _alice_version(service) == 0
    allowed = params | {"AccountSid": "AC" + "9" * 32}
    assert await service.status_of(allowed) == "applied"


async def test_a_body_over_the_limit_is_refused(start_service: Start) -> None:
    service = await start_service(max_body_bytes=4096)
    params = reachability("alice", "E1", 1, True, connected=True) | {"Padding": "x" * 5000}

    response = await service.post_signed(params)
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    streamed = await service.client.post("/webhooks/sync", data=chunks(), headers=FORM)
    assert streamed.status == 413
    assert await _alice_version(service) == 0


async def test_a_body_that_comes_after_its_headers_is_read_whole(start_service: Start) -> None:
    """Most bodies come with their headers and are taken at once; one that comes later, in
    pieces, is waited for."""
    service = await start_service()
    params = reachability("alice", "E1", 1, True, connected=True)
    request = signed_form(service.webhook_url, params)
    body = request["data"].encode()
    url = service.client.make_url("/webhooks/sync")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        head = [
            f"POST /webhooks/sync HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n",
            *(f"{name}: {value}\r\n" for name, value in request["headers"].items()),
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n",
        ]
        writer.write("".join(head).encode())
        await writer.drain()
        for piece in (body[:10], body[10:]):
            await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert reply.endswith(b'{"status":"applied"}')


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data", None])
async def test_an_unsupported_content_type_is_refused(
    start_service: Start, content_type: str | None
) -> None:
    service = await start_service()
    headers = {"Content-Type": content_type} if content_type else {}

    response = await service.client.post("/webhooks/sync", data=b"EventType=x", headers=headers)

    assert response.status == 415
    assert (await response.json())["error"] == "unsupported_media_type"


async def test_redis_away_answers_503_and_the_retry_applies_once(
    start_service: Start, private_redis: RedisServer
) -> None:
    service = await start_service(redis_url=private_redis.url)
    connect = reachability("alice", "E1", 1, True, connected=True)
    private_redis.stop()

    response = await service.post_signed(connect)
    assert response.status == 503
    assert (await response.json())["error"] == "store_unavailable"

    private_redis.start()
    assert await service.status_of(connect) == "applied"
    assert await service.status_of(connect) == "duplicate"
    assert await _alice_version(service) == 1


async def test_unsigned_webhooks_are_accepted_only_when_allowed(start_service: Start) -> None:
    service = await start_service(allow_unsigned_webhooks=True)
    params = reachability("alice", "E1", 1, True, connected=True)

    response = await service.client.post("/webhooks/sync", data=urlencode(params), headers=FORM)
    assert response.status == 200


async def test_a_frozen_redis_answers_503_instead_of_hanging(
    start_service: Start, private_redis: RedisServer
) -> None:
    service = await start_service(redis_url=private_redis.url)
    assert await service.status_of(reachability("alice", "E1", 1, True, connected=True)) == (
        "applied"
    )
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = await service.post_signed(reachability("alice", "E1", 2, False, connected=False))
        # Twilio gives up on a webhook after 15 s: the answer must come well before.
        assert time.monotonic() - started < 10
        assert response.status == 503
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    retry = reachability("alice", "E1", 2, False, connected=False)
    assert await service.status_of(retry) in ("applied", "duplicate")


async def test_deeply_nested_data_is_a_400_not_a_crash(start_service: Start) -> None:
    service = await start_service()
    params = collection_event("document_updated", DocumentData="[" * 100_000)

    response = await service.post_signed(params)

    assert response.status == 400
    assert [d["field"] for d in (await response.json())["detail"]] == ["DocumentData"]


async def test_text_that_is_not_unicode_is_a_400(start_service: Start) -> None:
    service = await start_service(allow_unsigned_webhooks=True)
    body = json.dumps(reachability("alice", "E1", 1, True, connected=True))
    body = body.replace('"alice"', '"ali\\ud800ce"').replace('"E1"', '"E\\udfff"')

    response = await service.client.post(
        "/webhooks/sync", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status == 400
    detail = (await response.json())["detail"]
    assert {d["field"]: d["message"] for d in detail} == {
        "Identity": "must be valid Unicode text",
        "EndpointId": "must be valid Unicode text",
    }


async def raw_request(service: RunningApp, head: bytes, body: bytes = b"") -> int:
    """Sends bytes as they are (header values need not be UTF-8); returns the status."""
    host, port = service.client.host, service.client.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_header_bytes_that_are_not_utf8_are_refused_cleanly(start_service: Start) -> None:
    service = await start_service(api_token="s3cret")
    form = urlencode(reachability("alice", "E1", 1, True, connected=True)).encode()
    post = b"POST /webhooks/sync HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded"

    signature = b"%s\r\nHost: 127.0.0.1\r\nX-Twilio-Signature: \xff\xfe" % post
    assert await raw_request(service, signature, form) == 403
    host = b"%s\r\nHost: \xff\xfe.example\r\nX-Twilio-Signature: abc=" % post
    assert await raw_request(service, host, form) == 403
    bearer = b"GET /v1/services/%s/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff"
    assert await raw_request(service, bearer % SERVICE_SID.encode()) == 401


async def test_a_token_that_is_not_ascii_is_not_used(start_service: Start, redis: Redis) -> None:
    service = await start_service(allow_unsigned_webhooks=True)
    form = urlencode(collection_event("document_updated")).encode()
    head = (
        b"POST /webhooks/sync HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nI-Twilio-Idempotency-Token: \xff"
    )

    assert await raw_request(service, head, form) == 200
    assert await raw_request(service, head, form) == 200
    assert await redis.keys("*:tok:*") == []


async def test_a_redis_busy_with_a_long_script_answers_503(
    start_service: Start, private_redis: RedisServer
) -> None:
    service = await start_service(redis_url=private_redis.url)
    admin = Redis.from_url(private_redis.url)
    await admin.config_set("busy-reply-threshold", 50)
    blocker = Redis.from_url(private_redis.url)
    runaway = asyncio.ensure_future(blocker.eval("while true do end", 0))
    try:

        async def running() -> bool:
            # Only once the script runs: a webhook sent before it would simply be applied.
            try:
                await admin.ping()
            except ResponseError as error:
                return "BUSY" in str(error)
            return False

        await wait_until(running, 10, "the long script running")

        async def busy() -> bool:
            response = await service.post_signed(reachability("a", "E1", 1, True, connected=True))
            return response.status == 503

        await wait_until(busy, 10, "a 503 while Redis runs a long script")
    finally:
        await admin.script_kill()
        with contextlib.suppress(Exception):
            await runaway
        await admin.aclose()
        await blocker.aclose()
    assert await service.status_of(reachability("a", "E1", 1, True, connected=True)) == "applied"
