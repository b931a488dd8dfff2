"""``POST /webhooks/sync``: Twilio Sync's webhooks in, an outcome out.

In order: the content type (415), the size (413), the signature (403; a form body must be
UTF-8 to be checked, else 400), the account (403), the parameters (400), then the store (503
when Redis is away). A 200 is sent only once the event's effect is stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from aiohttp import web

from presence.events import (
    SYSTEM_IDENTITY,
    FieldError,
    InvalidPayload,
    ReachabilityEvent,
    parse_event,
)
from presence.settings import Settings
from presence.signature import SETTINGS_HEADER, SIGNATURE_HEADER, SignatureValidator
from presence.store.base import Outcome, PresenceStore
from presence.web.errors import json_error

log = logging.getLogger("presence.webhooks")

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
MAX_PARAMETERS = 200
MAX_TOKEN_LENGTH = 256


class _JsonObject(dict[str, Any]):
    """A JSON object that also remembers its members in order, repeats included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _invalid(errors: list[FieldError]) -> web.Response:
    return web.json_response(
        {
            "error": "invalid_payload",
            "message": "; ".join(f"{e.field}: {e.message}" for e in errors),
            "detail": [{"field": e.field, "message": e.message} for e in errors],
        },
        status=400,
    )


def _body_error(message: str) -> web.Response:
    return _invalid([FieldError("body", message)])


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    """Raises UnicodeDecodeError for a body (or an escape in it) that is not UTF-8."""
    return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


class WebhookReceiver:
    """Verifies, validates and applies Sync webhooks."""

    def __init__(self, settings: Settings, store: PresenceStore) -> None:
        self.store = store
        self.max_body = settings.max_body_bytes
        self.account_sid = settings.account_sid
        self.public_url = urlsplit(settings.webhook_url) if settings.webhook_url else None
        self.validator = (
            None if settings.unsigned_webhooks else SignatureValidator(settings.twilio_auth_token)
        )

    def signed_url(self, request: web.Request) -> str:
        """The URL Twilio signed: ``PRESENCE_WEBHOOK_URL`` (with the request's query, where
        Twilio puts ``bodySHA256``), else the URL this request was sent to."""
        if self.public_url is None:
            return f"{request.scheme}://{request.host}{request.raw_path}"
        query = request.raw_path.partition("?")[2]
        public = self.public_url
        return urlunsplit((public.scheme, public.netloc, public.path, query or public.query, ""))

    def _signed(
        self, request: web.Request, form: list[tuple[str, str]] | None, body: bytes
    ) -> bool:
        if self.validator is None:
            return True
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return False
        return self.validator.validate(
            self.signed_url(request),
            signature,
            params=None if form is None else _grouped(form),
            json_body=body if form is None else None,
            settings_header=request.headers.get(SETTINGS_HEADER),
        )

    async def handle(self, request: web.Request) -> web.Response:
        if request.content_type not in (FORM, JSON):
            return json_error(
                415, "unsupported_media_type", f"send {FORM} (as Twilio does) or {JSON}"
            )
        body = await self._read_body(request)
        if body is None:
            return json_error(
                413, "payload_too_large", f"the body is larger than {self.max_body} bytes"
            )

        # A JSON body is signed as bytes (bodySHA256) and checked before it is parsed; a form
        # is signed as its decoded parameters, so it must be decoded first.
        pairs: list[tuple[str, Any]]
        if request.content_type == FORM:
            try:
                pairs = _form_pairs(body)
            except UnicodeDecodeError:
                return _body_error("is not valid UTF-8")
            signed = self._signed(request, pairs, body)
        else:
            signed = self._signed(request, None, body)
            if signed:
                try:
                    document = json.loads(body, object_pairs_hook=_JsonObject)
                except (ValueError, RecursionError):
                    return _body_error("is not valid JSON")
                if not isinstance(document, _JsonObject):
                    return _body_error("must be a JSON object")
                pairs = document.pairs
        if not signed:
            return json_error(403, "invalid_signature", "X-Twilio-Signature does not match")
        if len(pairs) > MAX_PARAMETERS:
            return _body_error(f"has more than {MAX_PARAMETERS} parameters")
        if self.account_sid is not None:
            account = dict(pairs).get("AccountSid")
            if not isinstance(account, str) or account.lower() != self.account_sid.lower():
                return json_error(403, "account_not_allowed", "AccountSid is not accepted here")

        try:
            event = parse_event(pairs)
        except InvalidPayload as error:
            return _invalid(error.errors)
        if event is None:
            return self._reply(Outcome.IGNORED)
        if isinstance(event, ReachabilityEvent):
            if event.identity == SYSTEM_IDENTITY:
                return self._reply(Outcome.IGNORED)
            result = await self.store.apply_reachability(event)
            for change in result.changes:
                log.info("presence change: %s", change)
            return self._reply(result.outcome)
        return self._reply(await self.store.record(event, self._token(request)))

    @staticmethod
    def _token(request: web.Request) -> str | None:
        token = request.headers.get(IDEMPOTENCY_HEADER)
        # Twilio's tokens are short printable ASCII; anything else is not one of them.
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        return token

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None as soon as it is known to be over the limit."""
        if request.content_length is not None and request.content_length > self.max_body:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > self.max_body:
                return None
        return bytes(body)

    @staticmethod
    def _reply(outcome: Outcome) -> web.Response:
        return web.json_response({"status": outcome.value})
