"""Twilio webhook signatures, checked exactly as ``twilio.request_validator.RequestValidator``.

The signature is an HMAC (SHA-1, or SHA-256 when ``X-Twilio-Webhooks-Signature-Settings``
names it) over the URL followed by each parameter name and value, sorted, base64-encoded.
Twilio may sign the URL with or without its default port, so both are tried. A JSON body is
signed through the URL: Twilio adds ``bodySHA256`` (the hex SHA-256 of the body) to the
query, and the signature covers the URL alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import ParseResult, parse_qs, urlparse

from presence.twilio import FORM, SIGNATURE_HEADER

_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}

Params = Mapping[str, Sequence[str]]
"""Form parameters: every value given for each name."""


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm named by ``X-Twilio-Webhooks-Signature-Settings`` (HMAC_SHA1 if none)."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def _without_port(uri: ParseResult) -> str:
    if not uri.port:
        return uri.geturl()
    return uri._replace(netloc=uri.netloc.split(":")[0]).geturl()


def _with_port(uri: ParseResult) -> str:
    if uri.port:
        return uri.geturl()
    port = 443 if uri.scheme == "https" else 80
    return uri._replace(netloc=f"{uri.netloc}:{port}").geturl()


def compute_signature(key: bytes, url: str, params: Params, algorithm: str = "HMAC_SHA1") -> str:
    """The value Twilio puts in ``X-Twilio-Signature`` for this URL and these parameters."""
    signed = [url]
    for name in sorted(params):
        # Twilio signs each distinct value once, in sorted order.
        for value in sorted(set(params[name])):
            signed.append(name + value)
    mac = hmac.new(key, "".join(signed).encode("utf-8"), _HASHES[algorithm])
    return base64.b64encode(mac.digest()).decode("ascii")


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign_form(token: str, url: str, params: Mapping[str, str]) -> str:
    """``X-Twilio-Signature`` of a form webhook with one value per parameter, as Twilio sends
    it to ``url`` signed with ``token``."""
    return compute_signature(token.encode("utf-8"), url, {k: (v,) for k, v in params.items()})


def form_headers(token: str | None, url: str, params: Mapping[str, str]) -> dict[str, str]:
    """The headers of a form webhook to ``url``: its content type and, with a ``token``, the
    signature Twilio would send (none without one: an unsigned webhook)."""
    headers = {"Content-Type": FORM}
    if token is not None:
        headers[SIGNATURE_HEADER] = sign_form(token, url, params)
    return headers


class SignatureValidator:
    """Checks a webhook against every configured token (several during a token rotation)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("at least one token is needed")
        self._keys = [token.encode("utf-8") for token in tokens]

    def validate(
        self,
        url: str,
        signature: str,
        *,
        params: Params | None = None,
        json_body: bytes | None = None,
        settings_header: str | None = None,
    ) -> bool:
        """True when ``signature`` was made by one of the tokens for this request.

        ``params`` are the form parameters; for a JSON request pass the raw ``json_body``
        instead, which must match the ``bodySHA256`` of the URL.
        """
        algorithm = signature_algorithm(settings_header)
        if algorithm not in _HASHES:
            return False
        try:
            uri = urlparse(url)
            candidates = (_without_port(uri), _with_port(uri))
        except ValueError:  # a Host header with a port that is not a number
            return False
        signed_params: Params = params or {}
        if json_body is not None:
            declared = parse_qs(uri.query).get("bodySHA256")
            if not declared or not _same(body_sha256(json_body), declared[0]):
                return False
            signed_params = {}
        try:
            return any(
                _same(compute_signature(key, candidate, signed_params, algorithm), signature)
                for key in self._keys
                for candidate in candidates
            )
        except UnicodeEncodeError:  # a Host header of bytes that are not UTF-8
            return False


def _same(computed: str, given: str) -> bool:
    # Both are ASCII when genuine (base64, hex); anything else cannot match.
    return given.isascii() and hmac.compare_digest(computed.encode(), given.encode())
