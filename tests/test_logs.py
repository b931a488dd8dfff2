"""Logs: a line per request and per presence change, JSON or text, and never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from harness.processes import RedisServer, Service
from presence import logs
from presence.logs import JsonFormatter, TextFormatter
from presence.model import Change
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import AUTH_TOKEN, json_lines, post_webhook, sign, wait_until

API_TOKEN = "api-token-that-must-never-be-logged"
WRONG_TOKEN = "a-wrong-token-that-must-never-be-logged-either"


def record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "presence.test", "levelno": logging.INFO, "levelname": "INFO", "msg": "hi %s"}
    )
    record.args = ("there",)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_extra_fields() -> None:
    line = json.loads(JsonFormatter().format(record(identity="a\nb", online=True)))
    assert line["message"] == "hi there"
    assert line["level"] == "info"
    assert line["logger"] == "presence.test"
    assert isinstance(line["pid"], int)
    assert line["identity"] == "a\nb"
    assert line["online"] is True


def test_text_lines_carry_the_extra_fields_quoted_on_one_line() -> None:
    text = TextFormatter().format(record(identity="a\nb", online=True))
    assert "\n" not in text
    assert text.endswith('INFO presence.test: hi there identity="a\\nb" online=true')


async def run_requests(service: Service) -> list[str]:
    """A signed connect and disconnect, a forged webhook, and queries with a right and a
    wrong API token; returns the signatures sent."""
    connect = reachability("alice", "E1", 1, True, connected=True)
    disconnect = reachability("alice", "E1", 2, False, connected=False)
    assert await post_webhook(service.url, connect) == (200, {"status": "applied"})
    status, _ = await post_webhook(service.url, connect, token=WRONG_TOKEN)
    assert status == 403
    assert await post_webhook(service.url, disconnect) == (200, {"status": "applied"})
    identity = f"{service.url}/v1/services/{SERVICE_SID}/identities/alice"
    async with aiohttp.ClientSession() as session:
        for token, expected in ((API_TOKEN, 200), (WRONG_TOKEN, 401)):
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(identity, headers=headers) as response:
                assert response.status == expected
        # A line break in a path must not start a forged log line.
        forged = identity.replace("alice", "x%0A%7B%22level%22:%22error%22%7D")
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with session.get(forged, headers=headers) as response:
            assert response.status == 200
    url = f"{service.url}/webhooks/sync"
    return [sign(url, connect), sign(url, connect, WRONG_TOKEN), sign(url, disconnect)]


async def test_json_logs_have_a_line_per_request_and_per_change_and_no_secret(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = Service(
        tmp_path / "service.log",
        redis_url=redis_server.url,
        twilio_auth_token=AUTH_TOKEN,
        api_token=API_TOKEN,
        log_format="json",
        offline_grace_seconds="0",
        key_prefix="logs",
    ).start()
    try:
        signatures = await run_requests(service)

        def access_lines() -> list[dict[str, object]]:
            lines = json_lines(service.output())
            return [line for line in lines if line["logger"] == "presence.access"]

        await wait_until(lambda: len(access_lines()) == 6, what="six access-log lines")
    finally:
        service.kill(signal.SIGTERM)

    output = service.output()
    lines = json_lines(output)  # every line is JSON, the last ones of the shutdown included
    webhooks = [line for line in access_lines() if line["path"] == "/webhooks/sync"]
    assert [(line["method"], line["status"], line["outcome"]) for line in webhooks] == [
        ("POST", 200, "applied"),
        ("POST", 403, "invalid_signature"),
        ("POST", 200, "applied"),
    ]
    assert all(isinstance(line["duration_ms"], float) for line in webhooks)
    queries = [line for line in access_lines() if line["path"] != "/webhooks/sync"]
    assert [line["status"] for line in queries] == [200, 401, 200]
    assert str(queries[2]["path"]).endswith("/identities/x%0A%7B%22level%22:%22error%22%7D")
    changes = [line for line in lines if line["logger"] == "presence.changes"]
    assert [(c["identity"], c["online"], c["reason"], c["version"]) for c in changes] == [
        ("alice", True, "connected", 1),
        ("alice", False, "disconnected", 2),
    ]
    for secret in (AUTH_TOKEN, API_TOKEN, WRONG_TOKEN, *signatures):
        assert secret not in output


async def test_text_logs_are_plain_lines(tmp_path: Path, redis_server: RedisServer) -> None:
    service = Service(
        tmp_path / "service.log",
        redis_url=redis_server.url,
        twilio_auth_token=AUTH_TOKEN,
        api_token=API_TOKEN,
        offline_grace_seconds="0",
        key_prefix="textlogs",
    ).start()
    try:
        signatures = await run_requests(service)
        await wait_until(
            lambda: "/identities/x%0A" in service.output(), what="the last access-log line"
        )
    finally:
        service.kill(signal.SIGTERM)

    output = service.output()
    assert not output.lstrip().startswith("{")
    assert "presence.access: POST /webhooks/sync 200" in output
    assert 'outcome="invalid_signature"' in output
    assert "presence change: " in output
    assert 'reason="disconnected"' in output
    # The forged line break stayed encoded: no line starts with what the path carried.
    assert not any(line.startswith('{"level"') for line in output.splitlines())
    for secret in (AUTH_TOKEN, API_TOKEN, WRONG_TOKEN, *signatures):
        assert secret not in output


def test_the_time_of_a_line_written_directly_is_the_text_formatters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lines written directly carry their time as the TextFormatter writes it: kept for
    the lines of one millisecond, made again for the next millisecond and for the same
    millisecond of the next second."""
    clock = logs._Clock()
    formatter = TextFormatter()
    start = 1_795_000_000.0
    for now in (
        start + 0.1234,
        start + 0.1236,  # the same millisecond
        start + 0.1241,
        start + 1.1241,  # the same millisecond of the next second
        start + 1.9999,
        start + 61.0,
    ):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        monkeypatch.setattr(time, "time_ns", lambda now=now: int(now * 1e9))
        record = logging.LogRecord("presence.test", logging.INFO, __file__, 1, "x", None, None)
        assert clock.asctime(now) == formatter.formatTime(record), now


@pytest.mark.parametrize(
    ("path", "outcome"),
    [
        ("/webhooks/sync", "applied"),
        ("/v1/services/IS1/identities/alice", None),
        ('/v1/a"b', None),
        ("/v1/a\\b", "invalid_signature"),
        ("/v1/%C3%A9", None),
    ],
)
def test_access_lines_are_the_text_formatters_lines(
    monkeypatch: pytest.MonkeyPatch, path: str, outcome: str | None
) -> None:
    """The access log writes its line itself (the hot path): the same line, after the time,
    as the logging machinery's TextFormatter writes for the same fields."""
    out = io.StringIO()
    monkeypatch.setattr(logs, "_output", logs._Lines(out))
    monkeypatch.setattr(logs, "_json", False)
    logging.getLogger(logs.ACCESS_LOGGER).setLevel(logging.INFO)
    request = make_mocked_request("POST", path)
    if outcome is not None:
        request[logs.WEBHOOK_OUTCOME] = outcome
    response = web.Response(status=200, body=b"{}")
    logger = logs.AccessLogger(logging.getLogger(logs.ACCESS_LOGGER), "")
    raw = request.rel_url.raw_path  # as the request line carried it: percent-encoded

    # Twice: a webhook's second line is made from the parts its first one kept.
    for seconds, duration_ms, shown in ((0.01234, 12.34, "12.3"), (0.0005678, 0.568, "0.6")):
        logger.log(request, response, seconds)
        fields: dict[str, object] = {
            "method": "POST",
            "path": raw,
            "status": 200,
            "duration_ms": duration_ms,
            "remote": request.remote,
            "bytes": response.body_length,
        }
        if outcome is not None:
            fields["outcome"] = outcome
        wanted = logging.makeLogRecord(
            {
                "name": logs.ACCESS_LOGGER,
                "levelno": logging.INFO,
                "levelname": "INFO",
                "msg": f"POST {raw} 200 {shown}ms",
                **fields,
            }
        )
        written = out.getvalue().rstrip("\n").split("\n")[-1]
        wanted_line = TextFormatter().format(wanted).partition(" INFO ")[2]
        assert written.partition(" INFO ")[2] == wanted_line


@pytest.mark.parametrize(
    "identity", ["alice", "user-000123", "o'brien", 'say "hi"', "back\\slash", "élodie"]
)
@pytest.mark.parametrize("event_id", [42, None])
def test_change_lines_are_the_text_formatters_lines(
    monkeypatch: pytest.MonkeyPatch, identity: str, event_id: int | None
) -> None:
    """Change lines are written directly too (about one per webhook): the same line, after
    the time, as the TextFormatter writes for the same fields, whatever the identity."""
    out = io.StringIO()
    monkeypatch.setattr(logs, "_output", logs._Lines(out))
    monkeypatch.setattr(logs, "_json", False)
    logging.getLogger(logs.CHANGES_LOGGER).setLevel(logging.INFO)
    change = Change(
        service_sid="IS" + "0" * 32,
        identity=identity,
        online=event_id is not None,
        reason="connected" if event_id is not None else "expired",
        event_id=event_id,
        version=7,
        changed_at="2026-11-23T10:00:00.123Z",
    )

    logs.log_changes([change])

    wanted = logging.makeLogRecord(
        {
            "name": logs.CHANGES_LOGGER,
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": f"presence change: {change}",
            "service_sid": change.service_sid,
            "identity": identity,
            "online": change.online,
            "reason": change.reason,
            "event_id": event_id,
            "version": 7,
        }
    )
    written = out.getvalue().rstrip("\n")
    assert written.partition(" INFO ")[2] == TextFormatter().format(wanted).partition(" INFO ")[2]


async def test_lines_of_one_iteration_are_written_together_each_at_its_own_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lines are made once the event-loop iteration ends (all of them, together, in the
    order logged), but each carries the time it was logged at, not the time it was made."""
    out = io.StringIO()
    monkeypatch.setattr(logs, "_output", logs._Lines(out))
    monkeypatch.setattr(logs, "_json", False)
    logging.getLogger(logs.CHANGES_LOGGER).setLevel(logging.INFO)
    logging.getLogger(logs.ACCESS_LOGGER).setLevel(logging.INFO)
    base = 1_796_000_000.0  # a fixed second, not today: only the milliseconds are compared
    clock = iter([base + 0.0015, base + 0.2505, base + 0.9995])
    monkeypatch.setattr(logs, "_now", lambda: next(clock))
    change = Change(
        service_sid="IS" + "0" * 32,
        identity="alice",
        online=True,
        reason="connected",
        event_id=3,
        version=3,
        changed_at="2026-11-23T10:00:00.123Z",
    )
    request = make_mocked_request("POST", "/webhooks/sync")
    request[logs.WEBHOOK_OUTCOME] = "applied"
    logger = logs.AccessLogger(logging.getLogger(logs.ACCESS_LOGGER), "")
    query = make_mocked_request("GET", "/v1/services")

    logs.log_changes([change])
    logger.log(request, web.Response(body=b"{}"), 0.002)
    logger.log(query, web.Response(body=b"[]"), 0.003)
    assert out.getvalue() == ""  # nothing made or written within the iteration

    await asyncio.sleep(0)
    lines = out.getvalue().splitlines()
    assert [line.split(" INFO ")[1].split(":")[0] for line in lines] == [
        logs.CHANGES_LOGGER,
        logs.ACCESS_LOGGER,
        logs.ACCESS_LOGGER,
    ]
    assert [line.split(" INFO ")[0][-4:] for line in lines] == [",001", ",250", ",999"]
    assert "presence change: " in lines[0]
    assert 'identity="alice"' in lines[0]
    assert 'outcome="applied"' in lines[1]
    assert 'path="/v1/services"' in lines[2]
