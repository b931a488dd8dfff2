"""``POST /webhooks/sync``: Twilio Sync's webhooks in, an outcome out.

In order: the content type (415), the size (413), the signature (403; a form body must be
UTF-8 to be checked, else 400), the account (403), the parameters (400), then the store (503
when Redis is away). A 200 is sent only once the event's effect is stored.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import orjson
from aiohttp import web

from presence.activity import Activity
from presence.events import (
    EVENT_TYPES,
    CollectionEvent,
    FieldError,
    InvalidPayload,
    ReachabilityEvent,
    gathered,
    loads_strict,
    parse_parameters,
)
from presence.logs import WEBHOOK_OUTCOME, log_changes
from presence.metrics import UNKNOWN, Metrics
from presence.model import EventResult, Outcome, ReplicasBehind, StoreUnavailable
from presence.settings import Settings
from presence.store.base import PresenceStore
from presence.twilio import (
    FORM,
    IDEMPOTENCY_HEADER,
    JSON,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    SYSTEM_IDENTITY,
    is_sid,
)
from presence.twilio.signing import SignatureValidator
from presence.web import openapi
from presence.web.errors import json_error, store_unavailable
from presence.web.packed import PackedReply
from presence.web.replies import json_reply

log = logging.getLogger("presence.webhooks")

MAX_PARAMETERS = 200
MAX_TOKEN_LENGTH = 256


class _JsonObject(dict[str, Any]):
    """A JSON object that also remembers its members in order, repeats included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


class _Verdict(NamedTuple):
    """A webhook's reply, and what to count it as (a named tuple: one per webhook)."""

    response: web.Response
    event_type: str = UNKNOWN
    """A listed EventType, else ``unknown``: a label value must come from a closed set."""
    outcome: str = ""
    rejection: str | None = None
    """The error code when the webhook is refused."""


_STATUS_BODIES = {outcome: orjson.dumps({"status": outcome.value}) for outcome in Outcome}
"""The body of each 200, made once: one is sent for every webhook."""


def _done(outcome: Outcome, event_type: str) -> _Verdict:
    return _Verdict(PackedReply(_STATUS_BODIES[outcome]), event_type, outcome.value)


def _reject(status: int, error: str, message: str, event_type: str = UNKNOWN) -> _Verdict:
    return _Verdict(json_error(status, error, message), event_type, rejection=error)


def _invalid(errors: list[FieldError], event_type: str = UNKNOWN) -> _Verdict:
    response = json_reply(
        {
            "error": "invalid_payload",
            "message": "; ".join(f"{e.field}: {e.message}" for e in errors),
            "detail": [{"field": e.field, "message": e.message} for e in errors],
        },
        400,
    )
    return _Verdict(response, event_type, rejection="invalid_payload")


def _body_error(message: str) -> _Verdict:
    return _invalid([FieldError("body", message)])


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    """The pairs ``parse_qsl(..., keep_blank_values=True)`` gives, at a third of its cost on
    Twilio's forms (only what is escaped is unescaped). Raises UnicodeDecodeError for a body
    (or an escape in it) that is not UTF-8."""
    pairs: list[tuple[str, str]] = []
    for field in body.decode("utf-8").split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "%" in field or "+" in field:
            name = unquote_plus(name, errors="strict")
            value = unquote_plus(value, errors="strict")
        pairs.append((name, value))
    return pairs


def _forged() -> _Verdict:
    return _reject(403, "invalid_signature", f"{SIGNATURE_HEADER} does not match")


def _json_pairs(body: bytes) -> list[tuple[str, Any]] | _Verdict:
    """A JSON body's members in order, repeats included; the verdict refusing anything but
    an object."""
    try:
        document = loads_strict(body, object_pairs_hook=_JsonObject)
    except (ValueError, RecursionError):
        return _body_error("is not valid JSON")
    if not isinstance(document, _JsonObject):
        return _body_error("must be a JSON object")
    return document.pairs


def _event_type_label(params: dict[str, Any]) -> str:
    """The webhook's EventType when the reference lists it, else ``unknown``."""
    listed = params.get("EventType")
    return listed if isinstance(listed, str) and listed in EVENT_TYPES else UNKNOWN


_SERVICE = web.RequestKey("webhook_service", str)
"""The ServiceSid of a webhook whose signature holds: its outcome counts for that service."""


def _note_service(request: web.Request, params: dict[str, Any]) -> None:
    # Counted for its service only once signed: an unsigned ServiceSid could be anything.
    service = params.get("ServiceSid")
    if is_sid(service, "IS"):
        assert isinstance(service, str)
        request[_SERVICE] = service


_RECEIVE_SYNC_WEBHOOK = openapi.Operation(
    operation_id="receiveSyncWebhook",
    summary="A Twilio Sync webhook",
    tag="webhooks",
    description=(
        "Checked in this order: content type (415), size (413), signature (403; a form must be "
        "UTF-8 to be checked, else 400), AccountSid (403, when `PRESENCE_ACCOUNT_SID` is set), "
        "parameters (400), then Redis (503). A 200 is sent only once the event's effect is "
        "stored."
    ),
    parameters=(
        openapi.header_parameter(
            SIGNATURE_HEADER,
            "Twilio's signature of the request, checked against every token of "
            "`PRESENCE_TWILIO_AUTH_TOKEN` (missing or wrong: 403). Not needed when "
            "`PRESENCE_ALLOW_UNSIGNED_WEBHOOKS` is true.",
        ),
        openapi.header_parameter(
            SIGNATURE_SETTINGS_HEADER,
            "`algorithm=HMAC_SHA256` to sign with SHA-256 (default HMAC_SHA1)",
        ),
        openapi.header_parameter(
            IDEMPOTENCY_HEADER,
            "Twilio's retry token: a document, list or map event whose token was already "
            "recorded is a duplicate",
        ),
        openapi.query_parameter(
            "bodySHA256",
            {"type": "string"},
            "hex SHA-256 of a JSON body, which the signature covers",
        ),
    ),
    request_body=openapi.sync_event_body(),
    responses={
        "200": openapi.reply(
            "`applied`: stored; `duplicate`: seen before; `stale`: superseded; `ignored`: an "
            "EventType not listed, or a reachability event of Identity=system",
            openapi.ref("WebhookOutcome"),
        ),
        "400": openapi.reply(
            "missing or malformed parameters (each one named), a listed parameter given twice, "
            f"a body that is not UTF-8 or JSON, or over {MAX_PARAMETERS} parameters",
            openapi.ref("InvalidPayload"),
        ),
        "403": openapi.error(
            "a bad signature, or an AccountSid not accepted",
            "invalid_signature",
            "account_not_allowed",
        ),
        "413": openapi.error("the body is over `PRESENCE_MAX_BODY_BYTES`", "payload_too_large"),
        "415": openapi.error("neither a form nor JSON", "unsupported_media_type"),
        "503": openapi.response_ref("StoreUnavailable"),
    },
    schemas=openapi.sync_event_schemas(MAX_PARAMETERS),
)


class WebhookReceiver:
    """Verifies, validates and applies Sync webhooks."""

    def __init__(
        self,
        settings: Settings,
        store: PresenceStore,
        metrics: Metrics,
        activity: Activity | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.activity = activity
        self.max_body = settings.max_body_bytes
        self.account_sid = settings.account_sid
        self.public_url = urlsplit(settings.webhook_url) if settings.webhook_url else None
        self.validator = (
            None if settings.unsigned_webhooks else SignatureValidator(settings.twilio_auth_token)
        )

    def signed_url(self, request: web.Request) -> str:
        """The URL Twilio signed: ``PRESENCE_WEBHOOK_URL`` (with the request's query, where
        Twilio puts ``bodySHA256``), else the URL this request was sent to; never a fragment
        (Twilio's connection overrides, ``#rc=3&rp=...``, "do not make it into the signature
        computation": https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides)."""
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
        # Exactly one: with several, which one was checked would be up to the reader.
        given = request.headers.getall(SIGNATURE_HEADER, [])
        if len(given) != 1 or not given[0]:
            return False
        signature = given[0]
        return self.validator.validate(
            self.signed_url(request),
            signature,
            params=form,
            json_body=body if form is None else None,
            settings_header=request.headers.get(SIGNATURE_SETTINGS_HEADER),
        )

    @openapi.documented(post=_RECEIVE_SYNC_WEBHOOK)
    async def handle(self, request: web.Request) -> web.Response:
        metrics = self.metrics
        started = time.perf_counter()
        metrics.webhook_started()
        try:
            verdict = await self._handle(request)
        finally:
            metrics.webhook_finished(time.perf_counter() - started)
        outcome = verdict.outcome if verdict.rejection is None else "rejected"
        metrics.webhook(verdict.event_type, outcome)
        if verdict.rejection is not None:
            metrics.webhooks_rejected.labels(verdict.rejection).inc()
        request[WEBHOOK_OUTCOME] = verdict.rejection or verdict.outcome
        service = request.get(_SERVICE)
        if self.activity is not None and service is not None:
            self.activity.count(service, outcome)
        return verdict.response

    async def _handle(self, request: web.Request) -> _Verdict:
        """The checks in the module's order, the first to fail giving the verdict; then the
        event, applied."""
        if request.content_type not in (FORM, JSON):
            return _reject(415, "unsupported_media_type", f"send {FORM} (as Twilio does) or {JSON}")
        length, content = request.content_length, request.content
        if length is not None and length <= self.max_body and content.is_eof():
            # Whole already (a webhook's body nearly always comes with its headers): taken as
            # it is, without read()'s loop of awaits and copies.
            body: bytes | None = content.read_nowait()
        else:
            body = await self._read_body(request)
        if body is None:
            return _reject(
                413, "payload_too_large", f"the body is larger than {self.max_body} bytes"
            )
        pairs = self._signed_pairs(request, body)
        if isinstance(pairs, _Verdict):
            return pairs
        if len(pairs) > MAX_PARAMETERS:
            return _body_error(f"has more than {MAX_PARAMETERS} parameters")
        params, repeated = gathered(pairs)
        _note_service(request, params)
        event_type = _event_type_label(params)
        if not self._account_accepted(params):
            return _reject(
                403, "account_not_allowed", "AccountSid is not accepted here", event_type
            )
        try:
            event = parse_parameters(params, repeated)
        except InvalidPayload as error:
            return _invalid(error.errors, event_type)
        if event is None:
            return _done(Outcome.IGNORED, event_type)
        return await self._apply(request, event, event_type)

    def _signed_pairs(self, request: web.Request, body: bytes) -> list[tuple[str, Any]] | _Verdict:
        """The body's parameters once its signature holds, else the verdict refusing it.

        A JSON body is signed as bytes (bodySHA256) and checked before it is parsed; a form
        is signed as its decoded parameters, so it must be decoded first."""
        if request.content_type == FORM:
            try:
                pairs = _form_pairs(body)
            except UnicodeDecodeError:
                return _body_error("is not valid UTF-8")
            return pairs if self._signed(request, pairs, body) else _forged()
        if not self._signed(request, None, body):
            return _forged()
        return _json_pairs(body)

    def _account_accepted(self, params: dict[str, Any]) -> bool:
        """True unless ``PRESENCE_ACCOUNT_SID`` is set and the webhook's AccountSid is another."""
        if self.account_sid is None:
            return True
        account = params.get("AccountSid")
        return isinstance(account, str) and account.lower() == self.account_sid.lower()

    async def _apply(
        self, request: web.Request, event: ReachabilityEvent | CollectionEvent, event_type: str
    ) -> _Verdict:
        """The event stored, and its outcome; a 503 when Redis cannot take it."""
        try:
            if not isinstance(event, ReachabilityEvent):
                return _done(await self.store.record(event, self._token(request)), event_type)
            if event.identity == SYSTEM_IDENTITY:
                return _done(Outcome.IGNORED, event_type)
            # Here rather than in a coroutine of its own: nearly every webhook comes this way.
            result = await self.store.apply_reachability(event)
            self._observe(result, event.service_sid)
            return _done(result.outcome, event_type)
        except ReplicasBehind as error:
            # Applied on the master only: Twilio's retry is answered duplicate or stale.
            log.warning("replicas did not confirm a webhook: %s", error)
            self.metrics.redis_wait_timeouts.labels("webhook").inc()
            return _Verdict(store_unavailable(), event_type, rejection="store_unavailable")
        except StoreUnavailable as error:
            log.warning("store unavailable for a webhook: %s", error)
            self.metrics.redis_error("webhook")
            return _Verdict(store_unavailable(), event_type, rejection="store_unavailable")

    def _observe(self, result: EventResult, service_sid: str) -> None:
        log_changes(result.changes)
        self.metrics.published(result.changes)
        if result.flap_suppressed:
            self.metrics.flap_suppressed()
            if self.activity is not None:
                self.activity.count(service_sid, "flaps_suppressed")
        if result.endpoints_expired:
            self.metrics.endpoints_expired.inc(result.endpoints_expired)

    @staticmethod
    def _token(request: web.Request) -> str | None:
        token = request.headers.get(IDEMPOTENCY_HEADER)
        # Twilio's tokens are short printable ASCII; anything else is not one of them.
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        return token

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None as soon as it is known to be over the limit."""
        if request.content_length is not None:
            if request.content_length > self.max_body:
                return None
            return await request.read()  # it stops at the length declared
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > self.max_body:
                return None
        return bytes(body)
