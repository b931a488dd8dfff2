"""Signature attacks against the real HTTP server and the real Redis, one by one: each is a
403 and changes nothing.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from presence.twilio.samples import SERVICE_SID, reachability
from tests.hostile import (
    FORM,
    JSON,
    MALLORY,
    SECOND_TOKEN,
    WRONG_TOKEN,
    World,
    check_reply,
    form_body,
    json_request,
    other_url,
    typed,
)
from tests.hostile import world as world  # the alias keeps this fixture where pytest finds it
from tests.support import AUTH_TOKEN, sign


def _json(params: dict[str, str]) -> bytes:
    return json.dumps(typed(params)).encode()


Attack = tuple[str, bytes, list[tuple[str, str]]]


def _signed_by(signature: str, body: bytes, query: str = "") -> Attack:
    return query, body, [("Content-Type", FORM), ("X-Twilio-Signature", signature)]


def _tampered(name: str, url: str) -> Attack | None:
    """A form whose parameters, URL or token are not what was signed."""
    pairs = list(MALLORY.items())
    body = form_body(pairs)
    if name == "missing signature":
        return "", body, [("Content-Type", FORM)]
    if name == "empty signature":
        return _signed_by("", body)
    if name == "wrong token":
        return _signed_by(sign(url, pairs, WRONG_TOKEN), body)
    if name == "a parameter altered":
        altered = [(n, "alice" if n == "Identity" else v) for n, v in pairs]
        return _signed_by(sign(url, pairs), form_body(altered))
    if name == "the EventId altered":
        altered = [(n, "8" if n == "EventId" else v) for n, v in pairs]
        return _signed_by(sign(url, pairs), form_body(altered))
    if name == "a parameter added":
        return _signed_by(sign(url, pairs), form_body([*pairs, ("Extra", "1")]))
    if name == "a parameter removed":
        signed = [*pairs, ("DateCreated", "2026-11-23T10:00:00Z")]
        return _signed_by(sign(url, signed), body)
    if name in ("other_path", "other_host", "https", "other_query"):
        return _signed_by(sign(other_url(url, name), pairs), body)
    if name == "query dropped":
        return _signed_by(sign(url + "?x=1", pairs), body)
    if name == "query added":
        return _signed_by(sign(url, pairs), body, query="?x=1")
    return None


def _ambiguous(name: str, url: str) -> Attack | None:
    """Parameters that join into the same signed string in another way."""
    pairs = list(MALLORY.items())
    if name == "a=1&a=2 sent as a=12":
        signed = [*pairs, ("Note", "1"), ("Note", "2")]
        return _signed_by(sign(url, signed), form_body([*pairs, ("Note", "12")]))
    if name == "a=12 sent as a=1&a=2":
        signed = [*pairs, ("Note", "12")]
        sent = [*pairs, ("Note", "1"), ("Note", "2")]
        return _signed_by(sign(url, signed), form_body(sent))
    return None


def _header_games(name: str, url: str) -> Attack | None:
    """A valid signature, sent in a way the check must not accept."""
    pairs = list(MALLORY.items())
    body = form_body(pairs)
    valid = sign(url, pairs)
    if name == "SHA-256 announced, SHA-1 sent":
        query, body, headers = _signed_by(valid, body)
        settings = ("X-Twilio-Webhooks-Signature-Settings", "algorithm=HMAC_SHA256")
        return query, body, [*headers, settings]
    if name == "signature in lower case":
        return _signed_by(valid.lower(), body)
    if name == "invalid signature, then a valid one":
        _, body, headers = _signed_by("bm9wZQ==", body)
        return "", body, [*headers, ("X-Twilio-Signature", valid)]
    if name == "a valid signature, then an invalid one":
        _, body, headers = _signed_by(valid, body)
        return "", body, [*headers, ("X-Twilio-Signature", "bm9wZQ==")]
    if name == "valid and invalid signatures joined":
        return _signed_by(valid + ", bm9wZQ==", body)
    if name == "form claiming a bodySHA256":
        query = "?bodySHA256=" + hashlib.sha256(body).hexdigest()
        return _signed_by(sign(url + query, []), body, query)
    return None


def _json_forged(name: str, url: str) -> Attack | None:
    """A JSON body whose signature or ``bodySHA256`` is not its own."""
    body = _json(MALLORY)
    json_type = [("Content-Type", JSON)]
    if name == "JSON altered after signing":
        query, signature = json_request(url, body)
        altered = body.replace(b'"EventId": 7', b'"EventId": 8')
        return query, altered, [*json_type, ("X-Twilio-Signature", signature)]
    if name == "JSON with the bodySHA256 of another body":
        query, signature = json_request(url, _json(MALLORY | {"EventId": "1"}))
        return query, body, [*json_type, ("X-Twilio-Signature", signature)]
    if name == "JSON signed as a form":
        signature = sign(url, list(MALLORY.items()))
        return "", body, [*json_type, ("X-Twilio-Signature", signature)]
    if name == "JSON signed by a wrong token":
        query, signature = json_request(url, body, WRONG_TOKEN)
        return query, body, [*json_type, ("X-Twilio-Signature", signature)]
    return None


def attack(name: str, url: str) -> Attack:
    """One forged request: (query, body, headers), built for the service at ``url``."""
    for build in (_tampered, _ambiguous, _header_games, _json_forged):
        forged = build(name, url)
        if forged is not None:
            return forged
    raise AssertionError(name)


ATTACKS = [
    "missing signature",
    "empty signature",
    "wrong token",
    "a parameter altered",
    "the EventId altered",
    "a parameter added",
    "a parameter removed",
    "other_path",
    "other_host",
    "https",
    "other_query",
    "query dropped",
    "query added",
    "a=1&a=2 sent as a=12",
    "a=12 sent as a=1&a=2",
    "SHA-256 announced, SHA-1 sent",
    "signature in lower case",
    "invalid signature, then a valid one",
    "a valid signature, then an invalid one",
    "valid and invalid signatures joined",
    "form claiming a bodySHA256",
    "JSON altered after signing",
    "JSON with the bodySHA256 of another body",
    "JSON signed as a form",
    "JSON signed by a wrong token",
]


async def refused_unchanged(
    world: World, query: str, body: bytes, headers: list[tuple[str, str]]
) -> None:
    before = await world.observer.snapshot()
    status, reply = await world.post(query, body, headers)
    assert (status, reply.get("error")) == (403, "invalid_signature"), reply
    check_reply(status, reply)
    assert await world.observer.snapshot() == before
    assert await world.observer.published() == []


@pytest.mark.parametrize("name", ATTACKS)
async def test_a_forged_signature_is_a_403_that_changes_nothing(world: World, name: str) -> None:
    await refused_unchanged(world, *attack(name, world.url()))


async def test_a_signature_by_the_secondary_token_is_accepted(world: World) -> None:
    """The positive control of the attacks above: two tokens configured, the second signs."""
    url = world.url()
    pairs = list(MALLORY.items())
    status, reply = await world.post(
        "",
        form_body(pairs),
        [
            ("Content-Type", FORM),
            ("X-Twilio-Signature", sign(url, pairs, SECOND_TOKEN)),
        ],
    )
    assert (status, reply) == (200, {"status": "applied"})
    body = _json(reachability("mallory", "E2", 8, True, connected=True))
    query, signature = json_request(url, body, SECOND_TOKEN)
    status, reply = await world.post(
        query, body, [("Content-Type", JSON), ("X-Twilio-Signature", signature)]
    )
    assert (status, reply) == (200, {"status": "applied"})
    presence = await world.service.store.identity(SERVICE_SID, "mallory")
    assert presence.online
    assert sorted(presence.endpoints) == ["E1", "E2"]


async def test_reordering_repeated_parameters_cannot_change_the_identity(world: World) -> None:
    """Twilio signs repeated values sorted, so their order is not signed: a signed body with
    two Identity values is refused whole rather than read as either one."""
    url = world.url()
    pairs = [*MALLORY.items(), ("Identity", "alice")]
    signature = sign(url, pairs)
    for sent in (pairs, pairs[::-1]):
        before = await world.observer.snapshot()
        status, reply = await world.post(
            "", form_body(sent), [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
        )
        assert status == 400
        assert {"field": "Identity", "message": "given more than once"} in reply["detail"]
        assert await world.observer.snapshot() == before
        assert await world.observer.published() == []


async def test_the_signature_is_exactly_as_ambiguous_as_twilios(world: World) -> None:
    """Twilio's canonical string concatenates names and values: Note=1&Note=2 and Note=1Note2
    sign the same. The service accepts exactly what Twilio's own validator accepts, no more."""
    url = world.url()
    signed = [*MALLORY.items(), ("Note", "1"), ("Note", "2")]
    signature = sign(url, signed)
    collided = [*MALLORY.items(), ("Note", "1Note2")]
    assert RequestValidator(AUTH_TOKEN).validate(url, MultiDict(collided), signature)
    status, _ = await world.post(
        "", form_body(collided), [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
    )
    assert status == 200
    await world.observer.published()
    for sent in ([*MALLORY.items(), ("Note", "12")], [*MALLORY.items(), ("Note", "1N")]):
        assert not RequestValidator(AUTH_TOKEN).validate(url, MultiDict(sent), signature)
        await refused_unchanged(
            world, "", form_body(sent), [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
        )
