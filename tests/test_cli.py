"""The ``presence`` command as a user runs it: settings, ``serve`` and ``watch``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer, Service, service_env
from presence.keys import Keyspace
from presence.twilio.samples import SERVICE_SID, reachability
from tests.support import Watcher, wait_until


def run_cli(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "presence", *args],
        env=service_env(**settings),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "settings", "named"),
    [
        (["serve"], {"port": "99999"}, "PRESENCE_PORT"),
        (["serve"], {"offline_grace_seconds": "-1"}, "PRESENCE_OFFLINE_GRACE_SECONDS"),
        (["serve"], {"redis_url": "http://localhost"}, "PRESENCE_REDIS_URL"),
        (["serve"], {"key_prefix": "a{b}"}, "PRESENCE_KEY_PREFIX"),
        (["serve"], {"account_sid": "AC1"}, "PRESENCE_ACCOUNT_SID"),
        (["serve"], {"log_level": "loud"}, "PRESENCE_LOG_LEVEL"),
        (["serve"], {"allow_unsigned_webhooks": "perhaps"}, "PRESENCE_ALLOW_UNSIGNED_WEBHOOKS"),
        (["serve", "--endpoint-ttl-seconds", "soon"], {}, "PRESENCE_ENDPOINT_TTL_SECONDS"),
        (["serve", "--webhook-url", "/relative"], {}, "PRESENCE_WEBHOOK_URL"),
        (["serve"], {"endpoint_ttl_seconds": "inf"}, "PRESENCE_ENDPOINT_TTL_SECONDS"),
        (["serve"], {"redis_url": "redis://localhost:port/0"}, "PRESENCE_REDIS_URL"),
        (["watch"], {"redis_url": "unix://"}, "PRESENCE_REDIS_URL"),
        (["serve"], {"log_format": "xml"}, "PRESENCE_LOG_FORMAT"),
        (["serve", "--workers", "0"], {}, "PRESENCE_WORKERS"),
        (["serve"], {"shutdown_timeout_seconds": "0"}, "PRESENCE_SHUTDOWN_TIMEOUT_SECONDS"),
        # The embedded store lives in one process: workers would each have their own.
        (["serve", "--workers", "2"], {}, "PRESENCE_WORKERS"),
    ],
)
def test_an_invalid_setting_exits_2_naming_it(
    args: list[str], settings: dict[str, str], named: str
) -> None:
    result = run_cli(*args, **settings)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert named in result.stderr


def test_a_real_redis_without_a_token_is_refused(redis_server: RedisServer) -> None:
    result = run_cli("serve", redis_url=redis_server.url)

    assert result.returncode == 2
    assert "PRESENCE_TWILIO_AUTH_TOKEN" in result.stderr
    assert "PRESENCE_ALLOW_UNSIGNED_WEBHOOKS" in result.stderr


def test_watch_needs_a_redis_url() -> None:
    result = run_cli("watch")
    assert result.returncode == 2
    assert "PRESENCE_REDIS_URL" in result.stderr


async def test_serve_runs_on_the_embedded_store_by_default(tmp_path: Path) -> None:
    service = Service(tmp_path / "serve.log", offline_grace_seconds="0").start()
    try:
        params = reachability("alice", "E1", 1, True, connected=True)
        async with aiohttp.ClientSession(service.url) as session:
            async with session.post(
                "/webhooks/sync",
                data=urlencode(params),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as response:
                assert response.status == 200
                assert await response.json() == {"status": "applied"}
            path = f"/v1/services/{SERVICE_SID}/identities/alice"
            async with session.get(path) as response:
                assert (await response.json())["online"] is True
    finally:
        service.kill()
    lines = service.output().splitlines()
    assert "embedded store" in lines[0]
    assert any("SIGNATURES ARE NOT CHECKED" in line for line in lines)


async def test_flags_override_the_environment(tmp_path: Path) -> None:
    service = Service(tmp_path / "serve.log")
    flag_port = service.port
    service.env["PRESENCE_PORT"] = "1"  # could not be bound: the flag must win
    service.start("--port", str(flag_port))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{flag_port}/healthz") as response,
        ):
            assert response.status == 200
    finally:
        service.kill()


async def test_sigterm_stops_the_service(tmp_path: Path) -> None:
    service = Service(tmp_path / "serve.log").start()
    assert service.process is not None
    process = service.process
    process.terminate()
    assert process.wait(timeout=15) == 0
    assert "stopping" in service.output()


async def publish_until_seen(redis: Redis, watcher: Watcher, channel: str, probe: str) -> None:
    """Publishes ``probe`` until the watcher prints it (it may still be subscribing)."""

    async def seen() -> bool:
        if probe in watcher.lines:
            return True
        await redis.publish(channel, probe)
        return False

    await wait_until(seen, 20, "the watcher to print the probe")


async def test_watch_prints_each_change_as_a_json_line(
    redis: Redis, redis_server: RedisServer
) -> None:
    keys = Keyspace()
    change = {"service_sid": SERVICE_SID, "identity": "bob", "online": True, "version": 1}
    async with (
        Watcher(redis_url=redis_server.url) as everything,
        Watcher(
            "--service", SERVICE_SID, "--identity", "alice", redis_url=redis_server.url
        ) as alice_only,
    ):
        await publish_until_seen(redis, everything, keys.changes_channel, '{"probe": 1}')
        probe = json.dumps({"service_sid": SERVICE_SID, "identity": "alice", "probe": 2})
        await publish_until_seen(
            redis, alice_only, keys.identity_channel(SERVICE_SID, "alice"), probe
        )
        await redis.publish(keys.changes_channel, json.dumps(change))

        await wait_until(lambda: json.dumps(change) in everything.lines, 10, "bob's change")
        assert all(json.loads(line) for line in everything.lines)
        assert json.dumps(change) not in alice_only.lines


async def test_watch_resubscribes_after_redis_comes_back(private_redis: RedisServer) -> None:
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    channel = Keyspace().changes_channel
    async with Watcher(redis_url=private_redis.url) as watcher:
        await publish_until_seen(redis, watcher, channel, '{"before": true}')
        private_redis.stop()
        await asyncio.sleep(0.5)
        private_redis.start()
        await redis.aclose()
        redis = Redis.from_url(private_redis.url, decode_responses=True)
        await publish_until_seen(redis, watcher, channel, '{"after": true}')
        assert watcher.process is not None
        assert watcher.process.returncode is None
    await redis.aclose()


async def test_watch_url_follows_the_embedded_store_and_resumes_with_since(
    tmp_path: Path,
) -> None:
    """Over HTTP, ``watch`` needs no Redis: each change printed with the cursor after it, and
    ``--since`` that cursor prints only what came after."""
    service = Service(tmp_path / "serve.log", offline_grace_seconds="0", api_token="t").start()
    follow = ("--url", service.url, "--service", SERVICE_SID)
    try:
        async with Watcher(*follow, api_token="t") as first:
            # A stream starts from now: from once it is open.
            await wait_until(lambda: streams_open(service.url), 10, "watch to connect")
            status, _ = await post_unsigned(service.url, "alice", 1)
            assert status == 200
            await wait_until(lambda: len(first.changes()) == 1, 10, "alice's change")
        (alice,) = first.changes()
        status, _ = await post_unsigned(service.url, "bob", 1)
        assert status == 200
        async with Watcher(*follow, "--since", alice["cursor"], api_token="t") as resumed:
            await wait_until(lambda: len(resumed.changes()) == 1, 10, "bob's change")
            await asyncio.sleep(0.3)
    finally:
        service.kill()

    assert (alice["identity"], alice["online"], alice["version"]) == ("alice", True, 1)
    assert [c["identity"] for c in resumed.changes()] == ["bob"]
    assert resumed.changes()[0]["cursor"] != alice["cursor"]


async def streams_open(url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return "presence_feed_streams_open 1.0" in await response.text()


async def post_unsigned(url: str, identity: str, event_id: int) -> tuple[int, str]:
    params = reachability(identity, "E1", event_id, True, connected=True)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/webhooks/sync",
            data=urlencode(params),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response,
    ):
        return response.status, await response.text()


def test_watch_url_refused_or_without_a_service_exits_2(tmp_path: Path) -> None:
    service = Service(tmp_path / "serve.log", api_token="right").start()
    try:
        no_service = run_cli("watch", "--url", service.url)
        wrong_token = run_cli(
            "watch", "--url", service.url, "--service", SERVICE_SID, api_token="wrong"
        )
    finally:
        service.kill()

    assert no_service.returncode == 2
    assert "--service" in no_service.stderr
    assert wrong_token.returncode == 2
    assert "401" in wrong_token.stderr


def test_a_taken_port_exits_2_naming_it(tmp_path: Path) -> None:
    service = Service(tmp_path / "serve.log").start()
    try:
        result = run_cli("serve", port=str(service.port))
    finally:
        service.kill()

    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"presence: cannot listen on 127.0.0.1:{service.port}")
    assert "PRESENCE_PORT" in last


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_a_host_that_cannot_be_bound_exits_2_naming_it(host: str) -> None:
    result = run_cli("serve", host=host)

    assert result.returncode == 2
    assert "PRESENCE_HOST" in result.stderr
    assert "Traceback" not in result.stderr
