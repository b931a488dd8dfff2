"""The query API under ``/v1/``: is X online, which of these are, who is, how many."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from presence.activity import Activity
from presence.events import MAX_NAME_LENGTH, name_problem
from presence.store.base import PresenceStore
from presence.store.listing import InvalidListingCursor
from presence.twilio import is_sid, sid_problem
from presence.web import openapi
from presence.web.errors import BadRequest
from presence.web.replies import (
    MAX_LOOKUP,
    ActivityReply,
    Identity,
    ListedIdentity,
    OnlinePage,
    identity_reply,
    json_reply,
    stats_reply,
)

MAX_LOOKUP_BYTES = 8 * 1024 * 1024
"""Room for 1000 names of the longest length, JSON-escaped."""
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def service_sid(request: web.Request) -> str:
    """The ServiceSid of the request's path; raises ``BadRequest`` for anything else."""
    sid = request.match_info["service_sid"]
    if not is_sid(sid, "IS"):
        raise BadRequest("invalid_service_sid", f"service_sid {sid_problem('IS')}")
    return sid


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
        raise BadRequest("invalid_limit", f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


def _versions(request: web.Request) -> bool:
    raw = request.query.get("versions", "false")
    if raw not in ("true", "false"):
        raise BadRequest("invalid_versions", "versions must be true or false")
    return raw == "true"


async def _lookup_names(request: web.Request) -> list[str]:
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, RecursionError):
        raise BadRequest("invalid_body", "the body must be JSON") from None
    names = body.get("identities") if isinstance(body, dict) else None
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_LOOKUP:
        raise BadRequest(
            "invalid_body", f'the body must be {{"identities": [1 to {MAX_LOOKUP} names]}}'
        )
    for index, name in enumerate(names):
        problem = name_problem(name)
        if problem:
            raise BadRequest("invalid_body", f"identities[{index}] {problem}")
    return names


_IDENTITY = openapi.path_parameter(
    "identity",
    f"percent-encoded; any Unicode text of 1 to {MAX_NAME_LENGTH} characters (`.` and `..` only "
    "through a lookup)",
    TypeAdapter(Identity).json_schema(),
)

_ONLINE_PARAMETERS = (
    openapi.query_parameter(
        "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}
    ),
    openapi.query_parameter(
        "cursor",
        {"type": "string"},
        "`next_cursor` of the previous page (any other value: `invalid_cursor`); empty or "
        "absent: the first page",
    ),
    openapi.query_parameter(
        "versions",
        {"type": "string", "enum": ["true", "false"], "default": "false"},
        "`true`: each identity with its version",
    ),
)


class QueryApi:
    """Handlers of the query API, answering from the store."""

    def __init__(self, store: PresenceStore, activity: Activity) -> None:
        self.store = store
        self.activity = activity

    def routes(self) -> list[web.RouteDef]:
        base = "/v1/services/{service_sid}"
        return [
            web.get(base + "/identities/{identity:[^/]+}", self.identity),
            web.post(base + "/lookup", self.lookup),
            web.get(base + "/online", self.online),
            web.get(base + "/stats", self.stats),
            web.get(base + "/activity", self.activity_of),
        ]

    @openapi.documented(
        get=openapi.query_operation(
            "getIdentity",
            "Is this identity online? (never seen: offline, version 0)",
            openapi.reply("the identity's presence", openapi.ref("IdentityReply")),
            "invalid_service_sid",
            "invalid_identity",
            path_parameters=(openapi.SERVICE_SID, _IDENTITY),
        )
    )
    async def identity(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        identity = request.match_info["identity"]
        problem = name_problem(identity)
        if problem:
            raise BadRequest("invalid_identity", f"identity {problem}")
        presence = await self.store.identity(sid, identity)
        return json_reply(identity_reply(presence))

    @openapi.documented(
        post=openapi.query_operation(
            "lookupIdentities",
            f"Which of these (1 to {MAX_LOOKUP}) are online? Answered in request order",
            openapi.reply("each identity's presence, in request order", openapi.ref("Lookups")),
            "invalid_service_sid",
            "invalid_body",
            request_body={"required": True, "content": openapi.json_content(openapi.ref("Lookup"))},
            more_responses={
                "413": openapi.error(
                    f"the body is over {MAX_LOOKUP_BYTES // 2**20} MiB", "payload_too_large"
                )
            },
        )
    )
    async def lookup(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        found = await self.store.lookup(sid, await _lookup_names(request))
        return json_reply({"identities": [identity_reply(p) for p in found]})

    @openapi.documented(
        get=openapi.query_operation(
            "listOnline",
            "Who is online, a page at a time",
            openapi.reply("a page of identity names", openapi.ref("OnlinePage")),
            "invalid_service_sid",
            "invalid_limit",
            "invalid_cursor",
            "invalid_versions",
            description=(
                "Follow `next_cursor` until it is null: every identity that stays online "
                "throughout the walk is listed exactly once; identities pending offline are "
                "listed. With `versions=true`, each is `{identity, version}`: apply a later "
                "change of it only when its version is higher."
            ),
            parameters=_ONLINE_PARAMETERS,
        )
    )
    async def online(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        limit, versions = _limit(request), _versions(request)
        cursor = request.query.get("cursor") or None
        try:
            page = await self.store.online(sid, limit, cursor, versions=versions)
        except InvalidListingCursor as error:
            raise BadRequest("invalid_cursor", str(error)) from None
        identities: list[str] | list[ListedIdentity] = page.identities
        if page.versions is not None:
            identities = [
                ListedIdentity(identity=name, version=version)
                for name, version in zip(page.identities, page.versions, strict=True)
            ]
        reply: OnlinePage = {
            "identities": identities,
            "next_cursor": page.next_cursor,
            "feed_cursor": page.feed_cursor.encode(),
        }
        return json_reply(reply)

    @openapi.documented(
        get=openapi.query_operation(
            "getStats",
            "How many identities are online and pending offline, and endpoints connected",
            openapi.reply("the service's counts", openapi.ref("StatsReply")),
            "invalid_service_sid",
        )
    )
    async def stats(self, request: web.Request) -> web.Response:
        stats = await self.store.stats(service_sid(request))
        return json_reply(stats_reply(stats))

    @openapi.documented(
        get=openapi.query_operation(
            "getActivity",
            "Webhook outcomes of the last hour, a minute at a time (every replica's)",
            openapi.reply("sixty minutes, oldest first", openapi.ref("ActivityReply")),
            "invalid_service_sid",
            description=(
                "Counted once a webhook's signature holds (a webhook refused before, its "
                "ServiceSid unproven, is counted only in `/metrics`); each process adds its "
                "counts to Redis every 2 s."
            ),
        )
    )
    async def activity_of(self, request: web.Request) -> web.Response:
        minutes = await self.activity.minutes(service_sid(request))
        reply: ActivityReply = {"minutes": minutes}
        return json_reply(reply)
