"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``.

Built once, from the same limits the handlers enforce (``presence.events``,
``presence.web.queries``, ``presence.web.webhooks``), so a documented valid request is a
valid one. ``tests/test_openapi.py`` checks it against the router and real replies.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from presence.events import MAX_NAME_LENGTH, MAX_SAFE_INTEGER
from presence.metrics import CONTENT_TYPE as METRICS_TYPE
from presence.signature import SETTINGS_HEADER, SIGNATURE_HEADER
from presence.store.base import Outcome
from presence.web.queries import DEFAULT_PAGE, MAX_LOOKUP, MAX_LOOKUP_BYTES, MAX_PAGE
from presence.web.webhooks import FORM, IDEMPOTENCY_HEADER, JSON, MAX_PARAMETERS

Schema = dict[str, Any]

DESCRIPTION = """\
Who is online, right now: presence for Twilio Sync, kept in Redis.

Twilio Sync posts its webhooks to `POST /webhooks/sync`; the query API under `/v1/` answers
from Redis. Every error is JSON, `{"error": code, "message": text}`: besides the replies
listed for each operation, an unknown path is answered `404` (`not_found`) and a method a
path does not serve `405` (`method_not_allowed`, with `Allow`). When `PRESENCE_API_TOKEN` is
set, every `/v1/` request needs `Authorization: Bearer <token>` (else `401`)."""

# ---------------------------------------------------------------------------------------------
# Small schema builders


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(pattern: str | None = None, **keywords: Any) -> Schema:
    schema: Schema = {"type": "string", **keywords}
    if pattern is not None:
        schema["pattern"] = pattern
    return schema


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _count(description: str) -> Schema:
    return {"type": "integer", "minimum": 0, "description": description}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _reply(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    reply: Schema = {"description": description, "content": _json(schema)}
    if headers:
        reply["headers"] = headers
    return reply


def _error(description: str, *codes: str, headers: Schema | None = None) -> Schema:
    """An error reply whose ``error`` is one of ``codes``."""
    schema = {"allOf": [_ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    return _reply(description, schema, headers)


def _required_header(example: str | None = None) -> Schema:
    schema = _string() if example is None else _string(example=example)
    return {"required": True, "schema": schema}


def _response_ref(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


# ---------------------------------------------------------------------------------------------
# The webhook's parameters, per Twilio's reference (shared/reference/sync-webhooks.md)

_SID_PREFIXES = {
    "AccountSid": "AC",
    "ServiceSid": "IS",
    "DocumentSid": "ET",
    "ListSid": "ES",
    "MapSid": "MP",
}
_COUNTS = {
    "EventId",
    "DocumentRevision",
    "ListRevision",
    "MapRevision",
    "ItemIndex",
    "ItemRevision",
}
_NAMES = {"Identity", "EndpointId", "ItemKey"}
_TEXTS = {"DocumentUniqueName", "ListUniqueName", "MapUniqueName"}
_DATA = {"DocumentData", "ItemData"}
_BOOLEANS = {"IsIdentityOnline"}

_COMMON_REQUIRED = ("AccountSid", "ServiceSid", "Identity")


def _family(subject: str, *extra: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Required and optional parameters of a document, list or map event."""
    return (f"{subject}Sid", f"{subject}Revision", *extra), ("EndpointId", f"{subject}UniqueName")


_REACHABILITY = (("EndpointId", "EventId", "IsIdentityOnline"), ())
_LIST_ITEM = ("EventId", "ItemIndex")
_MAP_ITEM = ("EventId", "ItemKey")
_ITEM_VALUE = ("ItemRevision", "ItemData")

EVENT_PARAMETERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "endpoint_connected": _REACHABILITY,
    "endpoint_disconnected": _REACHABILITY,
    "document_created": _family("Document", "DocumentData"),
    "document_updated": _family("Document", "DocumentData"),
    "document_removed": _family("Document"),
    "list_created": _family("List"),
    "list_removed": _family("List"),
    "list_item_added": _family("List", *_LIST_ITEM, *_ITEM_VALUE),
    "list_item_updated": _family("List", *_LIST_ITEM, *_ITEM_VALUE),
    "list_item_removed": _family("List", *_LIST_ITEM),
    "map_created": _family("Map"),
    "map_removed": _family("Map"),
    "map_item_added": _family("Map", *_MAP_ITEM, *_ITEM_VALUE),
    "map_item_updated": _family("Map", *_MAP_ITEM, *_ITEM_VALUE),
    "map_item_removed": _family("Map", *_MAP_ITEM),
}
"""Per EventType, the parameters beyond the common ones: (required, optional)."""

_DIGITS = f"^[0-9]{{1,{len(str(MAX_SAFE_INTEGER)) - 1}}}$"
"""Digit strings that are certainly at most 2^53-1 (15 digits)."""
_TRUE_OR_FALSE = "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"


def _parameter(name: str, *, json_body: bool, optional: bool) -> Schema:
    """The schema of one webhook parameter; a form carries every value as text, a JSON
    object may carry numbers, booleans, JSON values and nulls (for optional parameters)."""
    schema: Schema
    if name in _SID_PREFIXES:
        prefix = _SID_PREFIXES[name]
        schema = _string(f"^{prefix}[0-9a-fA-F]{{32}}$", description=f"{prefix} + 32 hex digits")
    elif name in _COUNTS:
        number: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER}
        schema = {"anyOf": [number, _string(_DIGITS)]} if json_body else number
    elif name in _BOOLEANS:
        flag: Schema = {"type": "boolean"}
        schema = {"anyOf": [flag, _string(_TRUE_OR_FALSE)]} if json_body else flag
        schema["description"] = "true or false, in any case"
    elif name in _NAMES:
        schema = _string(minLength=1, maxLength=MAX_NAME_LENGTH)
    elif name in _TEXTS:
        schema = _string()
    elif name in _DATA:
        text = _string(contentMediaType="application/json", description="JSON text")
        value: Schema = {"type": ["object", "array", "number", "boolean", "null"]}
        schema = {"anyOf": [value, text]} if json_body else text
    else:
        raise ValueError(f"no schema for the webhook parameter {name}")
    if json_body and optional:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _event(event_type: str, *, json_body: bool) -> Schema:
    required, optional = EVENT_PARAMETERS[event_type]
    event = _object(
        {"EventType": {"const": event_type}}
        | {
            name: _parameter(name, json_body=json_body, optional=False)
            for name in (*_COMMON_REQUIRED, *required)
        },
        {name: _parameter(name, json_body=json_body, optional=True) for name in optional},
    )
    event["title"] = event_type
    return event


def _webhook(*, json_body: bool) -> Schema:
    """Every listed event type, or any other EventType (accepted and ignored)."""
    other = _object({"EventType": {"type": "string", "minLength": 1, "not": _ref("EventType")}})
    other["title"] = "another EventType"
    other["description"] = "An EventType the reference does not list: answered `ignored`."
    return {
        "type": "object",
        "maxProperties": MAX_PARAMETERS,
        "description": (
            "The parameters of one Sync event. Parameters the reference does not list are "
            "ignored; a listed parameter given twice is refused."
        ),
        "oneOf": [
            *(_event(event_type, json_body=json_body) for event_type in EVENT_PARAMETERS),
            other,
        ],
    }


def _example(event_type: str, *, json_body: bool) -> Schema:
    """A valid event of this type, as Twilio would send it. The examples, in order, are a
    sequence a receiver applies in full: each item event has an EventId of its own."""
    required, optional = EVENT_PARAMETERS[event_type]
    values: Schema = {
        "AccountSid": "AC" + "0123456789abcdef" * 2,
        "ServiceSid": "IS" + "fedcba9876543210" * 2,
        "Identity": "alice",
        "EndpointId": "EP-alice-1",
        "EventId": 40 + list(EVENT_PARAMETERS).index(event_type),
        "IsIdentityOnline": event_type == "endpoint_connected",
        "DocumentSid": "ET" + "1" * 32,
        "ListSid": "ES" + "2" * 32,
        "MapSid": "MP" + "3" * 32,
        "DocumentRevision": 3,
        "ListRevision": 7,
        "MapRevision": 5,
        "DocumentUniqueName": "settings",
        "ListUniqueName": "todo",
        "MapUniqueName": "scores",
        "ItemIndex": 4,
        "ItemKey": "k1",
        "ItemRevision": 2,
        "DocumentData": {"theme": "dark"},
        "ItemData": {"text": "milk"},
    }
    if not json_body:  # in a form, *Data is JSON text
        for name in _DATA:
            values[name] = json.dumps(values[name])
    names = (*_COMMON_REQUIRED, *required, *optional)
    return {"EventType": event_type} | {name: values[name] for name in names}


def _examples(*, json_body: bool) -> Schema:
    return {
        event_type: {"summary": event_type, "value": _example(event_type, json_body=json_body)}
        for event_type in EVENT_PARAMETERS
    }


# ---------------------------------------------------------------------------------------------
# Components


def _components() -> Schema:
    identity = _string(minLength=1, maxLength=MAX_NAME_LENGTH)
    return {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "`PRESENCE_API_TOKEN`, needed by `/v1/` when it is set.",
            }
        },
        "schemas": {
            "Error": {
                **_object({"error": _string(description="a code"), "message": _string()}),
                "description": "Every error reply; some carry more members.",
            },
            "ServiceSid": _string(r"^IS[0-9a-fA-F]{32}$", example="IS" + "0" * 32),
            "Identity": identity,
            "IdentityPresence": _object(
                {
                    "service_sid": _ref("ServiceSid"),
                    "identity": identity,
                    "online": {
                        "type": "boolean",
                        "description": "published online, including while pending offline",
                    },
                    "pending_offline": {
                        "type": "boolean",
                        "description": "gone offline, still published online for the grace period",
                    },
                    "endpoints": {
                        "type": "array",
                        "items": _string(),
                        "description": "connected EndpointIds, sorted",
                    },
                    "last_event_id": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "the identity's highest EventId; null if never seen",
                    },
                    "changed_at": {
                        "type": ["string", "null"],
                        "format": "date-time",
                        "description": "when the last change was published; null before it",
                    },
                    "version": _count("published changes so far; 0 for an identity never seen"),
                }
            ),
            "Lookup": _object(
                {
                    "identities": {
                        "type": "array",
                        "items": _ref("Identity"),
                        "minItems": 1,
                        "maxItems": MAX_LOOKUP,
                    }
                }
            ),
            "Lookups": _object(
                {"identities": {"type": "array", "items": _ref("IdentityPresence")}}
            ),
            "OnlinePage": _object(
                {
                    "identities": {"type": "array", "items": _string()},
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "the cursor of the next page; null after the last",
                    },
                }
            ),
            "Stats": _object(
                {
                    "online": _count("identities online, pending offline included"),
                    "pending_offline": _count("identities pending offline"),
                    "endpoints": _count("connected endpoints"),
                }
            ),
            "EventType": {"type": "string", "enum": list(EVENT_PARAMETERS)},
            "SyncEventForm": _webhook(json_body=False),
            "SyncEventJson": _webhook(json_body=True),
            "WebhookOutcome": _object({"status": {"enum": [outcome.value for outcome in Outcome]}}),
            "InvalidPayload": {
                "allOf": [
                    _ref("Error"),
                    _object(
                        {
                            "error": {"const": "invalid_payload"},
                            "detail": {
                                "type": "array",
                                "minItems": 1,
                                "items": _object({"field": _string(), "message": _string()}),
                            },
                        }
                    ),
                ]
            },
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
                    "schema": _ref("Identity"),
                },
            ],
            "get": _query(
                "getIdentity",
                "Is this identity online? (never seen: offline, version 0)",
                _reply("the identity's presence", _ref("IdentityPresence")),
                "invalid_service_sid",
                "invalid_identity",
            ),
        },
        base + "/lookup": {
            "parameters": [_SERVICE_SID],
            "post": _query(
                "lookupIdentities",
                f"Which of these (1 to {MAX_LOOKUP}) are online? Answered in request order",
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
                description=(
                    "Follow `next_cursor` until it is null: every identity that stays online "
                    "throughout the walk is listed exactly once; identities pending offline "
                    "are listed."
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
                        "schema": _string(),
                    },
                ],
            ),
        },
        base + "/stats": {
            "parameters": [_SERVICE_SID],
            "get": _query(
                "getStats",
                "How many identities are online and pending offline, and endpoints connected",
                _reply("the service's counts", _ref("Stats")),
                "invalid_service_sid",
            ),
        },
    }


def _header(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": _string(),
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
                    "schema": _string(),
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    FORM: {
                        "schema": _ref("SyncEventForm"),
                        "examples": _examples(json_body=False),
                    },
                    JSON: {
                        "schema": _ref("SyncEventJson"),
                        "examples": _examples(json_body=True),
                    },
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
            {"200": _reply("alive", _object({"status": {"const": "ok"}}))},
        ),
        "/readyz": get(
            "readyz",
            "Readiness: 200 when Redis answers",
            {
                "200": _reply("Redis answers", _object({"status": {"const": "ready"}})),
                "503": _response_ref("StoreUnavailable"),
            },
        ),
        "/metrics": get(
            "metrics",
            "Prometheus metrics",
            {
                "200": {
                    "description": f"the Prometheus text exposition format, as `{METRICS_TYPE}`",
                    "content": {"text/plain": {"schema": _string()}},
                }
            },
        ),
        "/openapi.json": get(
            "openapi",
            "This document",
            {"200": _reply("the OpenAPI 3.1 document", {"type": "object"})},
        ),
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
        ],
        "paths": {
            "/webhooks/sync": _webhook_path(),
            **_query_paths(),
            **_operations_paths(),
        },
        "components": _components(),
    }


@cache
def _document_json() -> str:
    return json.dumps(_document(), indent=1)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document: the query API, the webhook receiver, health and metrics."""
    return copy.deepcopy(_document())


async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(text=_document_json(), content_type="application/json")
