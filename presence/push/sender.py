"""One attempt to deliver a push event: a POST with the Standard Webhooks headers, no
redirect followed, within ``PRESENCE_PUSH_TIMEOUT_SECONDS``, through ``HTTPS_PROXY`` /
``HTTP_PROXY`` unless ``NO_PROXY`` says otherwise, verified against the system's CA
certificates; and what came of it: a status, or why there was none."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.request import getproxies

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from presence import __version__
from presence.push.addresses import (
    AddressRefused,
    GuardedResolver,
    literal_refused,
    resolves_to_refused,
)
from presence.push.records import Failure

USER_AGENT = f"presence/{__version__}"


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: an HTTP status, or the failure that kept it from one."""

    status: int | None
    error: Failure | None
    duration_ms: int

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def failure(self) -> str:
        """The subscription's ``last_failure``: the status, or the failure's name."""
        return str(self.status) if self.error is None else self.error.value


def _proxy_hosts() -> frozenset[str]:
    hosts = set()
    for url in getproxies().values():
        host = urlsplit(url if "://" in url else f"http://{url}").hostname
        if host:
            hosts.add(host)
    return frozenset(hosts)


Proxy = tuple[URL, aiohttp.BasicAuth | None] | None


def _proxy_of(url: str) -> Proxy:
    """The proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` name for ``url``, unless ``NO_PROXY`` names
    its host; None for none."""
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None


def classify(error: BaseException) -> Failure:
    """The failure an exception of an attempt stands for."""
    if isinstance(error, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return (
            Failure.ADDRESS_REFUSED if isinstance(error.os_error, AddressRefused) else Failure.DNS
        )
    if isinstance(error, AddressRefused):
        return Failure.ADDRESS_REFUSED
    if isinstance(error, aiohttp.ClientSSLError | ssl.SSLError):
        return Failure.TLS
    return Failure.CONNECT


class Sender:
    """Attempts of push events, on one connection pool for the process."""

    def __init__(self, *, timeout_seconds: float, allow_private: bool) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str, int | None], Proxy] = {}
        """Each origin's proxy, looked up once (aiohttp's trust_env would look it up, and
        read ~/.netrc, in a thread at every request)."""

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver = GuardedResolver(self.allow_private, exempt=_proxy_hosts())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=0),
                timeout=self.timeout,
                headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            )
        return self._session

    async def _proxy(self, url: str) -> Proxy:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        if origin not in self._proxies:
            self._proxies[origin] = await asyncio.to_thread(_proxy_of, url)
        return self._proxies[origin]

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()

        def took() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            proxy = await self._proxy(url)
            if not self.allow_private and (
                literal_refused(url)
                # Through a proxy, the proxy resolves the name: it is checked here first.
                or (proxy is not None and await resolves_to_refused(url))
            ):
                raise AddressRefused(urlsplit(url).hostname)
            async with asyncio.timeout(self.timeout.total):
                async with self._open().post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=None if proxy is None else proxy[0],
                    proxy_auth=None if proxy is None else proxy[1],
                ) as response:
                    await response.read()
                    return Outcome(response.status, None, took())
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            return Outcome(None, classify(error), took())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
