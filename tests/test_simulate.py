"""``presence simulate``: the traffic it generates, and runs against the service on real Redis."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from harness.processes import RedisServer, Service, free_port, service_env
from presence.events import EVENT_TYPES, ReachabilityEvent, parse_event
from presence.simulate import SendOptions, Traffic, TrafficConfig, Webhook, simulate
from presence.simulate.command import SimulateOptions, UsageError, options
from presence.simulate.report import Progress, Tally
from presence.simulate.traffic import derived_sid
from presence.twilio import IDEMPOTENCY_HEADER
from presence.twilio.signing import sign_form
from tests.support import AUTH_TOKEN, RunningApp, sign

StartService = Callable[..., Awaitable[RunningApp]]

FAULTY = TrafficConfig(
    identities=40,
    events=1500,
    collection_share=0.3,
    duplicates=0.1,
    reorder=0.15,
    lost_disconnects=0.1,
    seed=7,
)


def reachability_of(webhook: Webhook) -> ReachabilityEvent | None:
    event = parse_event(webhook.params.items())
    return event if isinstance(event, ReachabilityEvent) else None


# The generator, without HTTP.


def test_event_ids_increase_per_identity_and_online_matches_the_endpoint_set() -> None:
    webhooks = list(Traffic(TrafficConfig(identities=50, events=3000, seed=3)))

    assert len(webhooks) == 3000
    last: dict[str, int] = {}
    connected: dict[str, set[str]] = defaultdict(set)
    for webhook in webhooks:
        assert webhook.fault is None
        assert webhook.expected == "applied"
        event = reachability_of(webhook)
        if event is None:
            continue
        assert event.event_id > last.get(event.identity, 0)
        last[event.identity] = event.event_id
        endpoints = connected[event.identity]
        if event.connected:
            assert event.endpoint_id not in endpoints
            endpoints.add(event.endpoint_id)
        else:
            endpoints.remove(event.endpoint_id)
        assert event.is_identity_online == bool(endpoints)
        assert len(endpoints) <= 3


def test_every_event_type_appears_valid_with_the_collection_share_and_flaps() -> None:
    config = TrafficConfig(identities=100, events=4000, collection_share=0.3, seed=5)
    webhooks = list(Traffic(config))

    for webhook in webhooks:
        assert parse_event(webhook.params.items()) is not None  # raises when invalid
        assert webhook.params["ServiceSid"] == config.service
    types = Counter(webhook.event_type for webhook in webhooks)
    assert set(types) == EVENT_TYPES
    collections = sum(n for name, n in types.items() if not name.startswith("endpoint_"))
    assert 0.2 < collections / len(webhooks) < 0.4
    assert any(w.identity == "system" and "EndpointId" not in w.params for w in webhooks)
    tokens = [webhook.headers[IDEMPOTENCY_HEADER] for webhook in webhooks]
    assert len(set(tokens)) == len(tokens)
    # A flap: a disconnect directly followed by a connect, on the same endpoint or a new one.
    previous: dict[str, ReachabilityEvent] = {}
    flaps: Counter[bool] = Counter()
    for webhook in webhooks:
        event = reachability_of(webhook)
        if event is None:
            continue
        before = previous.get(event.identity)
        if before and not before.connected and event.connected:
            flaps[before.endpoint_id == event.endpoint_id] += 1
        previous[event.identity] = event
    assert flaps[True] > 0
    assert flaps[False] > 0


def test_the_traffic_is_deterministic_for_a_seed() -> None:
    config = TrafficConfig(identities=30, events=500, seed=42, duplicates=0.1, reorder=0.1)
    first, again = Traffic(config), Traffic(config)

    assert list(first) == list(again)
    assert first.expectation() == again.expectation()
    other = TrafficConfig(identities=30, events=500, seed=43, duplicates=0.1, reorder=0.1)
    assert list(Traffic(other)) != list(Traffic(config))
    assert derived_sid("IS", 42, "service") == config.service != other.service


def test_faults_give_duplicates_late_events_and_lost_disconnects() -> None:
    traffic = Traffic(FAULTY)
    webhooks = list(traffic)
    expected = traffic.expectation()

    assert len(webhooks) == FAULTY.events
    faults = Counter(webhook.fault for webhook in webhooks)
    assert faults["duplicate"] == expected.faults["duplicate"] > 50
    assert faults["late"] == expected.faults["late"] > 50
    # A duplicate is an earlier webhook again, idempotency token included.
    sent: set[str] = set()
    for webhook in webhooks:
        key = json.dumps([webhook.params, webhook.headers], sort_keys=True)
        assert (key in sent) == (webhook.fault == "duplicate")
        sent.add(key)
    # Late: delivered after a newer event of its identity.
    highest: dict[str, int] = {}
    overtaken = 0
    for webhook in webhooks:
        event = reachability_of(webhook)
        if event is not None:
            if webhook.fault == "late" and highest.get(event.identity, 0) > event.event_id:
                overtaken += 1
            highest[event.identity] = max(highest.get(event.identity, 0), event.event_id)
    assert overtaken > 20
    # Lost disconnects: EventIds never sent.
    ids: dict[str, set[int]] = defaultdict(set)
    for webhook in webhooks:
        event = reachability_of(webhook)
        if event is not None:
            ids[event.identity].add(event.event_id)
    gaps = sum(max(seen) - min(seen) + 1 - len(seen) for seen in ids.values())
    assert 0 < gaps <= expected.faults["lost_disconnect"]
    assert expected.outcomes["duplicate"] > 0
    assert expected.outcomes["stale"] > 0
    assert sum(expected.outcomes.values()) == len(webhooks)


def test_lost_disconnects_leave_ghosts_the_truth_does_not_have() -> None:
    traffic = Traffic(TrafficConfig(identities=500, events=2000, lost_disconnects=0.5, seed=9))
    list(traffic)
    expected = traffic.expectation()

    assert expected.ghosts > 0
    assert expected.online == expected.truly_online + expected.ghosts


def test_the_signature_is_twilios() -> None:
    url = "https://presence.example.com:8443/webhooks/sync?x=1"
    for webhook in list(Traffic(TrafficConfig(identities=5, events=40, seed=1)))[:40]:
        params = webhook.params | {"ItemData": '{"text":"caf\u00e9 \u2615"}'}
        assert sign_form(AUTH_TOKEN, url, params) == sign(url, params, AUTH_TOKEN)


def test_progress_redraws_one_line_on_a_terminal_and_prints_lines_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tally = Tally(sent=5)
    terminal, log = Terminal(), io.StringIO()
    on_terminal, in_log = Progress(terminal, 10, None), Progress(log, None, 30.0)
    for _ in range(2):
        on_terminal.update(tally)
        in_log.update(tally)
    on_terminal.finish()
    in_log.finish()

    assert "\n" not in terminal.getvalue()
    assert terminal.getvalue().count("\r") == 3
    assert "5/10" in terminal.getvalue()
    assert log.getvalue().count("\n") == 2
    assert "\r" not in log.getvalue()
    assert on_terminal.interval < in_log.interval


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"rate": "0"}, "--rate"),
        ({"events": "10", "duration": "1"}, "--duration"),
        ({"duplicates": "1.5"}, "--duplicates"),
        ({"reorder": "nan"}, "--reorder"),
        ({"concurrency": "many"}, "--concurrency"),
        ({"service_sid": "IS123"}, "--service-sid"),
        ({"url": "ftp://example.com/"}, "--url"),
        ({"sign_url": "presence.example.com/webhooks/sync"}, "--sign-url"),
        ({"identities": "0"}, "--identities"),
    ],
)
def test_bad_options_are_named(given: dict[str, str], named: str) -> None:
    with pytest.raises(UsageError, match=named):
        options(given, environ={})


def test_defaults_and_the_token_from_the_environment() -> None:
    chosen = options({}, environ={"PRESENCE_TWILIO_AUTH_TOKEN": "primary,secondary"})
    timed = options({"duration": "2"}, environ={})

    assert isinstance(chosen, SimulateOptions)
    assert isinstance(timed, SimulateOptions)
    assert chosen.send.token == "primary"
    assert chosen.send.url == "http://127.0.0.1:8080/webhooks/sync"
    assert chosen.send.rate is None
    assert chosen.send.concurrency == 32
    assert (chosen.traffic.identities, chosen.traffic.max_endpoints) == (1000, 3)
    assert chosen.traffic.events == 10_000
    assert options({}, environ={}).send.token is None
    assert timed.traffic.events is None


PUBLIC_URL = "https://presence.example.com/webhooks/sync"
"""The public webhook URL of a service behind a proxy: what Twilio signs for."""


def test_webhooks_are_signed_for_presence_webhook_url_or_sign_url_else_the_url() -> None:
    local = "http://127.0.0.1:9000/webhooks/sync"
    other = "https://other.example.com/hooks"

    assert options({"url": local}, environ={}).send.sign_url == local
    behind_proxy = {"PRESENCE_WEBHOOK_URL": PUBLIC_URL}
    assert options({"url": local}, environ=behind_proxy).send.sign_url == PUBLIC_URL
    assert options({"url": local, "sign_url": other}, environ=behind_proxy).send.sign_url == other
    # Empty, as in an .env line without a value: unset.
    assert options({"url": local}, environ={"PRESENCE_WEBHOOK_URL": ""}).send.sign_url == local


# Runs against the service, on the suite's real Redis.


async def stats_of(app: RunningApp, service_sid: str) -> dict[str, int]:
    response = await app.client.get(f"/v1/services/{service_sid}/stats")
    stats: dict[str, int] = await response.json()
    return stats


async def test_a_run_without_faults_leaves_the_expected_truth(start_service: StartService) -> None:
    app = await start_service(offline_grace_seconds=0)
    traffic = Traffic(TrafficConfig(identities=150, events=1500, collection_share=0.3, seed=11))

    summary = await simulate(traffic, SendOptions(url=app.webhook_url, token=AUTH_TOKEN))

    data = summary.as_json()
    assert data["sent"] == 1500
    assert data["statuses"] == {"applied": 1500, "duplicate": 0, "stale": 0, "ignored": 0}
    assert data["http_errors"] == {}
    assert data["transport_errors"] == 0
    assert data["unexpected_statuses"] == 0
    assert summary.exit_status == 0
    expected = traffic.expectation()
    assert 0 < expected.online < 150
    assert await stats_of(app, traffic.config.service) == {
        "online": expected.online,
        "pending_offline": 0,
        "endpoints": expected.endpoints,
    }
    names = [f"user-{i:03d}" for i in range(150)]
    response = await app.client.post(
        f"/v1/services/{traffic.config.service}/lookup", json={"identities": names}
    )
    online = {item["identity"] for item in (await response.json())["identities"] if item["online"]}
    assert online == set(traffic.online_identities())


async def test_with_faults_the_replies_and_the_final_state_are_the_expected_ones(
    start_service: StartService,
) -> None:
    app = await start_service(offline_grace_seconds=0)
    traffic = Traffic(FAULTY)

    summary = await simulate(traffic, SendOptions(url=app.webhook_url, token=AUTH_TOKEN))

    data, expected = summary.as_json(), traffic.expectation()
    assert data["statuses"]["duplicate"] > 0
    assert data["statuses"]["stale"] > 0
    assert {k: n for k, n in data["statuses"].items() if n} == expected.outcomes
    assert data["unexpected_statuses"] == 0
    assert data["expected"]["faults"]["lost_disconnect"] > 0
    # Late events only come late: every identity ends as it really is, but for a lost
    # disconnect that no later event made up for.
    assert expected.online == expected.truly_online + expected.ghosts
    assert await stats_of(app, FAULTY.service) == {
        "online": expected.online,
        "pending_offline": 0,
        "endpoints": expected.endpoints,
    }


async def test_a_rate_spaces_the_webhooks_out(start_service: StartService) -> None:
    app = await start_service()
    traffic = Traffic(TrafficConfig(identities=50, events=200, seed=13))
    started = time.monotonic()

    summary = await simulate(
        traffic, SendOptions(url=app.webhook_url, token=AUTH_TOKEN, rate=200, concurrency=8)
    )

    assert summary.tally.sent == 200
    assert summary.exit_status == 0
    assert time.monotonic() - started >= 0.9
    assert summary.duration >= 0.9


# The command as a user runs it, against a `presence serve` process.


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    running = Service(
        tmp_path_factory.mktemp("simulate") / "serve.log",
        redis_url=redis_server.url,
        twilio_auth_token=AUTH_TOKEN,
        offline_grace_seconds="0",
        log_level="warning",
    )
    running.start()
    yield running
    running.kill()


def run_simulate(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "presence", "simulate", *args],
        env=service_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_command_sends_signed_traffic_and_prints_a_json_summary(service: Service) -> None:
    url = f"{service.url}/webhooks/sync"
    result = run_simulate(
        "--url", url, "--identities", "30", "--events", "300", "--seed", "21", "--json",
        "--duplicates", "0.1", "--reorder", "0.1", "--concurrency", "8",
        twilio_auth_token=AUTH_TOKEN,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "UNSIGNED" not in result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    assert set(summary) == {
        "url", "signed_for", "signed", "seed", "service_sid", "account_sid", "sent", "statuses",
        "http_errors", "transport_errors", "transport_error_kinds", "duration_seconds",
        "rate", "latency_ms", "expected", "unexpected_statuses", "exit_status",
    }  # fmt: skip
    assert (summary["url"], summary["signed"], summary["seed"]) == (url, True, 21)
    assert summary["signed_for"] == url
    assert summary["service_sid"] == derived_sid("IS", 21, "service")
    assert summary["sent"] == 300 == sum(summary["statuses"].values())
    assert set(summary["statuses"]) == {"applied", "duplicate", "stale", "ignored"}
    assert summary["statuses"]["duplicate"] > 0
    assert summary["unexpected_statuses"] == 0
    assert (summary["http_errors"], summary["transport_errors"]) == ({}, 0)
    assert summary["transport_error_kinds"] == {}
    assert summary["duration_seconds"] > 0
    assert summary["rate"] > 0
    latency = summary["latency_ms"]
    assert set(latency) == {"p50", "p90", "p99", "max"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert set(summary["expected"]) == {
        "online", "truly_online", "ghosts", "endpoints", "statuses", "faults",
    }  # fmt: skip
    assert summary["expected"]["statuses"] == {k: n for k, n in summary["statuses"].items() if n}
    assert summary["exit_status"] == 0


@pytest.mark.parametrize("token", ["not-the-token", None])
def test_a_wrong_token_or_none_gets_403s_and_exit_status_1(
    service: Service, token: str | None
) -> None:
    flags = ["--token", token] if token else []
    result = run_simulate(
        "--url", f"{service.url}/webhooks/sync", "--events", "50", "--seed", "3", *flags
    )

    # A 403 is an HTTP reply, not a transport error; but a run the service refused fails,
    # and none of its webhooks got the reply expected.
    assert result.returncode == 1, result.stderr
    assert "http errors 403: 50" in result.stdout
    assert "transport   0 errors" in result.stdout
    assert "applied 0" in result.stdout
    assert "unexpected  50 webhooks did not get the expected reply" in result.stdout
    assert ("UNSIGNED" in result.stderr) == (token is None)


@pytest.fixture(scope="module")
def service_behind_a_proxy(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A service that checks signatures against its public URL, as behind a load balancer."""
    running = Service(
        tmp_path_factory.mktemp("simulate-proxied") / "serve.log",
        redis_url=redis_server.url,
        twilio_auth_token=AUTH_TOKEN,
        webhook_url=PUBLIC_URL,
        offline_grace_seconds="0",
        log_level="warning",
    )
    running.start()
    yield running
    running.kill()


def test_behind_a_proxy_webhooks_signed_for_presence_webhook_url_are_applied(
    service_behind_a_proxy: Service,
) -> None:
    local = f"{service_behind_a_proxy.url}/webhooks/sync"
    result = run_simulate(
        "--url", local, "--events", "200", "--seed", "5", "--json",
        twilio_auth_token=AUTH_TOKEN, webhook_url=PUBLIC_URL,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["url"], summary["signed_for"]) == (local, PUBLIC_URL)
    assert summary["http_errors"] == {}
    assert summary["statuses"]["applied"] == 200
    assert summary["unexpected_statuses"] == 0


def test_behind_a_proxy_webhooks_signed_for_the_local_url_are_403s_and_unexpected(
    service_behind_a_proxy: Service,
) -> None:
    local = f"{service_behind_a_proxy.url}/webhooks/sync"
    result = run_simulate(
        "--url", local, "--sign-url", local, "--events", "40", "--seed", "6", "--json",
        twilio_auth_token=AUTH_TOKEN, webhook_url=PUBLIC_URL,
    )  # fmt: skip

    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["signed_for"] == local
    assert summary["http_errors"] == {"403": 40}
    assert summary["unexpected_statuses"] == 40
    assert summary["exit_status"] == 1


def test_nothing_listening_is_a_transport_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/sync"
    result = run_simulate("--url", url, "--events", "5", "--json")

    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["transport_errors"] == 5
    assert summary["transport_error_kinds"]
    assert summary["unexpected_statuses"] == 5


def test_a_bad_option_exits_2_with_one_line() -> None:
    result = run_simulate("--rate", "-3")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--rate" in result.stderr
