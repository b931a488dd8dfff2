"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``.

The schemas are generated from the types the service validates and answers with: the event
models of ``presence.events`` (a JSON body as they are, a form body as text where a form
carries text) and the reply types of ``replies.py``. Written here by hand is only what a
type cannot say: the routes, their parameters, which reply comes when, and prose.
``tests/test_openapi.py`` checks the document against the router and real replies.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from presence.events import MAX_NAME_LENGTH, MODELS, event_types, parse_event
from presence.metrics import CONTENT_TYPE as METRICS_TYPE
from presence.twilio import FORM, IDEMPOTENCY_HEADER, JSON, SIGNATURE_HEADER
from presence.twilio import SIGNATURE_SETTINGS_HEADER as SETTINGS_HEADER
from presence.twilio.samples import sample
from presence.web import changes, dashboard, replies
from presence.web.queries import DEFAULT_PAGE, MAX_LOOKUP_BYTES, MAX_PAGE
from presence.web.webhooks import MAX_PARAMETERS

Schema = dict[str, Any]

DESCRIPTION = """\
Who is online, right now: presence for Twilio Sync, kept in Redis.

Twilio Sync posts its webhooks to `POST /webhooks/sync`; the query API under `/v1/` answers
from Redis. Every error is JSON, `{"error": code, "message": text}`: besides the replies
listed for each operation, an unknown path is answered `404` (`not_found`) and a method a
path does not serve `405` (`method_not_allowed`, with `Allow`). When `PRESENCE_API_TOKEN` is
set, every `/v1/` request needs `Authorization: Bearer <token>` (else `401`)."""

REF = "#/components/schemas/{model}"

REPLY_TYPES: tuple[type, ...] = (
    replies.Error,
    replies.InvalidPayload,
    replies.IdentityReply,
    replies.Lookup,
    replies.Lookups,
    replies.OnlinePage,
    replies.ChangesPage,
    replies.FeedFilter,
    replies.StatsReply,
    replies.ActivityReply,
    replies.WebhookOutcome,
    replies.Alive,
    replies.Ready,
)

# ---------------------------------------------------------------------------------------------
# Schemas from types


def _tidy(schema: Any) -> Any:
    """Without pydantic's generated titles (the names already say it), and with every
    ``$defs`` it nests lifted to the components."""
    if isinstance(schema, dict):
        return {k: _tidy(v) for k, v in schema.items() if k not in ("title", "$defs")}
    if isinstance(schema, list):
        return [_tidy(item) for item in schema]
    return schema


def _as_form(schema: Schema) -> Schema:
    """What a form body carries: where a JSON body may have a value typed or as text, the
    first branch (see ``presence.events``); an optional parameter is absent, never null."""
    if "anyOf" in schema:
        first = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return first | _as_form(schema["anyOf"][0])
    return schema


@cache
def _event_schemas() -> dict[str, Schema]:
    """Each event model's JSON schema (``<Model>``) and its form twin (``<Model>Form``)."""
    _, generated = models_json_schema(
        [(model, "validation") for model in MODELS], by_alias=True, ref_template=REF
    )
    schemas: dict[str, Schema] = {}
    for name, schema in _tidy(generated["$defs"]).items():
        schemas[name] = schema
        form = dict(schema)
        form["properties"] = {key: _as_form(value) for key, value in schema["properties"].items()}
        schemas[name + "Form"] = form
    return schemas


def _reply_schemas() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {}
    for reply in REPLY_TYPES:
        generated = TypeAdapter(reply).json_schema(ref_template=REF)
        for name, schema in generated.pop("$defs", {}).items():
            schemas[name] = _tidy(schema)
        schemas[reply.__name__] = _tidy(generated)
    return schemas


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _webhook(suffix: str) -> Schema:
    """Every listed event type (one model each, its EventTypes in an enum), or any other
    EventType, accepted and ignored."""
    other = {
        "type": "object",
        "required": ["EventType"],
        "properties": {"EventType": {"type": "string", "minLength": 1, "not": _ref("EventType")}},
        "description": "An EventType the reference does not list: answered `ignored`.",
    }
    return {
        "type": "object",
        "maxProperties": MAX_PARAMETERS,
        "description": (
            "The parameters of one Sync event. Parameters the reference does not list are "
            "ignored; a listed parameter given twice is refused."
        ),
        "oneOf": [*(_ref(model.__name__ + suffix) for model in MODELS), other],
    }


def _form_value(value: Any, schema: Schema) -> Any:
    """A value as a form example carries it: JSON text where the form schema says text (the
    ``*Data`` parameters), typed as its schema says otherwise."""
    if schema.get("type") == "string" and not isinstance(value, str):
        return json.dumps(value)
    return value


def _all_event_types() -> list[str]:
    return [event_type for model in MODELS for event_type in event_types(model)]


def _examples(*, form: bool) -> Schema:
    """A valid event of each type, as Twilio would send it; in order, a sequence a receiver
    applies in full (each item event has an EventId of its own)."""
    examples: Schema = {}
    for position, event_type in enumerate(_all_event_types()):
        event = parse_event(sample(event_type, event_id=40 + position).items())
        assert event is not None
        value = event.model_dump(mode="json", by_alias=True, exclude_none=True)
        if form:
            properties = _event_schemas()[type(event).__name__ + "Form"]["properties"]
            value = {key: _form_value(item, properties[key]) for key, item in value.items()}
        examples[event_type] = {"summary": event_type, "value": value}
    return examples


# ---------------------------------------------------------------------------------------------
# Replies


def _json(schema: Schema) -> Schema:
    return {JSON: {"schema": schema}}


def _reply(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    reply: Schema = {"description": description, "content": _json(schema)}
    if headers:
        reply["headers"] = headers
    return reply


def _error(description: str, *codes: str, headers: Schema | None = None) -> Schema:
    """An error reply whose ``error`` is one of ``codes``."""
    schema = {"allOf": [_ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    return _reply(description, schema, headers)


def _required_header(example: str) -> Schema:
    return {"required": True, "schema": {"type": "string", "example": example}}


def _response_ref(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _components() -> Schema:
    return {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "`PRESENCE_API_TOKEN`, needed by `/v1/` when it is set.",
            }
        },
        "schemas": {
            **_reply_schemas(),
            "ServiceSid": TypeAdapter(replies.ServiceSid).json_schema(),
            "Identity": TypeAdapter(replies.Identity).json_schema(),
            "EventType": {"type": "string", "enum": _all_event_types()},
            **_event_schemas(),
            "SyncEventForm": _webhook("Form"),
            "SyncEventJson": _webhook(""),
        },
        "responses": {
            "Unauthorized": _error(
                "`PRESENCE_API_TOKEN` is set and the request lacks "
                "`Authorization: Bearer <token>` (`unauthorized`)",
                "unauthorized",
                headers={"WWW-Authenticate": _required_header('Bearer realm="presence"')},
            ),
            "NotFound": _error("no such path (`not_found`)", "not_found"),
            "MethodNotAllowed": _error(
                "the path does not serve this method (`method_not_allowed`)",
                "method_not_allowed",
                headers={"Allow": _required_header("GET,HEAD")},
            ),
            "StoreUnavailable": _error(
                "Redis cannot be reached (`store_unavailable`); the request took effect in full "
                "or not at all, so a retry is safe",
                "store_unavailable",
            ),
        },
    }


# ---------------------------------------------------------------------------------------------
# Paths

_SERVICE_SID = {
    "name": "service_sid",
    "in": "path",
    "required": True,
    "description": "the Sync service: IS + 32 hex digits",
    "schema": _ref("ServiceSid"),
}


def _query(
    operation_id: str,
    summary: str,
    ok: Schema,
    *codes: str,
    more_responses: Schema | None = None,
    **fields: Any,
) -> Schema:
    """An operation of the query API: bearer auth, and the error codes of its 400."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["query"],
        "security": [{"bearerAuth": []}],
        **fields,
        "responses": {
            "200": ok,
            "400": _error("a malformed request: " + ", ".join(codes), *codes),
            "401": _response_ref("Unauthorized"),
            **(more_responses or {}),
            "503": _response_ref("StoreUnavailable"),
        },
    }


def _query_paths() -> Schema:
    base = "/v1/services/{service_sid}"
    return {
        base + "/identities/{identity}": {
            "parameters": [
                _SERVICE_SID,
                {
                    "name": "identity",
                    "in": "path",
                    "required": True,
                    "description": "percent-encoded; any Unicode text of 1 to "
                    f"{MAX_NAME_LENGTH} characters (`.` and `..` only through a lookup)",
                    "schema": TypeAdapter(replies.Identity).json_schema(),
                },
            ],
            "get": _query(
                "getIdentity",
                "Is this identity online? (never seen: offline, version 0)",
                _reply("the identity's presence", _ref("IdentityReply")),
                "invalid_service_sid",
                "invalid_identity",
            ),
        },
        base + "/lookup": {
            "parameters": [_SERVICE_SID],
            "post": _query(
                "lookupIdentities",
                f"Which of these (1 to {replies.MAX_LOOKUP}) are online? Answered in request order",
                _reply("each identity's presence, in request order", _ref("Lookups")),
                "invalid_service_sid",
                "invalid_body",
                requestBody={"required": True, "content": _json(_ref("Lookup"))},
                more_responses={
                    "413": _error(
                        f"the body is over {MAX_LOOKUP_BYTES // 2**20} MiB", "payload_too_large"
                    )
                },
            ),
        },
        base + "/online": {
            "parameters": [_SERVICE_SID],
            "get": _query(
                "listOnline",
                "Who is online, a page at a time",
                _reply("a page of identity names", _ref("OnlinePage")),
                "invalid_service_sid",
                "invalid_limit",
                "invalid_cursor",
                "invalid_versions",
                description=(
                    "Follow `next_cursor` until it is null: every identity that stays online "
                    "throughout the walk is listed exactly once; identities pending offline "
                    "are listed. With `versions=true`, each is `{identity, version}`: apply "
                    "a later change of it only when its version is higher."
                ),
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": DEFAULT_PAGE,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "`next_cursor` of the previous page (any other value: "
                        "`invalid_cursor`); empty or absent: the first page",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "versions",
                        "in": "query",
                        "required": False,
                        "description": "`true`: each identity with its version",
                        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
                    },
                ],
            ),
        },
        base + "/changes": _changes_path(),
        base + "/activity": {
            "parameters": [_SERVICE_SID],
            "get": _query(
                "getActivity",
                "Webhook outcomes of the last hour, a minute at a time (every replica's)",
                _reply("sixty minutes, oldest first", _ref("ActivityReply")),
                "invalid_service_sid",
                description=(
                    "Counted once a webhook's signature holds (a webhook refused before, "
                    "its ServiceSid unproven, is counted only in `/metrics`); each process "
                    "adds its counts to Redis every 2 s."
                ),
            ),
        },
        base + "/stats": {
            "parameters": [_SERVICE_SID],
            "get": _query(
                "getStats",
                "How many identities are online and pending offline, and endpoints connected",
                _reply("the service's counts", _ref("StatsReply")),
                "invalid_service_sid",
            ),
        },
    }


def _changes_path() -> Schema:
    query = [
        {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "a cursor (a page's `cursor`, an event's `id`, a listing's "
            "`feed_cursor`); absent: from now. A stream's `Last-Event-ID` overrides it",
            "schema": {"type": "string"},
        },
        {
            "name": "identity",
            "in": "query",
            "required": False,
            "description": "only the changes of these identities (repeat it: "
            f"`identity=a&identity=b`; at most {changes.MAX_FILTER})",
            "style": "form",
            "explode": True,
            "schema": {"type": "array", "items": _ref("Identity"), "maxItems": changes.MAX_FILTER},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "JSON only: changes per page at most",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": changes.MAX_LIMIT,
                "default": changes.DEFAULT_LIMIT,
            },
        },
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": "JSON only: seconds to wait for a change when there is none yet "
            "(long-poll)",
            "schema": {
                "type": "number",
                "minimum": 0,
                "maximum": changes.MAX_WAIT_SECONDS,
                "default": 0,
            },
        },
        _header(
            "Last-Event-ID",
            "a stream's last event `id`, sent by an EventSource client when it reconnects",
        ),
    ]
    ok = {
        "description": "`Accept: text/event-stream`: a stream of `event: change` (its `id:` a "
        'cursor, its `data:` the change) and `event: reset` (`data: {"reason": ...}`, then '
        f"from now), with a comment line at least every {changes.HEARTBEAT_SECONDS:g} s; otherwise "
        "a JSON page",
        "content": {
            changes.EVENT_STREAM: {"schema": {"type": "string"}},
            JSON: {"schema": _ref("ChangesPage")},
        },
    }
    codes = ("invalid_service_sid", "invalid_cursor", "invalid_identity", "invalid_limit")
    unavailable = _error(
        "Redis cannot be reached (`store_unavailable`), or `PRESENCE_MAX_STREAMS` streams are "
        "open in this process (`too_many_streams`, with `Retry-After`)",
        "store_unavailable",
        "too_many_streams",
        headers={
            "Retry-After": {
                "description": "with `too_many_streams`: seconds to wait before trying again",
                "schema": {"type": "integer", "example": changes.RETRY_AFTER_SECONDS},
            }
        },
    )
    description = (
        "Every change of the service after `since`, each once, each identity's in version "
        'order; `reset` when that is impossible (docs/changes.md, "Following changes").'
    )

    def operation(operation_id: str, summary: str, *more_codes: str, **fields: Any) -> Schema:
        found = _query(operation_id, summary, ok, *codes, *more_codes, **fields)
        found["description"] = description
        found["parameters"] = query
        found["responses"]["503"] = unavailable
        return found

    return {
        "parameters": [_SERVICE_SID],
        "get": operation("followChanges", "The change feed", "invalid_wait"),
        "post": operation(
            "followChangesOf",
            "The change feed of up to 1000 identities",
            "invalid_wait",
            "invalid_body",
            requestBody={"required": True, "content": _json(_ref("FeedFilter"))},
        ),
    }


def _header(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _webhook_path() -> Schema:
    return {
        "post": {
            "operationId": "receiveSyncWebhook",
            "summary": "A Twilio Sync webhook",
            "tags": ["webhooks"],
            "description": (
                "Checked in this order: content type (415), size (413), signature (403; a form "
                "must be UTF-8 to be checked, else 400), AccountSid (403, when "
                "`PRESENCE_ACCOUNT_SID` is set), parameters (400), then Redis (503). A 200 is "
                "sent only once the event's effect is stored."
            ),
            "parameters": [
                _header(
                    SIGNATURE_HEADER,
                    "Twilio's signature of the request, checked against every token of "
                    "`PRESENCE_TWILIO_AUTH_TOKEN` (missing or wrong: 403). Not needed when "
                    "`PRESENCE_ALLOW_UNSIGNED_WEBHOOKS` is true.",
                ),
                _header(
                    SETTINGS_HEADER,
                    "`algorithm=HMAC_SHA256` to sign with SHA-256 (default HMAC_SHA1)",
                ),
                _header(
                    IDEMPOTENCY_HEADER,
                    "Twilio's retry token: a document, list or map event whose token was "
                    "already recorded is a duplicate",
                ),
                {
                    "name": "bodySHA256",
                    "in": "query",
                    "required": False,
                    "description": "hex SHA-256 of a JSON body, which the signature covers",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    FORM: {"schema": _ref("SyncEventForm"), "examples": _examples(form=True)},
                    JSON: {"schema": _ref("SyncEventJson"), "examples": _examples(form=False)},
                },
            },
            "responses": {
                "200": _reply(
                    "`applied`: stored; `duplicate`: seen before; `stale`: superseded; "
                    "`ignored`: an EventType not listed, or a reachability event of "
                    "Identity=system",
                    _ref("WebhookOutcome"),
                ),
                "400": _reply(
                    "missing or malformed parameters (each one named), a listed parameter "
                    f"given twice, a body that is not UTF-8 or JSON, or over {MAX_PARAMETERS} "
                    "parameters",
                    _ref("InvalidPayload"),
                ),
                "403": _error(
                    "a bad signature, or an AccountSid not accepted",
                    "invalid_signature",
                    "account_not_allowed",
                ),
                "413": _error("the body is over `PRESENCE_MAX_BODY_BYTES`", "payload_too_large"),
                "415": _error("neither a form nor JSON", "unsupported_media_type"),
                "503": _response_ref("StoreUnavailable"),
            },
        }
    }


def _operations_paths() -> Schema:
    def get(operation_id: str, summary: str, responses: Schema) -> Schema:
        return {
            "get": {
                "operationId": operation_id,
                "summary": summary,
                "tags": ["operations"],
                "responses": responses,
            }
        }

    return {
        "/healthz": get(
            "healthz",
            "Liveness: 200 while the process runs",
            {"200": _reply("alive", _ref("Alive"))},
        ),
        "/readyz": get(
            "readyz",
            "Readiness: 200 when Redis answers",
            {
                "200": _reply("Redis answers", _ref("Ready")),
                "503": _response_ref("StoreUnavailable"),
            },
        ),
        "/metrics": get(
            "metrics",
            "Prometheus metrics",
            {
                "200": {
                    "description": f"the Prometheus text exposition format, as `{METRICS_TYPE}`",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/openapi.json": get(
            "openapi",
            "This document",
            {"200": _reply("the OpenAPI 3.1 document", {"type": "object"})},
        ),
    }


def _dashboard_paths() -> Schema:
    headers = {
        name: _required_header(value)
        for name, value in dashboard.HEADERS.items()
        if name == "Content-Security-Policy"
    }
    not_modified = {"description": "unchanged since the `ETag` sent in `If-None-Match`"}
    return {
        "/dashboard": {
            "get": {
                "operationId": "dashboard",
                "summary": "The live dashboard: an HTML page for operators",
                "tags": ["dashboard"],
                "description": (
                    "Who is online in a service, pending offline, endpoints, recent changes "
                    "and webhook outcomes, updating live. The page itself needs no token: it "
                    "reads `/v1/` like any client, asking for the API token when `/v1/` "
                    "answers `401`. Its `Content-Security-Policy` allows only this service's "
                    "own origin (docs/dashboard.md)."
                ),
                "responses": {
                    "200": {
                        "description": "the page",
                        "headers": headers,
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "304": not_modified,
                },
            }
        },
        "/dashboard/{asset}": {
            "parameters": [
                {
                    "name": "asset",
                    "in": "path",
                    "required": True,
                    "description": "a file of the page",
                    "schema": {"type": "string", "enum": sorted(dashboard.ASSETS)},
                }
            ],
            "get": {
                "operationId": "dashboardAsset",
                "summary": "The dashboard's style sheet, script and icon",
                "tags": ["dashboard"],
                "responses": {
                    "200": {
                        "description": "the file",
                        "headers": headers,
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in sorted(set(dashboard.ASSETS.values()))
                        },
                    },
                    "304": not_modified,
                    "404": _response_ref("NotFound"),
                },
            },
        },
    }


def _version() -> str:
    try:
        return version("presence")
    except PackageNotFoundError:
        return "0+unknown"


@cache
def _document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "presence",
            "version": _version(),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "query", "description": "Who is online"},
            {"name": "webhooks", "description": "Twilio Sync's events in"},
            {"name": "operations", "description": "Health, readiness, metrics"},
            {"name": "dashboard", "description": "The live page for operators"},
        ],
        "paths": {
            "/webhooks/sync": _webhook_path(),
            **_query_paths(),
            **_operations_paths(),
            **_dashboard_paths(),
        },
        "components": _components(),
    }


@cache
def _document_json() -> str:
    return json.dumps(_document(), indent=1)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document: the query API, the webhook receiver, health, metrics and the
    dashboard."""
    return copy.deepcopy(_document())


async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(text=_document_json(), content_type=JSON)
