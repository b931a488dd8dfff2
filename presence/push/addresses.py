"""Which URLs a push subscription may call: http or https, and, unless
``PRESENCE_PUSH_ALLOW_PRIVATE``, none that resolves to an address inside a network (loopback,
private, link-local with the cloud metadata address 169.254.169.254, multicast, unspecified,
shared 100.64.0.0/10, reserved), IPv4-mapped IPv6 forms included: a subscription must not
turn the service into a way into the networks it sits in. The check is made at creation and
at every attempt, on the very addresses the connection is made to (``GuardedResolver``), so a
name that changes its address after the check cannot pass it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from presence.push.records import MAX_URL_LENGTH

SHARED = ipaddress.ip_network("100.64.0.0/10")
"""Carrier-grade NAT (RFC 6598): not private by Python's reckoning, and not the Internet."""


class AddressRefused(OSError):
    """The name resolves to an address push may not call."""


def refused(address: str) -> bool:
    """Whether push may not call ``address`` (unless private addresses are allowed)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or (isinstance(ip, ipaddress.IPv4Address) and ip in SHARED)
    )


def url_problem(url: str) -> str | None:
    """What is wrong with a subscription's URL as written (None: nothing)."""
    if len(url) > MAX_URL_LENGTH:
        return f"url must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port out of range, or not a number, raises
    except ValueError:
        return "url is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "url must be an absolute http:// or https:// URL"
    return None


async def resolves_to_refused(url: str) -> bool:
    """Whether the URL's host resolves to an address push may not call; a name that does not
    resolve (yet) is not refused here: its attempts fail with ``dns``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):
        return False
    return any(refused(str(info[4][0])) for info in found)


def literal_refused(url: str) -> bool:
    """Whether the URL's host is an address (no name to resolve: aiohttp connects to it as
    it is, without asking a resolver) that push may not call."""
    host = urlsplit(url).hostname or ""
    try:
        return refused(host)
    except ValueError:
        return False  # a name: the resolver checks what it resolves to


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing (``AddressRefused``) a name with any address push may not
    call; a proxy's own name is not a subscription's and passes."""

    def __init__(self, allow_private: bool, exempt: frozenset[str] = frozenset()) -> None:
        self._inner = DefaultResolver()
        self.allow_private = allow_private
        self.exempt = exempt

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if not self.allow_private and host not in self.exempt:
            for result in found:
                if refused(str(result["host"])):
                    raise AddressRefused(f"{host} resolves to {result['host']}")
        return found

    async def close(self) -> None:
        await self._inner.close()
