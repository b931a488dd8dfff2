"""``presence simulate``: its options, checked, and a run from them to an exit status: the
traffic model by default, a reconnect storm with ``--storm``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from presence.simulate.report import Progress, render
from presence.simulate.send import DEFAULT_CONCURRENCY, DEFAULT_URL, SendOptions, simulate
from presence.simulate.storm import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_RECONNECT_DELAY,
    DEFAULT_STORM_IDENTITIES,
    DEFAULT_WAVE_SECONDS,
    StormConfig,
)
from presence.simulate.storm_run import ApiOptions, run_storm
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
GRACE_VARIABLE = "PRESENCE_OFFLINE_GRACE_SECONDS"
API_TOKEN_VARIABLE = "PRESENCE_API_TOKEN"

TRAFFIC_ONLY = (
    "events",
    "duration",
    "rate",
    "max_endpoints",
    "flap_share",
    "collection_share",
    "duplicates",
    "reorder",
    "lost_disconnects",
)
"""Options of the traffic model, which a storm has no use for."""
STORM_ONLY = ("wave", "reconnect_delay", "grace", "api_url", "api_token")

_T = TypeVar("_T", int, float)
_WAVE = f"{DEFAULT_WAVE_SECONDS:g}"
_DELAY = f"{DEFAULT_RECONNECT_DELAY[0]:g}-{DEFAULT_RECONNECT_DELAY[1]:g}"


class UsageError(Exception):
    """A bad option: the message names it."""


@dataclass(frozen=True)
class SimulateOptions:
    traffic: TrafficConfig
    send: SendOptions
    json: bool = False


@dataclass(frozen=True)
class StormOptions:
    storm: StormConfig
    send: SendOptions
    api: ApiOptions
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
        (
            "--identities",
            f"number of identities (default: {DEFAULT_IDENTITIES};"
            f" {DEFAULT_STORM_IDENTITIES} with --storm)",
        ),
        ("--max-endpoints", f"endpoints per identity, at most (default: {DEFAULT_MAX_ENDPOINTS})"),
        ("--events", f"webhooks to send (default: {DEFAULT_EVENTS})"),
        ("--duration", "send for this many seconds instead of a number of webhooks"),
        ("--rate", "webhooks per second, evenly spaced (default: as fast as possible)"),
        (
            "--concurrency",
            f"requests in flight, each on a connection (default: {DEFAULT_CONCURRENCY})",
        ),
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
        ("--wave", f"--storm: seconds over which the disconnects fall (default: {_WAVE})"),
        (
            "--reconnect-delay",
            f"--storm: MIN-MAX seconds from a disconnect to its reconnect (default: {_DELAY})",
        ),
        (
            "--grace",
            f"--storm: the service's offline grace, to follow its feed for after the storm"
            f" (default: ${GRACE_VARIABLE}, else {DEFAULT_GRACE_SECONDS:g})",
        ),
        ("--api-url", "--storm: base URL of the query API (default: that of --url)"),
        ("--api-token", f"--storm: bearer token of the query API (default: ${API_TOKEN_VARIABLE})"),
    ]
    parser.add_argument(
        "--storm",
        action="store_true",
        help="a reconnect storm: every identity online, then each one disconnected and"
        " reconnected on a new endpoint; reports the flickers (offline announced)",
    )
    for flag, help_text in flags:
        parser.add_argument(flag, default=None, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(
    args: Mapping[str, Any], name: str, kind: Callable[[str], _T], low: _T, high: _T | None = None
) -> _T | None:
    text = args.get(name)
    if text is None:
        return None
    flag = _flag(name)
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
        raise UsageError(f"{_flag(name)} {sid_problem(prefix)}, not {text!r}")
    return text


def _url(args: Mapping[str, Any], name: str, fallback: str) -> str:
    url = args.get(name) or fallback
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{_flag(name)} must be an http:// or https:// URL, not {url!r}")
    return url


def _token(args: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    # During a token rotation the variable holds "primary,secondary": sign with the primary.
    return args.get("token") or env.get(TOKEN_VARIABLE, "").split(",")[0].strip() or None


def options(
    args: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> SimulateOptions | StormOptions:
    """Checks the parsed options; raises ``UsageError`` naming the first bad one."""
    env = os.environ if environ is None else environ
    if args.get("storm"):
        return storm_options(args, env)
    for name in STORM_ONLY:
        if args.get(name) is not None:
            raise UsageError(f"{_flag(name)} needs --storm")
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
    token = _token(args, env)
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


def _delay(args: Mapping[str, Any]) -> tuple[float, float]:
    text = args.get("reconnect_delay")
    if text is None:
        return DEFAULT_RECONNECT_DELAY
    low, _, high = str(text).partition("-")
    problem = f"--reconnect-delay must be MIN-MAX seconds (0 <= MIN <= MAX), not {text!r}"
    try:
        delay = (float(low), float(high or low))
    except ValueError:
        raise UsageError(problem) from None
    if not 0 <= delay[0] <= delay[1] <= 86400:  # NaN fails too
        raise UsageError(problem)
    return delay


def _grace(args: Mapping[str, Any], env: Mapping[str, str]) -> float:
    grace = _number(args, "grace", float, 0.0, 86400.0)
    if grace is not None:
        return grace
    # Read as the service reads it, here in the environment it would run in; a value the
    # service would refuse is the service's business: then its default.
    with contextlib.suppress(ValueError):
        grace = float(env.get(GRACE_VARIABLE) or "nan")
    return grace if grace is not None and 0 <= grace <= 86400 else DEFAULT_GRACE_SECONDS


def storm_options(args: Mapping[str, Any], env: Mapping[str, str]) -> StormOptions:
    """The options of ``--storm``; raises ``UsageError`` naming the first bad one."""
    for name in TRAFFIC_ONLY:
        if args.get(name) is not None:
            raise UsageError(f"{_flag(name)} does not apply to --storm")
    url = _url(args, "url", DEFAULT_URL)
    sign_url = _url(args, "sign_url", env.get(WEBHOOK_URL_VARIABLE) or url)
    parts = urlsplit(url)
    api_url = _url(args, "api_url", f"{parts.scheme}://{parts.netloc}").rstrip("/")
    low, high = _delay(args)
    seed = _number(args, "seed", int, 0)
    wave = _number(args, "wave", float, 0.0, 86400.0)
    storm = StormConfig(
        identities=_number(args, "identities", int, 1, 10_000_000) or DEFAULT_STORM_IDENTITIES,
        wave=DEFAULT_WAVE_SECONDS if wave is None else wave,
        reconnect_min=low,
        reconnect_max=high,
        grace=_grace(args, env),
        seed=secrets.randbelow(2**31) if seed is None else seed,
        service_sid=_sid(args, "service_sid", "IS", None),
        account_sid=_sid(args, "account_sid", "AC", env.get(ACCOUNT_VARIABLE) or None),
    )
    send = SendOptions(
        url=url,
        token=_token(args, env),
        sign_url=sign_url,
        concurrency=_number(args, "concurrency", int, 1, 10_000) or DEFAULT_CONCURRENCY,
    )
    api_token = args.get("api_token") or env.get(API_TOKEN_VARIABLE) or None
    return StormOptions(storm, send, ApiOptions(api_url, api_token), json=bool(args.get("json")))


def run(chosen: SimulateOptions | StormOptions) -> int:
    """Runs the simulation, prints the summary on stdout; returns the exit status."""
    if chosen.send.token is None:
        print(
            f"presence simulate: no auth token (--token or {TOKEN_VARIABLE}):"
            " sending UNSIGNED webhooks",
            file=sys.stderr,
        )
    if isinstance(chosen, StormOptions):
        storm = asyncio.run(run_storm(chosen.storm, chosen.send, chosen.api, sys.stderr))
        print(json.dumps(storm.as_json()) if chosen.json else storm.as_text(), flush=True)
        return storm.exit_status
    progress = Progress(sys.stderr, chosen.traffic.events, chosen.send.duration)
    summary = asyncio.run(simulate(Traffic(chosen.traffic), chosen.send, progress))
    print(render(summary, chosen.json), flush=True)
    return summary.exit_status
