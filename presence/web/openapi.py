"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``, assembled from the
application's route table.

Each handler declares its operation beside it, in the module that holds it
(``@openapi.documented(get=Operation(...))``); the document takes every route's method and
path from ``app.router`` and its operation from the route's handler, and is not built at all
while a route has none (``UndocumentedRoute``), so a route cannot exist without its entry.

Kept here is what the operations share: the schemas generated from the types the service
validates and answers with (the event models of ``presence.events``, a JSON body as they are,
a form body as text where a form carries text, and the reply types of ``replies.py``), the
builders of parameters, replies and ``$ref``s, and the document's info. Written by hand is
only what a type cannot say: parameters, which reply comes when, and prose.
``tests/test_openapi.py`` checks the document against the router and real replies.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from presence import __version__
from presence.events import MODELS, event_types, parse_event
from presence.twilio import FORM, JSON
from presence.twilio.samples import sample
from presence.web import replies

Schema = dict[str, Any]

DESCRIPTION = """\
Who is online, right now: presence for Twilio Sync, kept in Redis.

Twilio Sync posts its webhooks to `POST /webhooks/sync`; the query API under `/v1/` answers
from Redis. Every error is JSON, `{"error": code, "message": text}`: besides the replies
listed for each operation, an unknown path is answered `404` (`not_found`) and a method a
path does not serve `405` (`method_not_allowed`, with `Allow`). When `PRESENCE_API_TOKEN` is
set, every `/v1/` request needs `Authorization: Bearer <token>` (else `401`)."""

TAGS = {
    "query": "Who is online",
    "push": "Push subscriptions: presence changes POSTed to your backend",
    "webhooks": "Twilio Sync's events in",
    "operations": "Health, readiness, metrics",
    "dashboard": "The live page for operators",
}
"""The groups of operations, in the document's order: each operation names one."""

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
    replies.NewSubscription,
    replies.SubscriptionChange,
    replies.Rotation,
    replies.SubscriptionObject,
    replies.SubscriptionWithSecret,
    replies.SubscriptionList,
    replies.AttemptList,
    replies.PingOutcome,
)

# ---------------------------------------------------------------------------------------------
# Operations, declared beside their handlers


@dataclass(frozen=True)
class Operation:
    """One operation of the document, declared beside its handler with ``documented``: all
    of it but its method and path, which the route table gives."""

    operation_id: str
    summary: str
    tag: str
    """One of ``TAGS``."""
    responses: Mapping[str, Schema]
    """By status code, as strings."""
    description: str | None = None
    parameters: Sequence[Schema] = ()
    """The operation's own query and header parameters."""
    path_parameters: Sequence[Schema] = ()
    """The parameters of its path: every operation on one path declares the same."""
    request_body: Schema | None = None
    bearer: bool = False
    """Needs ``Authorization: Bearer <PRESENCE_API_TOKEN>``, as all of ``/v1/`` does."""
    schemas: Mapping[str, Schema] = field(default_factory=dict)
    """Components that only this operation's own limits can say (the webhook's)."""

    def spec(self) -> Schema:
        """The OpenAPI operation object."""
        spec: Schema = {
            "operationId": self.operation_id,
            "summary": self.summary,
            "tags": [self.tag],
        }
        if self.bearer:
            spec["security"] = [{"bearerAuth": []}]
        if self.description is not None:
            spec["description"] = self.description
        if self.parameters:
            spec["parameters"] = list(self.parameters)
        if self.request_body is not None:
            spec["requestBody"] = self.request_body
        spec["responses"] = dict(self.responses)
        return spec


HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

_OPERATIONS = "__openapi_operations__"
"""The attribute of a documented handler: its operation for each method, lower case."""


def documented(
    *,
    get: Operation | None = None,
    post: Operation | None = None,
    put: Operation | None = None,
    patch: Operation | None = None,
    delete: Operation | None = None,
) -> Callable[[HandlerT], HandlerT]:
    """Declares the operation a handler serves under each method it is routed with. A
    ``GET`` documents aiohttp's ``HEAD`` beside it; a route under any other method fails
    the document."""
    given = {"get": get, "post": post, "put": put, "patch": patch, "delete": delete}
    operations = {method: found for method, found in given.items() if found is not None}
    if not operations:
        raise TypeError("documented() needs the operation of at least one method")

    def declare(handler: HandlerT) -> HandlerT:
        setattr(handler, _OPERATIONS, operations)
        return handler

    return declare


def _declared(handler: object) -> Mapping[str, Operation]:
    # A bound method reads its function's attributes: a method declared in its class is
    # found through the bound method the route holds.
    operations = getattr(handler, _OPERATIONS, None)
    return operations if isinstance(operations, dict) else {}


class UndocumentedRoute(Exception):
    """A route whose handler declares no operation for its method, or whose operation does
    not name its path's parameters: the document is not built."""


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
    for reply_type in REPLY_TYPES:
        generated = TypeAdapter(reply_type).json_schema(ref_template=REF)
        for name, schema in generated.pop("$defs", {}).items():
            schemas[name] = _tidy(schema)
        schemas[reply_type.__name__] = _tidy(generated)
    return schemas


def _all_event_types() -> list[str]:
    return [event_type for model in MODELS for event_type in event_types(model)]


@cache
def _shared_schemas() -> dict[str, Schema]:
    """The component schemas of the types, whichever routes the document has."""
    return {
        **_reply_schemas(),
        "ServiceSid": TypeAdapter(replies.ServiceSid).json_schema(),
        "Identity": TypeAdapter(replies.Identity).json_schema(),
        "EventType": {"type": "string", "enum": _all_event_types()},
        **_event_schemas(),
    }


def ref(name: str) -> Schema:
    """A reference to the component schema ``name``."""
    return {"$ref": REF.format(model=name)}


# ---------------------------------------------------------------------------------------------
# The webhook's events


def _sync_event(suffix: str, max_parameters: int) -> Schema:
    """Every listed event type (one model each, its EventTypes in an enum), or any other
    EventType, accepted and ignored."""
    other = {
        "type": "object",
        "required": ["EventType"],
        "properties": {"EventType": {"type": "string", "minLength": 1, "not": ref("EventType")}},
        "description": "An EventType the reference does not list: answered `ignored`.",
    }
    return {
        "type": "object",
        "maxProperties": max_parameters,
        "description": (
            "The parameters of one Sync event. Parameters the reference does not list are "
            "ignored; a listed parameter given twice is refused."
        ),
        "oneOf": [*(ref(model.__name__ + suffix) for model in MODELS), other],
    }


def sync_event_schemas(max_parameters: int) -> dict[str, Schema]:
    """``SyncEventForm`` and ``SyncEventJson``: the parameters of one Sync event, at most
    ``max_parameters`` of them, as a form and as JSON."""
    return {
        "SyncEventForm": _sync_event("Form", max_parameters),
        "SyncEventJson": _sync_event("", max_parameters),
    }


def _form_value(value: Any, schema: Schema) -> Any:
    """A value as a form example carries it: JSON text where the form schema says text (the
    ``*Data`` parameters), typed as its schema says otherwise."""
    if schema.get("type") == "string" and not isinstance(value, str):
        return json.dumps(value)
    return value


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


def sync_event_body() -> Schema:
    """The request body of a Sync webhook, a form or JSON (``sync_event_schemas``), with a
    valid event of each type as an example."""
    return {
        "required": True,
        "content": {
            FORM: {"schema": ref("SyncEventForm"), "examples": _examples(form=True)},
            JSON: {"schema": ref("SyncEventJson"), "examples": _examples(form=False)},
        },
    }


# ---------------------------------------------------------------------------------------------
# Parameters and replies


def json_content(schema: Schema) -> Schema:
    """A JSON body of this schema."""
    return {JSON: {"schema": schema}}


def reply(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    """A JSON reply."""
    found: Schema = {"description": description, "content": json_content(schema)}
    if headers:
        found["headers"] = headers
    return found


def error(description: str, *codes: str, headers: Schema | None = None) -> Schema:
    """An error reply whose ``error`` is one of ``codes``."""
    schema = {"allOf": [ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    return reply(description, schema, headers)


def required_header(example: str) -> Schema:
    """A header every such reply carries."""
    return {"required": True, "schema": {"type": "string", "example": example}}


def response_ref(name: str) -> Schema:
    """A reference to the shared reply ``name`` (``Unauthorized``, ``NotFound``,
    ``MethodNotAllowed``, ``StoreUnavailable``)."""
    return {"$ref": f"#/components/responses/{name}"}


def path_parameter(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query_parameter(name: str, schema: Schema, description: str | None = None) -> Schema:
    """An optional query parameter."""
    parameter: Schema = {"name": name, "in": "query", "required": False}
    if description is not None:
        parameter["description"] = description
    parameter["schema"] = schema
    return parameter


def header_parameter(name: str, description: str) -> Schema:
    """An optional request header."""
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


SERVICE_SID = path_parameter(
    "service_sid", "the Sync service: IS + 32 hex digits", ref("ServiceSid")
)
"""The first parameter of every path of the query API."""


def query_operation(
    operation_id: str,
    summary: str,
    ok: Schema,
    *codes: str,
    description: str | None = None,
    parameters: Sequence[Schema] = (),
    path_parameters: Sequence[Schema] = (SERVICE_SID,),
    request_body: Schema | None = None,
    more_responses: Mapping[str, Schema] | None = None,
) -> Operation:
    """An operation of the query API: bearer auth, its ``ok`` reply, the error codes of its
    400, then 401 and 503; ``more_responses`` adds replies or replaces those."""
    responses = {
        "200": ok,
        "400": error("a malformed request: " + ", ".join(codes), *codes),
        "401": response_ref("Unauthorized"),
        **(more_responses or {}),
    }
    responses.setdefault("503", response_ref("StoreUnavailable"))
    return Operation(
        operation_id,
        summary,
        "query",
        responses,
        description=description,
        parameters=parameters,
        path_parameters=path_parameters,
        request_body=request_body,
        bearer=True,
    )


def _shared_responses() -> Schema:
    return {
        "Unauthorized": error(
            "`PRESENCE_API_TOKEN` is set and the request lacks "
            "`Authorization: Bearer <token>` (`unauthorized`)",
            "unauthorized",
            headers={"WWW-Authenticate": required_header('Bearer realm="presence"')},
        ),
        "NotFound": error("no such path (`not_found`)", "not_found"),
        "MethodNotAllowed": error(
            "the path does not serve this method (`method_not_allowed`)",
            "method_not_allowed",
            headers={"Allow": required_header("GET,HEAD")},
        ),
        "StoreUnavailable": error(
            "Redis cannot be reached (`store_unavailable`); the request took effect in full "
            "or not at all, so a retry is safe",
            "store_unavailable",
        ),
    }


# ---------------------------------------------------------------------------------------------
# The document, from the route table


def _routed_operations(router: web.UrlDispatcher) -> dict[str, dict[str, Operation]]:
    """Each routed path's operations by method; raises ``UndocumentedRoute`` for a route
    whose handler declares none for it."""
    gets = {route.resource for route in router.routes() if route.method == "GET"}
    paths: dict[str, dict[str, Operation]] = {}
    for route in router.routes():
        resource = route.resource
        assert resource is not None  # a route table's routes all have their resource
        if route.method == "HEAD" and resource in gets:
            continue  # aiohttp's HEAD beside a GET, which the GET documents
        method = route.method.lower()
        operation = _declared(route.handler).get(method)
        if operation is None:
            handler = getattr(route.handler, "__qualname__", repr(route.handler))
            raise UndocumentedRoute(
                f"{route.method} {resource.canonical}: its handler {handler} declares no "
                f"operation for {route.method} (@openapi.documented)"
            )
        paths.setdefault(resource.canonical, {})[method] = operation
    return paths


def _path_parameters(path: str, operations: Mapping[str, Operation]) -> list[Schema]:
    """The parameters of ``path``: every operation on it declares the same, named as the path
    names them."""
    declared = [list(operation.path_parameters) for operation in operations.values()]
    names = sorted(parameter["name"] for parameter in declared[0])
    if names != sorted(re.findall(r"\{([^}]+)\}", path)) or any(
        other != declared[0] for other in declared
    ):
        raise UndocumentedRoute(f"{path}: its operations do not all declare its parameters")
    return declared[0]


def _path_item(path: str, operations: Mapping[str, Operation]) -> Schema:
    """The path's item: its parameters, then an operation per method."""
    parameters = _path_parameters(path, operations)
    item: Schema = {"parameters": parameters} if parameters else {}
    for method, operation in operations.items():
        if operation.tag not in TAGS:
            raise ValueError(f"{method.upper()} {path}: tag {operation.tag!r} is not in TAGS")
        item[method] = operation.spec()
    return item


def _component_schemas(operations: Iterable[Operation]) -> dict[str, Schema]:
    schemas = dict(_shared_schemas())
    for operation in operations:
        for name, schema in operation.schemas.items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different component schemas are named {name}")
    return schemas


def _components(operations: Iterable[Operation]) -> Schema:
    return {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "`PRESENCE_API_TOKEN`, needed by `/v1/` when it is set.",
            }
        },
        "schemas": _component_schemas(operations),
        "responses": _shared_responses(),
    }


def _assemble(router: web.UrlDispatcher) -> Schema:
    """The document, sharing its parts with the declarations: never to be changed."""
    routed = _routed_operations(router)
    operations = [operation for methods in routed.values() for operation in methods.values()]
    ids = [operation.operation_id for operation in operations]
    if len(set(ids)) != len(ids):
        raise ValueError(f"an operationId is declared twice: {sorted(ids)}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "presence",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": {path: _path_item(path, methods) for path, methods in routed.items()},
        "components": _components(operations),
    }


def openapi_document(router: web.UrlDispatcher) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes of ``router`` (the query API, the webhook
    receiver, health, metrics and the dashboard, in the service's), the caller's own copy.

    Raises ``UndocumentedRoute`` for a route whose handler declares no operation for it."""
    return copy.deepcopy(_assemble(router))


def openapi_json(router: web.UrlDispatcher) -> str:
    """``openapi_document(router)`` as the text ``/openapi.json`` sends."""
    return json.dumps(_assemble(router), indent=1)
