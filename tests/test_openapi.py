"""The OpenAPI document at /openapi.json: valid, complete, and true of the running service.

The property-based runs drive Schemathesis' command line against the service listening on
a real port (in this process, on the suite's Redis): a subprocess keeps its blocking HTTP
client off the event loop that serves the requests.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlencode, urlsplit

import pytest
from aiohttp import ClientResponse, web
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from redis.asyncio import Redis
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from harness.processes import free_port
from presence.events import EVENT_TYPES, CollectionEvent, ReachabilityEvent
from presence.keys import Keyspace
from presence.settings import load_settings
from presence.store.connections import open_store
from presence.twilio.samples import SERVICE_SID, reachability
from presence.web import openapi
from presence.web.app import create_app, healthz
from presence.web.openapi import UndocumentedRoute, openapi_document
from presence.web.queries import MAX_LOOKUP_BYTES
from tests.support import RunningApp, sign

Start = Callable[..., Awaitable[RunningApp]]

API_TOKEN = "open-sesame"
ADMIN_TOKEN = "open-sesame-admin"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
BASE = f"/v1/services/{SERVICE_SID}"


def service_routes() -> web.UrlDispatcher:
    """The service's route table, from an app never started (its Redis is never asked)."""
    settings = load_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    return create_app(settings, open_store(settings)).router


DOCUMENT = openapi_document(service_routes())
DOCUMENT_URI = "urn:presence:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    DOCUMENT_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

SCHEMATHESIS_SEED = 20261123
SCHEMATHESIS_TIMEOUT_SECONDS = 100.0
# Every check that holds for this service. Left out: positive_data_acceptance, which expects
# every schema-valid request to succeed; a listing cursor is opaque (only one the service
# handed out is valid) and *Data must be JSON text, which JSON Schema cannot say.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
)


# ---------------------------------------------------------------------------------------------
# Helpers


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def documented_operations() -> set[tuple[str, str]]:
    """Every (method, path) of the document, the method in lower case."""
    return {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _resolve(pointer: str) -> Any:
    node: Any = DOCUMENT
    for part in pointer.lstrip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def documented_reply(path: str, method: str, status: int) -> tuple[str, dict[str, Any]]:
    """The JSON pointer and the definition of the documented reply, its $ref followed."""
    pointer = _pointer("paths", path, method, "responses", str(status))
    reply = _resolve(pointer)
    if "$ref" in reply:
        pointer = reply["$ref"].removeprefix("#")
        reply = _resolve(pointer)
    assert isinstance(reply, dict)
    return pointer, reply


def schema_validator(pointer: str) -> OAS31Validator:
    return OAS31Validator(
        {"$ref": f"{DOCUMENT_URI}#{pointer}"},
        registry=REGISTRY,
        format_checker=OAS31Validator.FORMAT_CHECKER,
    )


async def assert_documented(response: ClientResponse, path: str, method: str = "get") -> Any:
    """Fails unless the reply's status, headers, content type and body are as documented for
    ``method`` ``path`` (a documented path, or a components/responses name for routing
    errors). Returns the body."""
    if path.startswith("#"):
        pointer = _pointer("components", "responses", path[1:])
        reply = _resolve(pointer)
    else:
        pointer, reply = documented_reply(path, method, response.status)
    for name, header in reply.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{name} is missing"
    assert response.content_type in reply["content"], response.content_type
    if response.content_type != "application/json":
        return await response.text()
    body = await response.json()
    media = _pointer("content", response.content_type, "schema")
    schema_validator(pointer + media).validate(body)
    return body


@dataclass
class SchemathesisRun:
    exit_code: int
    output: str
    report: dict[str, Any]
    statuses: Counter[tuple[str, str, int]]
    """Replies by (method, path, status), from the HAR of every request made."""

    @property
    def generated(self) -> int:
        count: int = self.report["test_cases"]["generated"]
        return count

    def summary(self) -> str:
        seconds = self.report["running_time"]
        operations = self.report["operations"]["tested"]
        return f"{operations} operations, {self.generated} test cases in {seconds:.1f}s"


async def run_schemathesis(
    service: RunningApp,
    tmp_path: Path,
    *options: str,
    max_examples: int,
    token: str = API_TOKEN,
) -> SchemathesisRun:
    """``schemathesis run`` against the service's own /openapi.json, seeded, one worker,
    sending ``token``."""
    report = tmp_path / "schemathesis.json"
    har = tmp_path / "schemathesis.har.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run"),
        str(service.client.make_url("/openapi.json")),
        *("--header", f"Authorization: Bearer {token}"),
        *("--checks", ",".join(CHECKS)),
        *("--max-examples", str(max_examples)),
        *("--seed", str(SCHEMATHESIS_SEED)),
        *("--workers", "1"),
        *("--generation-database", "none"),
        *("--request-timeout", "10"),
        *("--report", "json,har"),
        *("--report-json-path", str(report), "--report-har-path", str(har)),
        "--no-color",
        *options,
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), SCHEMATHESIS_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    output = stdout.decode("utf-8", "replace")
    assert report.exists(), output
    statuses: Counter[tuple[str, str, int]] = Counter()
    for entry in json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]:
        path = urlsplit(entry["request"]["url"]).path
        statuses[entry["request"]["method"], path, entry["response"]["status"]] += 1
    assert process.returncode is not None
    return SchemathesisRun(
        process.returncode, output, json.loads(report.read_text("utf-8")), statuses
    )


# ---------------------------------------------------------------------------------------------
# The document itself


async def test_the_document_is_served_as_valid_openapi_3_1(start_service: Start) -> None:
    service = await start_service(api_token=API_TOKEN)

    response = await service.client.get("/openapi.json")

    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    validate(served)
    assert served == DOCUMENT
    assert served["openapi"] == "3.1.0"
    assert served["info"]["title"] == "presence"
    assert served["info"]["version"] == version("presence")
    assert "servers" not in served


def test_each_caller_gets_its_own_copy_of_the_document() -> None:
    routes = service_routes()
    first = openapi_document(routes)
    first["paths"].clear()
    first["components"]["schemas"]["Error"].clear()

    assert openapi_document(routes) == DOCUMENT
    assert openapi_document(routes)["paths"]


async def test_every_route_is_documented_and_every_documented_operation_is_routed(
    start_service: Start,
) -> None:
    service = await start_service(api_token=API_TOKEN)
    app = service.client.app
    assert isinstance(app, web.Application)

    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }

    assert routed == documented_operations()


async def undocumented(request: web.Request) -> web.Response:
    return web.Response()


@openapi.documented(get=openapi.query_operation("stats", "Counts", {"description": "counts"}))
async def documented_under_a_service(request: web.Request) -> web.Response:
    return web.Response()


@pytest.mark.parametrize(
    ("method", "path", "handler"),
    [
        ("GET", "/undocumented", undocumented),
        ("POST", "/healthz", healthz),  # documented for GET only
        # Its operation does not declare the path's parameters: one more, one less.
        ("GET", "/v1/services/{service_sid}/stats/{identity}", documented_under_a_service),
        ("GET", "/stats", documented_under_a_service),
    ],
)
def test_a_route_without_its_declared_operation_fails_the_document(
    method: str, path: str, handler: Any
) -> None:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route(method, path, handler)

    with pytest.raises(UndocumentedRoute, match=re.escape(path)):
        openapi_document(app.router)


def test_the_service_is_not_built_with_an_undocumented_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "presence.web.app.dashboard_routes", lambda: [web.get("/dashboard", undocumented)]
    )

    with pytest.raises(UndocumentedRoute, match="GET /dashboard"):
        service_routes()


def test_the_query_api_needs_the_bearer_token_and_nothing_else_does() -> None:
    for method, path in documented_operations():
        operation = DOCUMENT["paths"][path][method]
        if path.startswith("/v1/"):
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            assert "401" in operation["responses"], (method, path)
        else:
            assert "security" not in operation, (method, path)


def _models() -> dict[str, type[ReachabilityEvent | CollectionEvent]]:
    models: dict[str, type[ReachabilityEvent | CollectionEvent]] = {}
    for model in (ReachabilityEvent, *get_args(CollectionEvent)):
        for event_type in get_args(model.model_fields["event_type"].annotation):
            models[event_type] = model
    return models


@pytest.mark.parametrize("content", ["SyncEventForm", "SyncEventJson"])
def test_each_event_type_documents_exactly_the_parameters_its_model_validates(
    content: str,
) -> None:
    variants = [
        _resolve(variant["$ref"].removeprefix("#")) if "$ref" in variant else variant
        for variant in DOCUMENT["components"]["schemas"][content]["oneOf"]
    ]

    def types(variant: dict[str, Any]) -> list[str]:
        event_type = variant["properties"]["EventType"]
        return [event_type["const"]] if "const" in event_type else event_type.get("enum", [])

    by_type = {event_type: variant for variant in variants for event_type in types(variant)}
    assert set(by_type) == EVENT_TYPES
    assert set(DOCUMENT["components"]["schemas"]["EventType"]["enum"]) == EVENT_TYPES

    for event_type, model in _models().items():
        fields = model.model_fields.values()
        required = {field.alias for field in fields if field.is_required()}
        listed = {field.alias for field in fields}
        assert set(by_type[event_type]["required"]) == required, event_type
        assert set(by_type[event_type]["properties"]) == listed, event_type


@pytest.mark.parametrize(
    ("media_type", "component"),
    [("application/x-www-form-urlencoded", "SyncEventForm"), ("application/json", "SyncEventJson")],
)
def test_the_webhook_examples_match_their_schema(media_type: str, component: str) -> None:
    content = DOCUMENT["paths"]["/webhooks/sync"]["post"]["requestBody"]["content"][media_type]
    validator = schema_validator(_pointer("components", "schemas", component))

    assert set(content["examples"]) == EVENT_TYPES
    for example in content["examples"].values():
        validator.validate(example["value"])


# ---------------------------------------------------------------------------------------------
# The document against real replies


def _form(value: object) -> str:
    """A documented form value as it goes on the wire (OpenAPI's form serialization)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("media_type", ["application/x-www-form-urlencoded", "application/json"])
async def test_every_documented_webhook_example_is_applied(
    start_service: Start, media_type: str
) -> None:
    service = await start_service(allow_unsigned_webhooks=True)
    content = DOCUMENT["paths"]["/webhooks/sync"]["post"]["requestBody"]["content"][media_type]

    for name, example in content["examples"].items():
        value = example["value"]
        if media_type == "application/json":
            response = await service.client.post("/webhooks/sync", json=value)
        else:
            form = {key: _form(item) for key, item in value.items()}
            response = await service.client.post("/webhooks/sync", data=form)
        body = await assert_documented(response, "/webhooks/sync", "post")
        assert body == {"status": "applied"}, name


async def test_query_replies_match_the_document(start_service: Start) -> None:
    service = await start_service(api_token=API_TOKEN)
    connect = reachability("alice", "E1", 42, True, connected=True)
    assert await service.status_of(connect) == "applied"
    identity = "/v1/services/{service_sid}/identities/{identity}"
    lookup = "/v1/services/{service_sid}/lookup"
    online = "/v1/services/{service_sid}/online"
    stats = "/v1/services/{service_sid}/stats"
    client = service.client

    async def get(url: str, **headers: str) -> ClientResponse:
        return await client.get(url, headers=BEARER | headers)

    alice = await assert_documented(await get(f"{BASE}/identities/alice"), identity)
    assert alice["online"] is True
    never_seen = await assert_documented(await get(f"{BASE}/identities/bob"), identity)
    assert never_seen["version"] == 0
    await assert_documented(await get("/v1/services/IS123/identities/alice"), identity)
    found = await client.post(
        f"{BASE}/lookup", json={"identities": ["alice", "bob"]}, headers=BEARER
    )
    assert len((await assert_documented(found, lookup, "post"))["identities"]) == 2
    for bad in (b"[", b'{"identities": []}', b'{"identities": [""]}'):
        refused = await client.post(f"{BASE}/lookup", data=bad, headers=BEARER)
        assert refused.status == 400
        await assert_documented(refused, lookup, "post")
    page = await assert_documented(await get(f"{BASE}/online?limit=1"), online)
    assert page["identities"] == ["alice"]
    last = await assert_documented(await get(f"{BASE}/online?cursor={page['next_cursor']}"), online)
    assert last == {"identities": [], "next_cursor": None, "feed_cursor": page["feed_cursor"]}
    for query in ("limit=0", "limit=x", "cursor=nonsense"):
        refused = await get(f"{BASE}/online?{query}")
        assert refused.status == 400
        await assert_documented(refused, online)
    counts = await assert_documented(await get(f"{BASE}/stats"), stats)
    assert counts == {"online": 1, "pending_offline": 0, "endpoints": 1}

    unauthorized = await client.get(f"{BASE}/stats")
    assert unauthorized.status == 401
    await assert_documented(unauthorized, stats)
    wrong_token = await get(f"{BASE}/stats", Authorization="Bearer nope")
    assert wrong_token.status == 401
    await assert_documented(wrong_token, stats)
    missing = await get("/nowhere")
    assert missing.status == 404
    await assert_documented(missing, "#NotFound")
    not_allowed = await client.delete(f"{BASE}/stats", headers=BEARER)
    assert not_allowed.status == 405
    await assert_documented(not_allowed, "#MethodNotAllowed")
    too_large = await client.post(
        f"{BASE}/lookup", data=io.BytesIO(b" " * (MAX_LOOKUP_BYTES + 1)), headers=BEARER
    )
    assert too_large.status == 413
    await assert_documented(too_large, lookup, "post")

    for path in ("/healthz", "/readyz"):
        await assert_documented(await client.get(path), path)
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert "presence_webhooks" in await assert_documented(metrics, "/metrics")


async def test_change_feed_replies_match_the_document(start_service: Start) -> None:
    service = await start_service(api_token=API_TOKEN, max_streams=1)
    path = "/v1/services/{service_sid}/changes"
    feed = f"{BASE}/changes"
    client = service.client

    page = await assert_documented(await client.get(feed, headers=BEARER), path)
    assert page["reset"] is False
    assert await service.status_of(reachability("alice", "E1", 1, True, connected=True))
    later = await client.get(feed, params={"since": page["cursor"], "wait": "2"}, headers=BEARER)
    assert [c["identity"] for c in (await assert_documented(later, path))["changes"]] == ["alice"]
    filtered = await client.post(feed, json={"identities": ["alice"]}, headers=BEARER)
    await assert_documented(filtered, path, "post")
    for query in ("since=bad", "limit=0", "wait=99", "identity="):
        refused = await client.get(f"{feed}?{query}", headers=BEARER)
        assert refused.status == 400
        await assert_documented(refused, path)
    await assert_documented(await client.get(feed), path)  # 401
    stream = await client.get(feed, headers=BEARER | {"Accept": "text/event-stream"})
    _, documented = documented_reply(path, "get", stream.status)
    assert stream.status == 200
    assert stream.content_type in documented["content"]
    crowded = await client.get(feed, headers=BEARER | {"Accept": "text/event-stream"})
    assert crowded.status == 503
    assert (await assert_documented(crowded, path))["error"] == "too_many_streams"
    _, unavailable = documented_reply(path, "get", 503)
    assert set(unavailable["headers"]) <= set(crowded.headers)
    stream.close()


async def test_webhook_replies_match_the_document(start_service: Start) -> None:
    service = await start_service(api_token=API_TOKEN, max_body_bytes=4096)
    path = "/webhooks/sync"

    async def post(params: dict[str, str], **headers: str) -> Any:
        response = await service.post_signed(params, **headers)
        return await assert_documented(response, path, "post")

    connect = reachability("alice", "E1", 1, True, connected=True)
    assert await post(connect) == {"status": "applied"}
    assert await post(connect) == {"status": "duplicate"}
    older = reachability("alice", "E1", 0, False, connected=False)
    assert await post(older) == {"status": "stale"}
    assert await post(connect | {"EventType": "endpoint_teleported"}) == {"status": "ignored"}
    invalid = await post(connect | {"EventId": "-1", "AccountSid": "AC1"})
    assert {item["field"] for item in invalid["detail"]} == {"EventId", "AccountSid"}

    forged = await service.client.post(
        path,
        data=urlencode(connect),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(service.webhook_url, connect, "wrong-token"),
        },
    )
    assert forged.status == 403
    assert (await assert_documented(forged, path, "post"))["error"] == "invalid_signature"
    text = await service.client.post(path, data="hello", headers={"Content-Type": "text/plain"})
    assert text.status == 415
    await assert_documented(text, path, "post")
    large = await service.post_signed(connect | {"Padding": "x" * 5000})
    assert large.status == 413
    await assert_documented(large, path, "post")


async def test_replies_while_redis_is_away_match_the_document(start_service: Start) -> None:
    service = await start_service(
        api_token=API_TOKEN,
        allow_unsigned_webhooks=True,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    connect = reachability("alice", "E1", 1, True, connected=True)

    replies = {
        "/v1/services/{service_sid}/identities/{identity}": await service.client.get(
            f"{BASE}/identities/alice", headers=BEARER
        ),
        "/readyz": await service.client.get("/readyz"),
        "/webhooks/sync": await service.client.post("/webhooks/sync", data=connect),
    }

    for path, response in replies.items():
        assert response.status == 503, path
        method = "post" if path == "/webhooks/sync" else "get"
        body = await assert_documented(response, path, method)
        assert body["error"] == "store_unavailable"


# ---------------------------------------------------------------------------------------------
# Property-based: Schemathesis against the listening service


@pytest.mark.slow  # Schemathesis: thousands of generated requests
async def test_generated_requests_get_only_documented_replies(
    start_service: Start, redis: Redis, tmp_path: Path
) -> None:
    # The admin token reads and manages push subscriptions too: every route is open to it.
    service = await start_service(
        api_token=API_TOKEN, admin_token=ADMIN_TOKEN, allow_unsigned_webhooks=True
    )

    # The change feed is left out: its streams and long-polls hold a request open (up to
    # 30 s, or for good), which a generator's request timeout counts as a failure; its
    # replies are checked one by one in tests/test_changes.py instead.
    run = await run_schemathesis(
        service,
        tmp_path,
        *("--exclude-path-regex", "/changes$"),
        max_examples=60,
        token=ADMIN_TOKEN,
    )

    print(f"schemathesis, unsigned webhooks: {run.summary()}")
    assert run.exit_code == 0, run.output
    assert run.report["failures"] == [], run.output
    assert run.report["errors"] == [], run.output
    # Every operation but GET /openapi.json (the schema itself) and the feed was exercised.
    tested = {f"{method.upper()} {path}" for method, path in documented_operations()}
    feed = {f"{method} /v1/services/{{service_sid}}/changes" for method in ("GET", "POST")}
    assert set(run.report["valid_rates"]) == tested - {"GET /openapi.json"} - feed
    assert run.generated >= 1000
    assert not [key for key in run.statuses if key[2] >= 500], run.statuses
    # Generated webhooks reach the parser: some are applied, some refused field by field.
    assert run.statuses["POST", "/webhooks/sync", 200] > 100, run.statuses
    assert run.statuses["POST", "/webhooks/sync", 400] > 100, run.statuses
    # Generated subscriptions reach the validation: refused field by field.
    refused = sum(
        count
        for (method, path, status), count in run.statuses.items()
        if (method, status) == ("POST", 400) and path.endswith("/subscriptions")
    )
    assert refused > 10, run.statuses
    assert await redis.dbsize() > 0


@pytest.mark.slow  # Schemathesis: thousands of generated requests
async def test_generated_webhooks_without_a_signature_are_all_refused(
    start_service: Start, redis: Redis, tmp_path: Path
) -> None:
    service = await start_service(api_token=API_TOKEN)

    run = await run_schemathesis(
        service, tmp_path, "--include-path", "/webhooks/sync", max_examples=60
    )

    print(f"schemathesis, signatures required: {run.summary()}")
    assert run.exit_code == 0, run.output
    posted = Counter(
        {status: n for (method, _, status), n in run.statuses.items() if method == "POST"}
    )
    # Only what comes before the signature check may differ: the content type (415), and a
    # form that is not UTF-8 (400, which the generator does not send).
    assert set(posted) <= {403, 415}, posted
    assert posted[403] > 500, posted
    # Nothing but the storage format, which the service writes as it starts.
    written = [key async for key in redis.scan_iter()]
    assert written == [Keyspace().format], "a generated webhook was applied"
