"""Twilio webhook signatures, checked exactly as ``twilio.request_validator.RequestValidator``.

The signature is an HMAC (SHA-1, or SHA-256 when ``X-Twilio-Webhooks-Signature-Settings``
names it) over the URL followed by each parameter name and value, sorted, base64-encoded.
Twilio may sign the URL with or without its default port, so both are tried. A JSON body is
signed through the URL: Twilio adds ``bodySHA256`` (the hex SHA-256 of the body) to the
query, and the signature covers the URL alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import ParseResult, parse_qs, urlparse

from presence.twilio import FORM, SIGNATURE_HEADER

_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}

Params = Mapping[str, Sequence[str]] | Sequence[tuple[str, str]]
"""Form parameters: every value given for each name, or the (name, value) pairs in order."""


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm named by ``X-Twilio-Webhooks-Signature-Settings`` (HMAC_SHA1 if none)."""
    if settings_header is None:  # nearly every webhook: Twilio's default
        return "HMAC_SHA1"
    for part in settings_header.split(","):
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


def _signed_params(params: Params) -> str:
    """What of the parameters is signed: each name and value, sorted by name then value
    (Twilio signs each distinct value once)."""
    pairs = (
        {(name, value) for name, values in params.items() for value in values}
        if isinstance(params, Mapping)
        else set(params)
    )
    return "".join([name + value for name, value in sorted(pairs)])


def compute_signature(key: bytes, url: str, params: Params, algorithm: str = "HMAC_SHA1") -> str:
    """The value Twilio puts in ``X-Twilio-Signature`` for this URL and these parameters."""
    mac = hmac.new(key, (url + _signed_params(params)).encode("utf-8"), _HASHES[algorithm])
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
        # Keyed once: a copy of a keyed HMAC skips the key schedule each webhook would pay.
        self._macs = {
            algorithm: [hmac.new(token.encode("utf-8"), digestmod=digest) for token in tokens]
            for algorithm, digest in _HASHES.items()
        }

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
            candidates, declared = _url_variants(url)
        except ValueError:  # a Host header with a port that is not a number
            return False
        signed_params: Params = params or {}
        if json_body is not None:
            if declared is None or not _same(body_sha256(json_body), declared):
                return False
            signed_params = {}
        try:
            signed = _signed_params(signed_params).encode("utf-8")
            for candidate in candidates:
                prefix = candidate.encode("utf-8")
                for keyed in self._macs[algorithm]:
                    mac = keyed.copy()
                    mac.update(prefix)
                    mac.update(signed)
                    if _same(base64.b64encode(mac.digest()).decode("ascii"), signature):
                        return True
        except UnicodeEncodeError:  # a Host header of bytes that are not UTF-8
            return False
        return False


@functools.lru_cache(maxsize=256)
def _url_variants(url: str) -> tuple[tuple[str, str], str | None]:
    """The URL as Twilio may have signed it (as it came first: the one that matches, most
    often; then with or without its default port), and its ``bodySHA256``: parsed once per
    URL, as webhooks mostly come to one."""
    uri = urlparse(url)
    declared = parse_qs(uri.query).get("bodySHA256")
    other = _with_port(uri) if uri.port is None else _without_port(uri)
    return (url, other), declared[0] if declared else None


def _same(computed: str, given: str) -> bool:
    # Both are ASCII when genuine (base64, hex); anything else cannot match.
    return given.isascii() and hmac.compare_digest(computed.encode(), given.encode())
