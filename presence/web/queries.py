"""The query API under ``/v1/``: is X online, which of these are, who is, how many."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from presence.activity import Activity
from presence.events import name_problem
from presence.store.base import PresenceStore
from presence.store.listing import InvalidListingCursor
from presence.twilio import is_sid, sid_problem
from presence.web.errors import BadRequest
from presence.web.replies import (
    MAX_LOOKUP,
    ActivityReply,
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

    async def identity(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        identity = request.match_info["identity"]
        problem = name_problem(identity)
        if problem:
            raise BadRequest("invalid_identity", f"identity {problem}")
        presence = await self.store.identity(sid, identity)
        return json_reply(identity_reply(presence))

    async def lookup(self, request: web.Request) -> web.Response:
        sid = service_sid(request)
        found = await self.store.lookup(sid, await _lookup_names(request))
        return json_reply({"identities": [identity_reply(p) for p in found]})

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

    async def stats(self, request: web.Request) -> web.Response:
        stats = await self.store.stats(service_sid(request))
        return json_reply(stats_reply(stats))

    async def activity_of(self, request: web.Request) -> web.Response:
        minutes = await self.activity.minutes(service_sid(request))
        reply: ActivityReply = {"minutes": minutes}
        return json_reply(reply)
