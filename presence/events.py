"""The Sync webhook events: one typed model per event type, validated against Twilio's tables.

``parse_event`` turns the parameters of a webhook (form or JSON) into one member of the
``SyncEvent`` union, discriminated on ``EventType``, or raises ``InvalidPayload`` naming every
bad field. Parameters the reference does not list are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from presence.twilio import is_sid, sid_pattern, sid_problem

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest EventId or revision accepted: Redis' Lua numbers are doubles, exact up to 2**53."""

MAX_NAME_LENGTH = 1024
"""Longest Identity, EndpointId or ItemKey accepted, in characters."""


def _sid(prefix: str) -> PlainValidator:
    def check(value: object) -> str:
        if is_sid(value, prefix):
            assert isinstance(value, str)
            return value
        raise PydanticCustomError("sid", sid_problem(prefix))

    return PlainValidator(check)


def _count(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise PydanticCustomError("integer", "must be an integer >= 0")
    if not 0 <= number <= MAX_SAFE_INTEGER:
        raise PydanticCustomError("integer", "must be an integer from 0 to 2^53-1")
    return number


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
    raise PydanticCustomError("boolean", "must be true or false")


MAX_DATA_DEPTH = 128
"""Deepest nesting of a ``*Data`` value: far beyond any real document, and well within what
the republished message can be serialised with."""


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def loads_strict(text: str | bytes, **options: Any) -> Any:
    """``json.loads`` refusing NaN and Infinity, which are not JSON."""
    return json.loads(text, parse_constant=_reject_constant, **options)


INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
"""The integers the republished message can hold (orjson's range): a ``*Data`` number beyond
them is refused rather than answered 500 or republished altered."""


def _data_problem(value: object) -> str | None:
    """What keeps a ``*Data`` value from being republished exactly as it came, or None."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DATA_DEPTH:
                return f"must be nested at most {MAX_DATA_DEPTH} levels deep"
            if isinstance(item, dict):
                stack.extend((key, depth + 1) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if not utf8_encodable(item):
                return "must be valid Unicode text (no lone surrogates)"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= UINT64_MAX:
                return "must hold integers within 64 bits"
        elif isinstance(item, float) and not math.isfinite(item):
            # 1e400 parses as infinity, which JSON cannot carry on.
            return "must hold numbers within the range of a double"
    return None


def utf8_encodable(text: str) -> bool:
    """False for a string holding lone surrogates (from a JSON ``\\ud800`` escape, say)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_value(value: object) -> Any:
    # In a JSON body the data may already be a JSON value; in a form it is JSON text.
    if isinstance(value, str):
        try:
            value = loads_strict(value)
        except (ValueError, RecursionError):
            raise PydanticCustomError("json", "must be valid JSON") from None
    problem = _data_problem(value)
    if problem is not None:
        raise PydanticCustomError("json", problem)
    return value


def _text_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if not utf8_encodable(value):
        return "must be valid Unicode text"
    return None


def name_problem(value: object) -> str | None:
    """What is wrong with an Identity, EndpointId or ItemKey, or None when it is fine."""
    problem = _text_problem(value)
    if problem is None and not value:
        problem = "must not be empty"
    elif problem is None and len(str(value)) > MAX_NAME_LENGTH:
        problem = f"must be at most {MAX_NAME_LENGTH} characters"
    return problem


def _checked(problem_of: Callable[[object], str | None]) -> PlainValidator:
    def check(value: object) -> str:
        problem = problem_of(value)
        if problem is not None:
            raise PydanticCustomError("string", problem)
        return str(value)

    return PlainValidator(check)


# The JSON Schema of each type, for the OpenAPI document (what the validators above accept,
# which a plain validator cannot tell pydantic). Where a JSON body may carry a value typed or
# as text, the first branch of "anyOf" is what a form carries.
_DIGITS = f"^[0-9]{{1,{len(str(MAX_SAFE_INTEGER)) - 1}}}$"
"""Digit strings that are certainly at most 2^53-1 (15 digits)."""


def _sid_schema(prefix: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": sid_pattern(prefix),
            "description": f"{prefix} + 32 hex digits",
        }
    )


_COUNT_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
        {"type": "string", "pattern": _DIGITS},
    ]
}
_BOOLEAN_SCHEMA = {
    "anyOf": [
        {"type": "boolean"},
        {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"},
    ],
    "description": "true or false, in any case",
}
_DATA_SCHEMA = {
    "anyOf": [
        {"type": "string", "contentMediaType": "application/json", "description": "JSON text"},
        {"type": ["object", "array", "number", "boolean", "null"]},
    ]
}


AccountSid = Annotated[str, _sid("AC"), _sid_schema("AC")]
ServiceSid = Annotated[str, _sid("IS"), _sid_schema("IS")]
DocumentSid = Annotated[str, _sid("ET"), _sid_schema("ET")]
ListSid = Annotated[str, _sid("ES"), _sid_schema("ES")]
MapSid = Annotated[str, _sid("MP"), _sid_schema("MP")]
Count = Annotated[int, PlainValidator(_count), WithJsonSchema(_COUNT_SCHEMA)]
TwilioBool = Annotated[bool, PlainValidator(_boolean), WithJsonSchema(_BOOLEAN_SCHEMA)]
JsonData = Annotated[Any, PlainValidator(_json_value), WithJsonSchema(_DATA_SCHEMA)]
Name = Annotated[
    str,
    _checked(name_problem),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}),
]
Text = Annotated[str, _checked(_text_problem), WithJsonSchema({"type": "string"})]


class _Event(BaseModel):
    """The parameters every Sync webhook carries."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    account_sid: AccountSid = Field(alias="AccountSid")
    service_sid: ServiceSid = Field(alias="ServiceSid")
    identity: Name = Field(alias="Identity")
    endpoint_id: Name | None = Field(default=None, alias="EndpointId")


class ReachabilityEvent(_Event):
    """``endpoint_connected`` / ``endpoint_disconnected``."""

    event_type: Literal["endpoint_connected", "endpoint_disconnected"] = Field(alias="EventType")
    endpoint_id: Name = Field(alias="EndpointId")
    event_id: Count = Field(alias="EventId")
    is_identity_online: TwilioBool = Field(alias="IsIdentityOnline")

    @property
    def connected(self) -> bool:
        return self.event_type == "endpoint_connected"


class _DocumentEvent(_Event):
    document_sid: DocumentSid = Field(alias="DocumentSid")
    document_revision: Count = Field(alias="DocumentRevision")
    document_unique_name: Text | None = Field(default=None, alias="DocumentUniqueName")

    @property
    def subject_sid(self) -> str:
        return self.document_sid


class DocumentEvent(_DocumentEvent):
    event_type: Literal["document_created", "document_updated"] = Field(alias="EventType")
    document_data: JsonData = Field(alias="DocumentData")


class DocumentRemoved(_DocumentEvent):
    event_type: Literal["document_removed"] = Field(alias="EventType")


class _ListEvent(_Event):
    list_sid: ListSid = Field(alias="ListSid")
    list_revision: Count = Field(alias="ListRevision")
    list_unique_name: Text | None = Field(default=None, alias="ListUniqueName")

    @property
    def subject_sid(self) -> str:
        return self.list_sid


class ListEvent(_ListEvent):
    event_type: Literal["list_created", "list_removed"] = Field(alias="EventType")


class ListItemEvent(_ListEvent):
    event_type: Literal["list_item_added", "list_item_updated"] = Field(alias="EventType")
    event_id: Count = Field(alias="EventId")
    item_index: Count = Field(alias="ItemIndex")
    item_revision: Count = Field(alias="ItemRevision")
    item_data: JsonData = Field(alias="ItemData")


class ListItemRemoved(_ListEvent):
    event_type: Literal["list_item_removed"] = Field(alias="EventType")
    event_id: Count = Field(alias="EventId")
    item_index: Count = Field(alias="ItemIndex")


class _MapEvent(_Event):
    map_sid: MapSid = Field(alias="MapSid")
    map_revision: Count = Field(alias="MapRevision")
    map_unique_name: Text | None = Field(default=None, alias="MapUniqueName")

    @property
    def subject_sid(self) -> str:
        return self.map_sid


class MapEvent(_MapEvent):
    event_type: Literal["map_created", "map_removed"] = Field(alias="EventType")


class MapItemEvent(_MapEvent):
    event_type: Literal["map_item_added", "map_item_updated"] = Field(alias="EventType")
    event_id: Count = Field(alias="EventId")
    item_key: Name = Field(alias="ItemKey")
    item_revision: Count = Field(alias="ItemRevision")
    item_data: JsonData = Field(alias="ItemData")


class MapItemRemoved(_MapEvent):
    event_type: Literal["map_item_removed"] = Field(alias="EventType")
    event_id: Count = Field(alias="EventId")
    item_key: Name = Field(alias="ItemKey")


CollectionEvent = (
    DocumentEvent
    | DocumentRemoved
    | ListEvent
    | ListItemEvent
    | ListItemRemoved
    | MapEvent
    | MapItemEvent
    | MapItemRemoved
)
"""Every event that is not about reachability: recorded and republished, never presence."""

ItemEvent = ListItemEvent | ListItemRemoved | MapItemEvent | MapItemRemoved
"""Events that carry an EventId of their list or map."""

SyncEvent = Annotated[ReachabilityEvent | CollectionEvent, Field(discriminator="event_type")]

_SYNC_EVENT: TypeAdapter[ReachabilityEvent | CollectionEvent] = TypeAdapter(SyncEvent)

EventModel = type[ReachabilityEvent] | type[CollectionEvent]

MODELS: tuple[EventModel, ...] = get_args(ReachabilityEvent | CollectionEvent)
"""The model of each kind of event, in the reference's order."""


def event_types(model: EventModel) -> tuple[str, ...]:
    """The EventTypes ``model`` validates."""
    annotation = model.model_fields["event_type"].annotation
    return tuple(getattr(annotation, "__args__", ()))


_PARAMETERS: dict[str, frozenset[str]] = {
    event_type: frozenset(
        field.alias for field in model.model_fields.values() if field.alias is not None
    )
    for model in MODELS
    for event_type in event_types(model)
}

EVENT_TYPES: frozenset[str] = frozenset(_PARAMETERS)
"""Every EventType of the reference."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class InvalidPayload(Exception):
    """A webhook whose parameters do not match the reference; ``errors`` names each bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


_MESSAGES = {"missing": "is required"}


def _field_errors(error: ValidationError) -> list[FieldError]:
    found = []
    for detail in error.errors():
        # The discriminated union puts the EventType first in the location: drop it.
        location = [str(part) for part in detail["loc"][1:]]
        message = _MESSAGES.get(detail["type"], detail["msg"])
        found.append(FieldError(".".join(location) or "body", message))
    return found


def gathered(pairs: Iterable[tuple[str, object]]) -> tuple[dict[str, object], list[str]]:
    """A webhook's parameters by name (the last of a repeated one), and the names repeated."""
    params: dict[str, object] = {}
    repeated: list[str] = []
    for name, value in pairs:
        if name in params and name not in repeated:
            repeated.append(name)
        params[name] = value
    return params, repeated


def parse_event(pairs: Iterable[tuple[str, object]]) -> ReachabilityEvent | CollectionEvent | None:
    """Validate one webhook's parameters; ``None`` for an EventType the reference does not list.

    Raises ``InvalidPayload`` naming every missing or malformed parameter, including a listed
    parameter given more than once.
    """
    return parse_parameters(*gathered(pairs))


def parse_parameters(
    params: dict[str, object], repeated: list[str]
) -> ReachabilityEvent | CollectionEvent | None:
    """``parse_event`` of the parameters ``gathered`` from its pairs."""
    event_type = params.get("EventType")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidPayload([FieldError("EventType", "is required")])
    listed = _PARAMETERS.get(event_type)
    if listed is None:
        return None
    if not repeated and event_type in _REACHABILITY_TYPES:
        checked = _reachability(params, event_type)
        if checked is not None:
            return checked
    errors = [FieldError(name, "given more than once") for name in repeated if name in listed]
    try:
        event = _SYNC_EVENT.validate_python(params)
    except ValidationError as error:
        errors.extend(_field_errors(error))
        raise InvalidPayload(errors) from None
    if errors:
        raise InvalidPayload(errors)
    return event


_REACHABILITY_TYPES = frozenset(event_types(ReachabilityEvent))
_REACHABILITY_FIELDS = frozenset(ReachabilityEvent.model_fields)
_set = object.__setattr__


def _reachability(params: dict[str, object], event_type: str) -> ReachabilityEvent | None:
    """A connect or disconnect whose every field holds, checked by the validators of its
    model without pydantic's own work around them (``parse_event`` a quarter cheaper, on
    nearly all the webhooks a service gets); None as soon as one does not hold, for pydantic
    to name them all."""
    account, service = params.get("AccountSid"), params.get("ServiceSid")
    identity, endpoint = params.get("Identity"), params.get("EndpointId")
    if not (
        is_sid(account, "AC")
        and is_sid(service, "IS")
        and name_problem(identity) is None
        and name_problem(endpoint) is None
    ):
        return None
    try:
        event_id = _count(params.get("EventId"))
        online = _boolean(params.get("IsIdentityOnline"))
    except PydanticCustomError:
        return None
    event = ReachabilityEvent.__new__(ReachabilityEvent)
    # What model_construct sets (the model has no extra fields, private attributes or
    # post-init), without its walk over the fields: the fields in the model's order, as
    # validation gives them (tests/test_events.py compares the two).
    fields = {
        "account_sid": account,
        "service_sid": service,
        "identity": identity,
        "endpoint_id": endpoint,
        "event_type": event_type,
        "event_id": event_id,
        "is_identity_online": online,
    }
    _set(event, "__dict__", fields)
    _set(event, "__pydantic_fields_set__", set(_REACHABILITY_FIELDS))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


def normalised(event: CollectionEvent) -> dict[str, Any]:
    """The event as published on ``{prefix}:sync-events``: snake_case, ``*_data`` as JSON."""
    fields = event.model_dump(mode="json")
    return {"event_type": fields.pop("event_type"), **fields}
