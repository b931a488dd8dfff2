"""Parsing of every Sync event type into its model, and the limits of each parameter."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest

from presence import events
from presence.events import (
    EVENT_TYPES,
    MAX_DATA_DEPTH,
    MAX_NAME_LENGTH,
    MAX_SAFE_INTEGER,
    DocumentEvent,
    DocumentRemoved,
    InvalidPayload,
    ListEvent,
    ListItemEvent,
    ListItemRemoved,
    MapEvent,
    MapItemEvent,
    MapItemRemoved,
    ReachabilityEvent,
    normalised,
    parse_event,
)
from presence.twilio.samples import ACCOUNT_SID, SERVICE_SID, collection_event, reachability

MODELS = {
    "endpoint_connected": ReachabilityEvent,
    "endpoint_disconnected": ReachabilityEvent,
    "document_created": DocumentEvent,
    "document_updated": DocumentEvent,
    "document_removed": DocumentRemoved,
    "list_created": ListEvent,
    "list_removed": ListEvent,
    "list_item_added": ListItemEvent,
    "list_item_updated": ListItemEvent,
    "list_item_removed": ListItemRemoved,
    "map_created": MapEvent,
    "map_removed": MapEvent,
    "map_item_added": MapItemEvent,
    "map_item_updated": MapItemEvent,
    "map_item_removed": MapItemRemoved,
}


def test_the_reference_has_fifteen_event_types() -> None:
    assert set(MODELS) == EVENT_TYPES


@pytest.mark.parametrize("event_type", sorted(MODELS))
def test_each_event_type_parses_into_its_model(event_type: str) -> None:
    params = (
        reachability("alice", "E1", 3, True, connected=event_type == "endpoint_connected")
        if event_type.startswith("endpoint")
        else collection_event(event_type)
    )

    event = parse_event(params.items())

    assert type(event) is MODELS[event_type]
    assert event is not None
    assert event.event_type == event_type
    assert event.identity == "alice"


def test_reachability_fields_are_typed() -> None:
    event = parse_event(reachability("a", "E9", 42, False, connected=False).items())

    assert isinstance(event, ReachabilityEvent)
    assert (event.endpoint_id, event.event_id, event.is_identity_online) == ("E9", 42, False)
    assert not event.connected


@pytest.mark.parametrize(("text", "value"), [("true", True), ("TRUE", True), ("False", False)])
def test_is_identity_online_is_true_or_false_in_any_case(text: str, value: bool) -> None:
    params = reachability("a", "E1", 1, True, connected=True) | {"IsIdentityOnline": text}
    event = parse_event(params.items())
    assert isinstance(event, ReachabilityEvent)
    assert event.is_identity_online is value


@pytest.mark.parametrize("text", ["yes", "1", "", "t", "truee"])
def test_is_identity_online_refuses_anything_else(text: str) -> None:
    params = reachability("a", "E1", 1, True, connected=True) | {"IsIdentityOnline": text}
    with pytest.raises(InvalidPayload) as raised:
        parse_event(params.items())
    assert [e.field for e in raised.value.errors] == ["IsIdentityOnline"]


@pytest.mark.parametrize("value", [0, MAX_SAFE_INTEGER])
def test_event_ids_range_from_zero_to_two_to_the_53(value: int) -> None:
    params = reachability("a", "E1", value, True, connected=True)
    event = parse_event(params.items())
    assert isinstance(event, ReachabilityEvent)
    assert event.event_id == value


@pytest.mark.parametrize("value", ["-1", str(MAX_SAFE_INTEGER + 1), "1e3", " 1", "١٢"])
def test_event_ids_outside_the_range_are_refused(value: str) -> None:
    params = reachability("a", "E1", 1, True, connected=True) | {"EventId": value}
    with pytest.raises(InvalidPayload):
        parse_event(params.items())


ABSENT = object()
"""A parameter left out of the webhook."""

# Each parameter of a connect or disconnect: values that hold (as a form or a JSON body gives
# them) and values that do not, every kind of problem the validators know.
REACHABILITY_VALUES: dict[str, list[Any]] = {
    "AccountSid": [ACCOUNT_SID, "AC" + "0" * 31, ABSENT],
    "ServiceSid": [SERVICE_SID, "IS" + SERVICE_SID[2:].upper(), "ET" + "0" * 32],
    "EventType": ["endpoint_connected", "endpoint_disconnected"],
    "Identity": ["alice", "x" * MAX_NAME_LENGTH, "x" * (MAX_NAME_LENGTH + 1), "", "\ud800", 5],
    "EndpointId": ["E1", "", None, ABSENT],
    "EventId": ["3", 0, MAX_SAFE_INTEGER, "-1", True, "1e3", "١٢", ABSENT],
    "IsIdentityOnline": ["true", "FALSE", True, False, "yes", 1],
}


def outcome(params: dict[str, Any]) -> tuple[str, Any]:
    """What ``parse_event`` gives: the event's fields in order, with the fields set, or the
    errors it raises."""
    try:
        event = parse_event(params.items())
    except InvalidPayload as error:
        return "refused", error.errors
    assert isinstance(event, ReachabilityEvent)
    return "event", (list(vars(event).items()), event.model_fields_set, event.model_dump())


def test_connects_and_disconnects_checked_by_hand_are_what_pydantic_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every combination of the values above: the event, or the errors, are the same whether
    the hand-made check (nearly all webhooks) or pydantic alone parses it."""
    names = list(REACHABILITY_VALUES)
    combinations = [
        {name: value for name, value in zip(names, values, strict=True) if value is not ABSENT}
        for values in itertools.product(*REACHABILITY_VALUES.values())
    ]
    by_hand = [outcome(params) for params in combinations]
    with monkeypatch.context() as patched:
        patched.setattr(events, "_reachability", lambda params, event_type: None)
        by_pydantic = [outcome(params) for params in combinations]

    for params, mine, theirs in zip(combinations, by_hand, by_pydantic, strict=True):
        assert mine == theirs, params
    kinds = [kind for kind, _ in by_hand]
    assert 0 < kinds.count("event") < kinds.count("refused")


def test_a_valid_connect_is_made_without_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-made check is taken (the test above cannot tell it from pydantic); a
    parameter given twice still goes to pydantic, to be named."""

    class Unused:
        def validate_python(self, params: object) -> None:
            raise AssertionError("pydantic validated a valid connect")

    params = reachability("alice", "E1", 7, True, connected=True)
    monkeypatch.setattr(events, "_SYNC_EVENT", Unused())
    event = parse_event(params.items())
    assert isinstance(event, ReachabilityEvent)
    assert (event.identity, event.endpoint_id, event.event_id) == ("alice", "E1", 7)
    with pytest.raises(AssertionError, match="pydantic validated"):
        parse_event([*params.items(), ("EventId", "7")])


def test_json_values_may_already_be_typed() -> None:
    params: dict[str, object] = dict(collection_event("list_item_added"))
    params |= {"EventId": 12, "ItemIndex": 0, "ItemRevision": 3, "ItemData": [1, {"a": None}]}

    event = parse_event(params.items())

    assert isinstance(event, ListItemEvent)
    assert (event.event_id, event.item_index, event.item_data) == (12, 0, [1, {"a": None}])


@pytest.mark.parametrize("as_text", [True, False])
def test_data_is_nested_at_most_max_data_depth(as_text: bool) -> None:
    def nested(depth: int) -> object:
        text = "[" * depth + "]" * depth
        return text if as_text else json.loads(text)

    deepest = collection_event("document_updated") | {"DocumentData": nested(MAX_DATA_DEPTH)}
    event = parse_event(deepest.items())
    assert isinstance(event, DocumentEvent)
    # Republished as JSON: the depth allowed is one the message can be written with.
    assert json.dumps(normalised(event))

    deeper = collection_event("document_updated") | {"DocumentData": nested(MAX_DATA_DEPTH + 1)}
    with pytest.raises(InvalidPayload) as raised:
        parse_event(deeper.items())
    assert [(e.field, e.message) for e in raised.value.errors] == [
        ("DocumentData", f"must be nested at most {MAX_DATA_DEPTH} levels deep")
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"a": 18446744073709551616}', "must hold integers within 64 bits"),
        ('{"a": -9223372036854775809}', "must hold integers within 64 bits"),
        ('{"a": 1e400}', "must hold numbers within the range of a double"),
        ("[-1e999]", "must hold numbers within the range of a double"),
        ('{"a": "\\ud800"}', "must be valid Unicode text (no lone surrogates)"),
        ('{"\\udc00": 1}', "must be valid Unicode text (no lone surrogates)"),
    ],
)
def test_data_the_message_cannot_carry_exactly_is_refused(data: str, message: str) -> None:
    """Valid JSON that the republished message would fail on (a 500) or alter (infinity
    written as null) is a 400 naming the field."""
    params = collection_event("document_updated") | {"DocumentData": data}
    with pytest.raises(InvalidPayload) as raised:
        parse_event(params.items())
    assert [(e.field, e.message) for e in raised.value.errors] == [("DocumentData", message)]


def test_data_at_the_edges_is_republished_exactly() -> None:
    data = '{"max": 18446744073709551615, "min": -9223372036854775808, "big": 1.7e308, "é": "😀"}'
    params = collection_event("document_updated") | {"DocumentData": data}
    event = parse_event(params.items())
    assert isinstance(event, DocumentEvent)
    assert json.loads(orjson.dumps(normalised(event)))["document_data"] == json.loads(data)


def test_booleans_are_not_integers() -> None:
    params: dict[str, object] = dict(collection_event("list_item_added"))
    params["EventId"] = True
    with pytest.raises(InvalidPayload) as raised:
        parse_event(params.items())
    assert [e.field for e in raised.value.errors] == ["EventId"]


def test_an_unknown_event_type_parses_to_nothing() -> None:
    assert parse_event([("EventType", "stream_message_published")]) is None


def test_normalised_events_are_snake_case_with_parsed_data() -> None:
    event = parse_event(collection_event("map_item_updated").items())
    assert isinstance(event, MapItemEvent)

    assert normalised(event) == {
        "event_type": "map_item_updated",
        "account_sid": event.account_sid,
        "service_sid": event.service_sid,
        "identity": "alice",
        "endpoint_id": "EP-alice-1",
        "map_sid": event.map_sid,
        "map_revision": 5,
        "map_unique_name": "scores",
        "event_id": 11,
        "item_key": "k1",
        "item_revision": 2,
        "item_data": {"text": "milk"},
    }


def test_a_unique_name_is_optional() -> None:
    params = collection_event("document_removed")
    del params["DocumentUniqueName"]
    event = parse_event(params.items())
    assert isinstance(event, DocumentRemoved)
    assert normalised(event)["document_unique_name"] is None
