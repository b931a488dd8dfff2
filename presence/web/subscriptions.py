"""``/v1/services/{sid}/subscriptions``: push subscriptions managed over the API (CONTRACT
section 10). Reading them takes the API or the admin token, managing them the admin token
(``auth.py``); what delivers them is ``presence.push``."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from presence.feed.cursor import FeedCursor, InvalidFeedCursor
from presence.push import signing
from presence.push.addresses import resolves_to_refused, url_problem
from presence.push.records import MAX_DESCRIPTION_LENGTH, MAX_SUBSCRIPTIONS, Subscription
from presence.push.sender import Sender
from presence.store.base import PresenceStore
from presence.store.push import TooManySubscriptions
from presence.timestamps import iso_from_ms
from presence.web import openapi
from presence.web.errors import BadRequest, NotFound, json_error
from presence.web.queries import service_sid
from presence.web.replies import json_reply

log = logging.getLogger("presence.push")

DEFAULT_OVERLAP_SECONDS = 86400
"""How long a rotated secret still signs, unless the rotation says otherwise."""
MAX_OVERLAP_SECONDS = 86400
MAX_BODY_BYTES = 16 * 1024

SUBSCRIPTION_ID = openapi.path_parameter(
    "subscription_id", "a subscription's id", {"type": "string", "pattern": "^sub_[0-9a-f]{20}$"}
)


def _operation(
    operation_id: str,
    summary: str,
    ok: tuple[str, Any],
    *codes: str,
    manage: bool,
    one: bool = True,
    body: str | None = None,
    description: str | None = None,
) -> openapi.Operation:
    """A push operation: its reply, the 400's codes, 401, 403, 404 for one subscription,
    503."""
    status, reply = ok
    responses: dict[str, Any] = {status: reply}
    if codes:
        responses["400"] = openapi.error("a malformed request: " + ", ".join(codes), *codes)
    responses["401"] = openapi.response_ref("Unauthorized")
    responses["403"] = openapi.error(
        "managing needs PRESENCE_ADMIN_TOKEN; on a real Redis, every subscription route "
        "answers 403 until it is set (`forbidden`)"
        if manage
        else "on a real Redis, every subscription route answers 403 until "
        "PRESENCE_ADMIN_TOKEN is set (`forbidden`)",
        "forbidden",
    )
    if one:
        responses["404"] = openapi.error("no such subscription", "unknown_subscription")
    responses["503"] = openapi.response_ref("StoreUnavailable")
    return openapi.Operation(
        operation_id,
        summary,
        "push",
        responses,
        description=description,
        path_parameters=(openapi.SERVICE_SID, SUBSCRIPTION_ID) if one else (openapi.SERVICE_SID,),
        request_body=None
        if body is None
        else {
            # A rotation's body may be left out (its one field has a default).
            "required": body != "Rotation",
            "content": openapi.json_content(openapi.ref(body)),
        },
        bearer=True,
    )


def _object(description: str) -> tuple[str, Any]:
    return "200", openapi.reply(description, openapi.ref("SubscriptionObject"))


async def _body(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("invalid_body", f"the body must be at most {MAX_BODY_BYTES} bytes")
    if not raw.strip() and not required:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("invalid_body", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("invalid_body", "the body must be a JSON object")
    return body


def _description(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and len(value) <= MAX_DESCRIPTION_LENGTH):
        return value
    raise BadRequest(
        "invalid_description",
        f"description must be a string of at most {MAX_DESCRIPTION_LENGTH} characters, or null",
    )


class SubscriptionsApi:
    """The routes of push subscriptions, on ``store``; ``/test`` sends with ``sender``."""

    def __init__(
        self,
        store: PresenceStore,
        sender: Sender,
        *,
        embedded: bool,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.subscriptions = store.subscriptions
        self.sender = sender
        self.embedded = embedded
        self.changed = changed
        """Called after each change of a subscription: this replica's deliveries learn of
        it at once (the others at their next lease renewal)."""

    def routes(self) -> list[web.RouteDef]:
        base = "/v1/services/{service_sid}/subscriptions"
        one = base + "/{subscription_id}"
        return [
            web.get(base, self.list),
            web.post(base, self.create),
            web.get(one, self.show),
            web.patch(one, self.change),
            web.delete(one, self.remove),
            web.post(one + "/rotate-secret", self.rotate),
            web.post(one + "/enable", self.enable),
            web.post(one + "/disable", self.disable),
            web.post(one + "/test", self.test),
            web.get(one + "/attempts", self.attempts),
        ]

    # -- what each reply shows --------------------------------------------------------------

    async def _lag_seconds(self, subscription: Subscription, now_ms: int) -> float:
        """From the first change after the committed cursor (past retention, or lost: from
        the cursor itself); 0 when there is none."""
        cursor = FeedCursor.decode(subscription.cursor)
        read = await self.store.read_feed(subscription.service_sid, cursor, limit=1)
        if read.reset is not None:
            since = cursor.position.ms
        elif read.entries:
            since = read.entries[0].position.ms
        else:
            return 0.0
        return max(0.0, (now_ms - since) / 1000)

    async def _shown(self, subscription: Subscription) -> dict[str, Any]:
        now_ms = await self.subscriptions.time_ms()
        return subscription.shown(await self._lag_seconds(subscription, now_ms))

    async def _found(self, request: web.Request) -> Subscription:
        found = await self.subscriptions.get(service_sid(request), _id(request))
        if found is None:
            raise _unknown()
        return found

    async def _url(self, value: Any) -> str:
        if not isinstance(value, str):
            raise BadRequest("invalid_url", "url must be an http:// or https:// URL")
        problem = url_problem(value)
        if problem is not None:
            raise BadRequest("invalid_url", problem)
        if not self.sender.allow_private and await resolves_to_refused(value):
            raise BadRequest(
                "invalid_url",
                "url resolves to a loopback, private, link-local, multicast, unspecified, "
                "shared or reserved address (PRESENCE_PUSH_ALLOW_PRIVATE allows them)",
            )
        return value

    # -- the routes -------------------------------------------------------------------------

    @openapi.documented(
        get=_operation(
            "listSubscriptions",
            "The service's push subscriptions",
            ("200", openapi.reply("oldest first", openapi.ref("SubscriptionList"))),
            "invalid_service_sid",
            manage=False,
            one=False,
        ),
    )
    async def list(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        found = await self.subscriptions.of_service(sid)
        return json_reply({"subscriptions": [await self._shown(s) for s in found]})

    @openapi.documented(
        post=_operation(
            "createSubscription",
            "A new push subscription; its secret is shown only here and on rotation",
            (
                "201",
                openapi.reply(
                    "the subscription, its URL as given, and its secret",
                    openapi.ref("SubscriptionWithSecret"),
                ),
            ),
            "invalid_service_sid",
            "invalid_url",
            "invalid_description",
            "invalid_cursor",
            "invalid_body",
            manage=True,
            one=False,
            body="NewSubscription",
            description=f"At most {MAX_SUBSCRIPTIONS} per service (`409` "
            "`too_many_subscriptions`). Without `since`, from the feed's present; a `since` "
            "past the retention is accepted, and the first event is then `presence.reset`.",
        ),
    )
    async def create(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        body = await _body(request, required=True)
        url = await self._url(body.get("url"))
        description = _description(body.get("description"))
        since = body.get("since")
        if since is None:
            cursor = (await self.store.read_feed(sid, None, limit=1)).cursor
        elif isinstance(since, str):
            try:
                cursor = FeedCursor.decode(since)
            except InvalidFeedCursor as error:
                raise BadRequest("invalid_cursor", f"since: {error}") from None
        else:
            raise BadRequest("invalid_cursor", "since must be a feed cursor")
        subscription = Subscription(
            id="sub_" + secrets.token_hex(10),
            service_sid=sid,
            url=url,
            description=description,
            enabled=True,
            created_at_ms=await self.subscriptions.time_ms(),
            secret=signing.new_secret(),
            # A cursor of an earlier release is kept as given: its first read is a reset.
            cursor=cursor.encode() if cursor.history is not None else str(since),
        )
        try:
            await self.subscriptions.create(subscription)
        except TooManySubscriptions as error:
            return json_error(409, "too_many_subscriptions", str(error))
        self.changed()
        if self.embedded:
            log.warning(
                "push subscription %s created on the embedded store: push subscriptions are "
                "lost when this process exits",
                subscription.id,
            )
        shown = subscription.shown(0.0) | {"url": url, "secret": subscription.secret}
        return json_reply(shown, status=201)

    @openapi.documented(
        get=_operation(
            "getSubscription",
            "One push subscription, with its delivery status",
            _object("the subscription"),
            "invalid_service_sid",
            manage=False,
        ),
    )
    async def show(self, request: web.Request) -> web.Response:
        return json_reply(await self._shown(await self._found(request)))

    @openapi.documented(
        patch=_operation(
            "changeSubscription",
            "A push subscription's URL or description changed",
            _object("the subscription after"),
            "invalid_service_sid",
            "invalid_url",
            "invalid_description",
            "invalid_body",
            manage=True,
            body="SubscriptionChange",
        ),
    )
    async def change(self, request: web.Request) -> web.Response:
        body = await _body(request, required=True)
        fields: dict[str, str] = {}
        if "url" in body:
            fields["url"] = await self._url(body["url"])
        if "description" in body:
            description = _description(body["description"])
            fields |= {
                "description": description or "",
                "has_description": "0" if description is None else "1",
            }
        if not fields:
            raise BadRequest("invalid_body", 'the body must change "url" or "description"')
        changed = await self.subscriptions.update(service_sid(request), _id(request), fields)
        if changed is None:
            raise _unknown()
        self.changed()
        return json_reply(await self._shown(changed))

    @openapi.documented(
        delete=_operation(
            "deleteSubscription",
            "A push subscription gone: no attempt starts anywhere after the next lease "
            "renewal, and those in flight are cancelled",
            ("204", {"description": "deleted"}),
            "invalid_service_sid",
            manage=True,
        ),
    )
    async def remove(self, request: web.Request) -> web.Response:
        if not await self.subscriptions.delete(service_sid(request), _id(request)):
            raise _unknown()
        self.changed()
        return web.Response(status=204)

    @openapi.documented(
        post=_operation(
            "rotateSubscriptionSecret",
            "A new secret: the old one still signs for `previous_expires_in` seconds (0 "
            "revokes it at once); at most two sign",
            (
                "200",
                openapi.reply(
                    "the subscription and its new secret", openapi.ref("SubscriptionWithSecret")
                ),
            ),
            "invalid_service_sid",
            "invalid_body",
            manage=True,
            body="Rotation",
        )
    )
    async def rotate(self, request: web.Request) -> web.Response:
        sid, sub = service_sid(request), _id(request)
        body = await _body(request, required=False)
        overlap = body.get("previous_expires_in", DEFAULT_OVERLAP_SECONDS)
        if type(overlap) is not int or not 0 <= overlap <= MAX_OVERLAP_SECONDS:
            raise BadRequest(
                "invalid_body",
                f"previous_expires_in must be an integer from 0 to {MAX_OVERLAP_SECONDS}",
            )
        now_ms = await self.subscriptions.time_ms()
        secret = signing.new_secret()
        rotated = await self.subscriptions.rotate(sid, sub, secret, now_ms + overlap * 1000)
        if rotated is None:
            raise _unknown()
        self.changed()
        return json_reply(await self._shown(rotated) | {"secret": secret})

    @openapi.documented(
        post=_operation(
            "enableSubscription",
            "Delivery goes on from the committed cursor (with a reset if it is past the retention)",
            _object("the subscription"),
            "invalid_service_sid",
            manage=True,
        )
    )
    async def enable(self, request: web.Request) -> web.Response:
        return await self._set(request, enabled="1")

    @openapi.documented(
        post=_operation(
            "disableSubscription",
            "Delivery stops: no attempt starts after the next lease renewal, those in "
            "flight are cancelled; the lag keeps growing",
            _object("the subscription"),
            "invalid_service_sid",
            manage=True,
        )
    )
    async def disable(self, request: web.Request) -> web.Response:
        return await self._set(request, enabled="0")

    async def _set(self, request: web.Request, **fields: str) -> web.Response:
        changed = await self.subscriptions.update(service_sid(request), _id(request), fields)
        if changed is None:
            raise _unknown()
        self.changed()
        return json_reply(await self._shown(changed))

    @openapi.documented(
        post=_operation(
            "testSubscription",
            "Sends one `presence.ping` now and answers what became of it (no state changes)",
            ("200", openapi.reply("the ping's outcome", openapi.ref("PingOutcome"))),
            "invalid_service_sid",
            manage=True,
        )
    )
    async def test(self, request: web.Request) -> web.Response:
        subscription = await self._found(request)
        now_ms = await self.subscriptions.time_ms()
        webhook = "msg_" + secrets.token_hex(16)
        event = {
            "type": "presence.ping",
            "timestamp": iso_from_ms(now_ms),
            "data": {"service_sid": subscription.service_sid, "subscription_id": subscription.id},
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = signing.headers(subscription.secrets_at(now_ms), webhook, now_ms // 1000, body)
        outcome = await self.sender.post(subscription.url, body, headers)
        return json_reply(
            {
                "webhook_id": webhook,
                "status": outcome.status,
                "error": None if outcome.error is None else outcome.error.value,
                "duration_ms": outcome.duration_ms,
            }
        )

    @openapi.documented(
        get=_operation(
            "listSubscriptionAttempts",
            "The last 50 attempts of a push subscription, newest first",
            ("200", openapi.reply("its attempts", openapi.ref("AttemptList"))),
            "invalid_service_sid",
            manage=False,
        )
    )
    async def attempts(self, request: web.Request) -> web.Response:
        subscription = await self._found(request)
        found = await self.subscriptions.attempts(subscription.service_sid, subscription.id)
        return json_reply({"attempts": [attempt.shown() for attempt in found]})


def _id(request: web.Request) -> str:
    return request.match_info["subscription_id"]


def _unknown() -> NotFound:
    return NotFound("unknown_subscription", "no such subscription")
