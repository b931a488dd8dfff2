"""``presence simulate``: its options, checked, and a run from them to an exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from presence.simulate.report import Progress, render
from presence.simulate.send import DEFAULT_CONCURRENCY, DEFAULT_URL, SendOptions, simulate
from presence.simulate.traffic import (
    DEFAULT_COLLECTION_SHARE,
    DEFAULT_EVENTS,
    DEFAULT_FLAP_SHARE,
    DEFAULT_IDENTITIES,
    DEFAULT_MAX_ENDPOINTS,
    Traffic,
    TrafficConfig,
)
from presence.twilio import is_sid, sid_problem

TOKEN_VARIABLE = "PRESENCE_TWILIO_AUTH_TOKEN"
ACCOUNT_VARIABLE = "PRESENCE_ACCOUNT_SID"
WEBHOOK_URL_VARIABLE = "PRESENCE_WEBHOOK_URL"

_T = TypeVar("_T", int, float)


class UsageError(Exception):
    """A bad option: the message names it."""


@dataclass(frozen=True)
class SimulateOptions:
    traffic: TrafficConfig
    send: SendOptions
    json: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, as text: ``options`` checks them, so that a bad one is one line."""
    flags: list[tuple[str, str]] = [
        ("--url", f"where to send the webhooks (default: {DEFAULT_URL})"),
        (
            "--sign-url",
            f"the public webhook URL to sign for, as Twilio does (default: ${WEBHOOK_URL_VARIABLE}"
            ", else --url)",
        ),
        ("--token", f"auth token to sign with (default: ${TOKEN_VARIABLE}; none: unsigned)"),
        ("--identities", f"number of identities (default: {DEFAULT_IDENTITIES})"),
        ("--max-endpoints", f"endpoints per identity, at most (default: {DEFAULT_MAX_ENDPOINTS})"),
        ("--events", f"webhooks to send (default: {DEFAULT_EVENTS})"),
        ("--duration", "send for this many seconds instead of a number of webhooks"),
        ("--rate", "webhooks per second, evenly spaced (default: as fast as possible)"),
        ("--concurrency", f"requests in flight (default: {DEFAULT_CONCURRENCY})"),
        (
            "--flap-share",
            f"share of reachability changes that flap (default: {DEFAULT_FLAP_SHARE})",
        ),
        (
            "--collection-share",
            f"share of document/list/map events (default: {DEFAULT_COLLECTION_SHARE})",
        ),
        ("--duplicates", "share of webhooks sent a second time (default: 0)"),
        ("--reorder", "share of reachability events delivered late (default: 0)"),
        ("--lost-disconnects", "share of disconnects never sent (default: 0)"),
        ("--service-sid", "ServiceSid (default: one derived from the seed)"),
        ("--account-sid", f"AccountSid (default: ${ACCOUNT_VARIABLE}, else from the seed)"),
        ("--seed", "seed of the generator (default: random, reported in the summary)"),
    ]
    for flag, help_text in flags:
        parser.add_argument(flag, default=None, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _number(
    args: Mapping[str, Any], name: str, kind: Callable[[str], _T], low: _T, high: _T | None = None
) -> _T | None:
    text = args.get(name)
    if text is None:
        return None
    flag = "--" + name.replace("_", "-")
    bound = f"from {low} to {high}" if high is not None else f">= {low}"
    noun = "an integer" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{flag} must be {noun} {bound}, not {text!r}") from None
    if value != value or value < low or (high is not None and value > high):  # NaN too
        raise UsageError(f"{flag} must be {noun} {bound}, not {text!r}")
    return value


def _sid(args: Mapping[str, Any], name: str, prefix: str, fallback: str | None) -> str | None:
    text = args.get(name) or fallback
    if text is not None and not is_sid(text, prefix):
        flag = "--" + name.replace("_", "-")
        raise UsageError(f"{flag} {sid_problem(prefix)}, not {text!r}")
    return text


def _url(args: Mapping[str, Any], name: str, fallback: str) -> str:
    url = args.get(name) or fallback
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        flag = "--" + name.replace("_", "-")
        raise UsageError(f"{flag} must be an http:// or https:// URL, not {url!r}")
    return url


def options(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> SimulateOptions:
    """Checks the parsed options; raises ``UsageError`` naming the first bad one."""
    env = os.environ if environ is None else environ
    url = _url(args, "url", DEFAULT_URL)
    # Signed as Twilio signs: for the public URL the service checks (PRESENCE_WEBHOOK_URL, read
    # like the service reads it), which differs from --url behind a proxy or load balancer.
    sign_url = _url(args, "sign_url", env.get(WEBHOOK_URL_VARIABLE) or url)
    events = _number(args, "events", int, 1)
    duration = _number(args, "duration", float, 0.001)
    if events is not None and duration is not None:
        raise UsageError("--events and --duration exclude each other: give one")
    if events is None and duration is None:
        events = DEFAULT_EVENTS
    shares: dict[str, float] = {}
    for name in ("flap_share", "collection_share", "duplicates", "reorder", "lost_disconnects"):
        share = _number(args, name, float, 0.0, 1.0)
        if share is not None:
            shares[name] = share
    # During a token rotation the variable holds "primary,secondary": sign with the primary.
    token = args.get("token") or env.get(TOKEN_VARIABLE, "").split(",")[0].strip() or None
    seed = _number(args, "seed", int, 0)
    traffic = TrafficConfig(
        identities=_number(args, "identities", int, 1, 10_000_000) or DEFAULT_IDENTITIES,
        max_endpoints=_number(args, "max_endpoints", int, 1, 1000) or DEFAULT_MAX_ENDPOINTS,
        events=events,
        seed=secrets.randbelow(2**31) if seed is None else seed,
        service_sid=_sid(args, "service_sid", "IS", None),
        account_sid=_sid(args, "account_sid", "AC", env.get(ACCOUNT_VARIABLE) or None),
        **shares,
    )
    send = SendOptions(
        url=url,
        token=token,
        sign_url=sign_url,
        concurrency=_number(args, "concurrency", int, 1, 10_000) or DEFAULT_CONCURRENCY,
        rate=_number(args, "rate", float, 0.001),
        duration=duration,
    )
    return SimulateOptions(traffic, send, json=bool(args.get("json")))


def run(chosen: SimulateOptions) -> int:
    """Runs the simulation, prints the summary on stdout; returns the exit status."""
    if chosen.send.token is None:
        print(
            f"presence simulate: no auth token (--token or {TOKEN_VARIABLE}):"
            " sending UNSIGNED webhooks",
            file=sys.stderr,
        )
    progress = Progress(sys.stderr, chosen.traffic.events, chosen.send.duration)
    summary = asyncio.run(simulate(Traffic(chosen.traffic), chosen.send, progress))
    print(render(summary, chosen.json), flush=True)
    return summary.exit_status
