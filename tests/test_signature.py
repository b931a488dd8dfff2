"""Our signature check agrees with ``twilio.request_validator.RequestValidator`` on every input."""

from __future__ import annotations

import hashlib

from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from presence.twilio.signing import SignatureValidator, compute_signature, signature_algorithm

TOKEN = "12345678901234567890123456789012"
SECOND = "abcdefabcdefabcdefabcdefabcdefab"

hosts = st.sampled_from(["example.com", "presence.example.com", "127.0.0.1", "[::1]"])
ports = st.sampled_from(["", ":80", ":443", ":8080", ":1"])
paths = st.sampled_from(["/webhooks/sync", "/", "/a/b%20c", "/hooks/sync/"])
queries = st.sampled_from(["", "?a=1", "?a=1&b=%C3%A9", "?x"])
urls = st.builds(
    lambda scheme, host, port, path, query: f"{scheme}://{host}{port}{path}{query}",
    st.sampled_from(["http", "https"]),
    hosts,
    ports,
    paths,
    queries,
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
params = st.lists(st.tuples(st.sampled_from(["A", "B", "Identity", "b", "Ω"]), texts), max_size=6)


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def twilio_says(url: str, pairs: list[tuple[str, str]], signature: str, token: str) -> bool:
    valid: bool = RequestValidator(token).validate(url, MultiDict(pairs), signature)
    return valid


@settings(max_examples=300, deadline=None)
@given(
    parts=st.tuples(st.sampled_from(["http", "https"]), hosts, ports, paths, queries),
    signed_port=ports,
    pairs=params,
    other_pairs=params,
    what=st.sampled_from(["same", "other port", "other params", "other token"]),
)
@example(
    parts=("https", "example.com", "", "/webhooks/sync", ""),
    signed_port=":443",
    pairs=[("A", "1")],
    other_pairs=[],
    what="other port",
)
@example(
    parts=("http", "example.com", ":80", "/webhooks/sync", ""),
    signed_port="",
    pairs=[("A", "1"), ("A", "1")],
    other_pairs=[],
    what="other port",
)
def test_form_signatures_agree_with_twilio(
    parts: tuple[str, str, str, str, str],
    signed_port: str,
    pairs: list[tuple[str, str]],
    other_pairs: list[tuple[str, str]],
    what: str,
) -> None:
    scheme, host, port, path, query = parts
    url = f"{scheme}://{host}{port}{path}{query}"
    signed_url, signed_pairs, token = url, pairs, TOKEN
    if what == "other port":
        signed_url = f"{scheme}://{host}{signed_port}{path}{query}"
    elif what == "other params":
        signed_pairs = other_pairs
    elif what == "other token":
        token = SECOND
    signature = RequestValidator(token).compute_signature(signed_url, MultiDict(signed_pairs))

    ours = SignatureValidator([TOKEN]).validate(url, signature, params=_grouped(pairs))

    assert ours == twilio_says(url, pairs, signature, TOKEN)
    if what == "same":
        assert ours


@settings(max_examples=200, deadline=None)
@given(url=urls, pairs=params, token=st.sampled_from([TOKEN, SECOND]))
def test_compute_signature_is_twilios(url: str, pairs: list[tuple[str, str]], token: str) -> None:
    for algorithm in ("HMAC_SHA1", "HMAC_SHA256"):
        expected = RequestValidator(token).compute_signature(url, MultiDict(pairs), algorithm)
        assert compute_signature(token.encode(), url, _grouped(pairs), algorithm) == expected


@settings(max_examples=200, deadline=None)
@given(url=urls, body=texts, signed_body=texts, tamper_hash=st.booleans())
def test_json_body_signatures_agree_with_twilio(
    url: str, body: str, signed_body: str, tamper_hash: bool
) -> None:
    separator = "&" if "?" in url else "?"
    digest = hashlib.sha256(signed_body.encode()).hexdigest()
    if tamper_hash:
        digest = digest.upper()
    full = f"{url}{separator}bodySHA256={digest}"
    signature = RequestValidator(TOKEN).compute_signature(full, {})

    ours = SignatureValidator([TOKEN]).validate(full, signature, json_body=body.encode())
    assert ours == RequestValidator(TOKEN).validate(full, body, signature)
    assert ours == (body == signed_body and not tamper_hash)


def test_every_configured_token_is_tried() -> None:
    url, pairs = "https://example.com/webhooks/sync", [("A", "1")]
    validator = SignatureValidator([TOKEN, SECOND])

    for token in (TOKEN, SECOND):
        signature = RequestValidator(token).compute_signature(url, MultiDict(pairs))
        assert validator.validate(url, signature, params=_grouped(pairs))
    third = RequestValidator("x" * 32).compute_signature(url, MultiDict(pairs))
    assert not validator.validate(url, third, params=_grouped(pairs))


def test_the_settings_header_chooses_the_algorithm() -> None:
    url, pairs = "https://example.com/webhooks/sync", [("A", "1")]
    sha256 = RequestValidator(TOKEN).compute_signature(url, MultiDict(pairs), "HMAC_SHA256")
    validator = SignatureValidator([TOKEN])
    header = "key=webhooks_sharedkey_abc,algorithm=HMAC_SHA256"

    assert validator.validate(url, sha256, params=_grouped(pairs), settings_header=header)
    assert not validator.validate(url, sha256, params=_grouped(pairs))
    unknown = "algorithm=HMAC_SHA512"
    assert not validator.validate(url, sha256, params=_grouped(pairs), settings_header=unknown)
    assert signature_algorithm(" algorithm = hmac_sha256 ") == "HMAC_SHA256"
    assert signature_algorithm(None) == "HMAC_SHA1"


def test_a_url_with_a_port_that_is_not_a_number_is_refused() -> None:
    url = "http://example.com:abc/webhooks/sync"
    assert not SignatureValidator([TOKEN]).validate(url, "anything", params={})
