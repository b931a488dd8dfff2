"""The dashboard, ``GET /dashboard``, in a real browser: Debian's Chromium, headless, driven
through Debian's ChromeDriver by selenium, against real ``presence serve`` processes on a real
redis-server (append-only, so its data outlives a service restart).

Each test opens the page in a fresh tab (an empty sessionStorage: the token is asked for
again) on a ServiceSid of its own, and ends by checking Chrome's network log: every request
the page made went to the service's own origin. Screenshots of each state go to
``test-artifacts/dashboard/``; with ``PRESENCE_SCREENSHOT_DOCS=1`` the busy-service test also
writes ``docs/dashboard.png``, the picture of docs/dashboard.md (never in CI: it rewrites a
tracked file).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
from redis.asyncio import Redis
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service as ChromeDriverService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from harness.processes import RedisServer, Service, free_port
from presence.events import ReachabilityEvent, parse_event
from presence.keys import Keyspace
from presence.store.redis import RedisStore
from presence.twilio.samples import reachability
from presence.web.dashboard import CONTENT_SECURITY_POLICY
from tests.support import AUTH_TOKEN, sign

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the networking flags, Chromium's own background connections (updates, sync, field
# trials) are refused by a closed network, many at a time; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
API_TOKEN = "dashboard-" + secrets.token_hex(8)
ADMIN_TOKEN = "dashboard-admin-" + secrets.token_hex(8)
GRACE_SECONDS = 3
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
# Read at import: the suite's fixtures clear PRESENCE_* from the environment of each test.
SCREENSHOT_DOCS = os.environ.get("PRESENCE_SCREENSHOT_DOCS") == "1"
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"

T = TypeVar("T")


def until(condition: Callable[[], T], within: float, what: str) -> T:
    """Polls ``condition`` until it returns something true, and returns that; fails the test
    after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def new_sid() -> str:
    return "IS" + secrets.token_hex(16)


# ---------------------------------------------------------------------------------------------
# What runs: a redis-server, the service, the browser


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("dashboard-redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


def start_service(log: Path, redis: RedisServer, **settings: str) -> Service:
    return Service(
        log,
        redis_url=redis.url,
        twilio_auth_token=AUTH_TOKEN,
        offline_grace_seconds=str(GRACE_SECONDS),
        **settings,
    ).start()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, store_server: RedisServer
) -> Iterator[Service]:
    """``presence serve`` with an API token; each test uses a ServiceSid of its own."""
    log = tmp_path_factory.mktemp("dashboard-service") / "service.log"
    running = start_service(
        log,
        store_server,
        api_token=API_TOKEN,
        admin_token=ADMIN_TOKEN,
        push_allow_private="true",
        push_timeout_seconds="2",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(
                f"{binary} is not installed: scripts/test installs Debian's chromium and "
                "chromium-driver"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # Chrome's DevTools network events, read back as the "performance" log.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # The driver is named: selenium-manager never looks for, or downloads, one of its own.
    driver_service = ChromeDriverService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=driver_service, options=options)
    started = [driver_service.process.pid, *children(driver_service.process.pid)]
    try:
        yield driver
    finally:
        driver.quit()  # ends Chromium, then ChromeDriver
        for pid in started:  # by pid, should quit have left one running
            if "chrom" in command_of(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (ChromeDriver's: the browser)."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in text.split()]
    return []


def command_of(pid: int) -> str:
    """The command line of a running process; "" once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# The page, as a test sees it

ROWS = "[...document.querySelectorAll('#list-rows .row:not([hidden])')]"
ROW_OF = f"""
const row = {ROWS}.find((r) => r.querySelector('.name').textContent === arguments[0]);
return row ? {{state: row.dataset.state,
               endpoints: row.querySelector('.endpoints').textContent}} : null;
"""
TIMELINE = """
return [...document.querySelectorAll('#timeline li.change')].map((li) => [
  li.querySelector('.who').textContent,
  li.querySelector('.what').textContent,
  li.querySelector('.reason').textContent,
]);
"""
NOTES = "return [...document.querySelectorAll('#timeline li.note .what')].map((n) => n.textContent)"
NEXT_FRAMES = """
return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
"""
TOTALS = """
return Object.fromEntries([...document.querySelectorAll('#activity-totals li')].map(
  (li) => [li.dataset.outcome, li.querySelector('strong').textContent]));
"""


def number(text: str) -> int:
    return int("".join(c for c in text if c.isdigit()))


class Dashboard:
    """The page in the browser, for one service process and one ServiceSid."""

    def __init__(self, driver: Chrome, service: Service, name: str) -> None:
        self.driver = driver
        self.service = service
        self.name = name
        self.sid = new_sid()
        self.event_ids: dict[str, int] = {}

    @property
    def origin(self) -> str:
        return self.service.url

    def open(self, *, token: str | None = API_TOKEN) -> None:
        """Loads the page for this test's service; enters the token when it is asked for."""
        self.driver.get(f"{self.origin}/dashboard#{self.sid}")
        if token is not None:
            until(self.token_asked, 10, "the page to ask for the token")
            field = self.driver.find_element(By.ID, "token")
            field.send_keys(token, Keys.ENTER)
        until(lambda: self.status()[0] == "live", 10, "the page to follow the feed")

    def token_asked(self) -> bool:
        return self.driver.find_element(By.ID, "token-form").is_displayed()

    def status(self) -> tuple[str, str]:
        element = self.driver.find_element(By.ID, "status")
        return str(element.get_attribute("data-state")), element.text

    def row(self, identity: str) -> dict[str, str] | None:
        found: dict[str, str] | None = self.driver.execute_script(ROW_OF, identity)
        return found

    def state_of(self, identity: str) -> str | None:
        row = self.row(identity)
        return row["state"] if row else None

    def wait_for_state(self, identity: str, state: str, within: float = 5) -> None:
        until(
            lambda: self.state_of(identity) == state,
            within,
            f"{identity!r} to show {state} (shows {self.state_of(identity)})",
        )

    def timeline(self) -> list[tuple[str, str, str]]:
        items: list[list[str]] = self.driver.execute_script(TIMELINE)
        return [(who, what, reason) for who, what, reason in items]

    def notes(self) -> list[str]:
        notes: list[str] = self.driver.execute_script(NOTES)
        return notes

    def counts(self) -> dict[str, str]:
        return {
            name: self.driver.find_element(By.ID, f"count-{name}").text
            for name in ("online", "pending", "endpoints")
        }

    def totals(self) -> dict[str, int]:
        found: dict[str, str] = self.driver.execute_script(TOTALS)
        return {name: number(text) for name, text in found.items()}

    def search(self, text: str) -> None:
        field = self.driver.find_element(By.ID, "search")
        field.clear()
        field.send_keys(text)

    def screenshot(self, state: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{state}.png"
        self.driver.save_screenshot(str(path))
        return path

    def send(
        self,
        identity: str,
        online: bool,
        *,
        endpoint: str = "E1",
        connected: bool | None = None,
        event_id: int | None = None,
        via: Service | None = None,
        expect: str = "applied",
    ) -> None:
        """A signed reachability webhook for this test's service: a connect when ``online``
        (unless ``connected`` says otherwise), with the identity's next EventId."""
        if event_id is None:
            event_id = self.event_ids.get(identity, 0) + 1
        self.event_ids[identity] = max(event_id, self.event_ids.get(identity, 0))
        params = reachability(
            identity,
            endpoint,
            event_id,
            online,
            connected=online if connected is None else connected,
            service_sid=self.sid,
        )
        status, body = post_webhook(via or self.service, params)
        assert (status, body.get("status")) == (200, expect), body


def post_webhook(service: Service, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POSTs a webhook signed as Twilio signs it for this service's URL."""
    url = f"{service.url}/webhooks/sync"
    request = urllib.request.Request(
        url,
        data=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sign(url, params),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def log_of(driver: Chrome, kind: str) -> list[dict[str, Any]]:
    """Chrome's ``performance`` (DevTools events) or ``browser`` (console) log since the
    last call."""
    # selenium leaves get_log without annotations.
    entries: list[dict[str, Any]] = driver.get_log(kind)  # type: ignore[no-untyped-call]
    return entries


def network_log(driver: Chrome) -> list[dict[str, Any]]:
    """Chrome's DevTools network events since the last call."""
    events = [json.loads(entry["message"])["message"] for entry in log_of(driver, "performance")]
    return [event for event in events if event["method"].startswith("Network.")]


def script_errors(driver: Chrome) -> list[str]:
    """Errors the page's script threw, uncaught, since the last call (a refused request is
    logged too, as a network entry: expected while a test stops the service)."""
    return [
        entry["message"]
        for entry in log_of(driver, "browser")
        if entry["level"] == "SEVERE" and entry.get("source") == "javascript"
    ]


def requested_urls(events: list[dict[str, Any]]) -> list[str]:
    """Every URL the page asked for: documents, files, fetches, and any socket."""
    urls = []
    for event in events:
        params = event["params"]
        if event["method"] == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
        elif event["method"] in ("Network.webSocketCreated", "Network.webTransportCreated"):
            urls.append(params["url"])
    return urls


def assert_same_origin(urls: list[str], origin: str) -> None:
    outside = [url for url in urls if not url.startswith(origin + "/")]
    assert not outside, f"requests left {origin}: {outside}"


@pytest.fixture
def page(browser: Chrome, service: Service, request: pytest.FixtureRequest) -> Iterator[Dashboard]:
    """The dashboard in a fresh tab (an empty sessionStorage); afterwards, every request it
    made must have gone to the service's own origin, and its script must have thrown no
    error."""
    old = browser.current_window_handle
    browser.switch_to.new_window("tab")
    fresh = browser.current_window_handle
    browser.switch_to.window(old)
    browser.close()
    browser.switch_to.window(fresh)
    network_log(browser)  # what earlier tests left
    script_errors(browser)
    dashboard = Dashboard(browser, service, request.node.name.removeprefix("test_"))
    yield dashboard
    urls = requested_urls(network_log(browser))
    assert_same_origin(urls, dashboard.origin)
    assert script_errors(browser) == []


# ---------------------------------------------------------------------------------------------
# The tests


def test_the_token_is_asked_once_and_alice_shows_online_then_pending_then_offline(
    page: Dashboard, service: Service
) -> None:
    page.driver.get(f"{page.origin}/dashboard#{page.sid}")
    until(page.token_asked, 10, "the page to ask for the token")
    assert page.status()[0] == "token"
    # Keyboard first: the field has the focus, Enter submits.
    assert page.driver.switch_to.active_element.get_attribute("id") == "token"
    page.driver.switch_to.active_element.send_keys(API_TOKEN, Keys.ENTER)
    until(lambda: page.status()[0] == "live", 10, "the page to follow the feed")
    assert not page.token_asked()
    page.screenshot("empty")

    page.send("alice", True)
    page.wait_for_state("alice", "online")
    until(lambda: page.row("alice") == {"state": "online", "endpoints": "E1"}, 5, "E1")
    until(lambda: page.counts()["online"] == "1", 5, "the online count")
    assert page.timeline() == [("alice", "online", "connected")]
    page.screenshot("alice-online")

    page.send("alice", False)  # her only endpoint went away: offline after the grace
    page.wait_for_state("alice", "pending", within=GRACE_SECONDS)
    until(lambda: page.counts()["pending"] == "1", GRACE_SECONDS, "the pending count")
    assert page.timeline() == [("alice", "online", "connected")]  # nothing published yet
    page.screenshot("alice-pending")

    page.wait_for_state("alice", "offline", within=GRACE_SECONDS + 5)
    assert page.timeline() == [
        ("alice", "offline", "disconnected"),
        ("alice", "online", "connected"),
    ]
    until(lambda: page.counts()["online"] == "0", 5, "the online count")
    page.screenshot("alice-offline")

    # Kept for the browser session: a reload does not ask again.
    page.driver.refresh()
    until(lambda: page.status()[0] == "live", 10, "the reloaded page to follow the feed")
    assert not page.token_asked()
    assert page.driver.execute_script("return sessionStorage.length") == 1
    # Sent as a header only: in no URL the page asked for, and so in no access-log line.
    urls = requested_urls(network_log(page.driver))
    assert_same_origin(urls, page.origin)
    assert any("/v1/" in url for url in urls)
    assert not [url for url in urls if API_TOKEN in url]
    assert API_TOKEN not in page.driver.current_url
    assert API_TOKEN not in service.output()


def test_a_rebalancing_flap_shows_no_offline_at_all(page: Dashboard) -> None:
    page.open()
    page.send("alice", True, endpoint="E1")
    page.wait_for_state("alice", "online")
    # Every state alice's row is ever drawn with, caught as the page draws it.
    page.driver.execute_script(
        f"""
        window.aliceStates = [];
        const record = () => {{
          for (const row of {ROWS}) {{
            if (row.querySelector('.name').textContent === 'alice') {{
              window.aliceStates.push(row.dataset.state);
            }}
          }}
        }};
        new MutationObserver(record).observe(document.getElementById('list-rows'),
          {{subtree: true, childList: true, attributes: true, characterData: true}});
        """
    )

    # Twilio's hourly rebalancing: the endpoint drops, and a new one connects at once.
    page.send("alice", False, endpoint="E1", connected=False)
    flapped_at = time.monotonic()
    page.send("alice", True, endpoint="E2")
    until(lambda: page.row("alice") == {"state": "online", "endpoints": "E2"}, 5, "E2")
    # Past the grace an offline would have been published; a change made after that comes
    # after it on the feed, so once the page shows bob it would have shown alice offline.
    until(lambda: time.monotonic() > flapped_at + GRACE_SECONDS + 1, GRACE_SECONDS + 2, "grace")
    page.send("bob", True)
    page.wait_for_state("bob", "online")

    states = page.driver.execute_script("return window.aliceStates")
    assert states, "the recorder saw alice's row"
    assert "offline" not in states
    assert page.state_of("alice") == "online"
    assert page.timeline() == [("bob", "online", "connected"), ("alice", "online", "connected")]
    page.screenshot("after-flap")


HOSTILE = "<img src=x onerror=alert(1)>"


def test_a_hostile_identity_is_shown_as_text(page: Dashboard) -> None:
    page.open()
    page.send(HOSTILE, True)
    page.wait_for_state(HOSTILE, "online")
    page.search("<img")
    until(
        lambda: page.driver.find_element(By.ID, "list-summary").text == "1 of 1 match",
        5,
        "the search to find it",
    )
    assert page.state_of(HOSTILE) == "online"

    assert page.timeline() == [(HOSTILE, "online", "connected")]
    assert page.driver.execute_script("return document.querySelectorAll('img').length") == 0
    with pytest.raises(NoAlertPresentException):
        _ = page.driver.switch_to.alert.text
    page.screenshot("text")


def test_a_restarted_service_is_reconnected_to_and_caught_up(
    page: Dashboard, service: Service, store_server: RedisServer, tmp_path: Path
) -> None:
    # A service of its own, without an API token: the page works without asking for one.
    own = start_service(tmp_path / "service.log", store_server)
    try:
        page.service = own
        page.open(token=None)
        assert not page.token_asked()
        page.send("alice", True)
        page.wait_for_state("alice", "online")

        own.stop()  # SIGTERM: the service ends its streams and exits
        until(lambda: page.status()[0] == "lost", 10, "the page to say it lost the service")
        assert "Connection lost" in page.status()[1]
        page.screenshot("lost")
        # Meanwhile, bob connects through another replica on the same Redis.
        page.send("bob", True, via=service)

        own.start()
        until(lambda: page.status()[0] == "live", 15, "the page to reconnect")
        page.wait_for_state("bob", "online")
        # Replayed from the page's cursor (a reload of the listing would list bob, but could
        # not show how he came online).
        until(lambda: ("bob", "online", "connected") in page.timeline(), 5, "bob's change")
        assert page.timeline() == [("bob", "online", "connected"), ("alice", "online", "connected")]
        assert "Connection to the service lost." in page.notes()
        assert page.state_of("alice") == "online"
        until(lambda: page.counts()["online"] == "2", 5, "the counts to be read again")
        assert not page.token_asked()
        page.screenshot("caught-up")
    finally:
        own.stop()


def test_a_reset_of_the_feed_makes_the_page_read_who_is_online_again(
    page: Dashboard, tmp_path: Path
) -> None:
    # A Redis of its own that keeps nothing: restarted, its data (and the feed's epoch) is gone.
    redis = RedisServer(tmp_path / "redis", appendonly=False).start()
    own = start_service(tmp_path / "service.log", redis)
    try:
        page.service = own
        page.open(token=None)
        page.send("alice", True)
        page.wait_for_state("alice", "online")

        redis.stop()
        redis.start()  # empty: the page's cursor counts in data that is gone
        until(
            lambda: any("the feed was reset" in note for note in page.notes()),
            15,
            "the page to be told of the reset",
        )
        # The listing read again: alice's state went with Redis' data.
        until(lambda: page.state_of("alice") is None, 5, "alice to leave the list")
        until(lambda: page.status()[0] == "live", 10, "the page to follow the feed again")
        page.send("bob", True, event_id=1)
        page.wait_for_state("bob", "online")
        assert page.timeline() == [("bob", "online", "connected"), ("alice", "online", "connected")]
        page.screenshot("reloaded")
    finally:
        own.stop()
        redis.stop()


# ---------------------------------------------------------------------------------------------
# The JavaScript client, made in the page


MAKE_VIEW = """
const [sid, token, done] = arguments;
import('./dashboard/presence.js').then(async ({ PresenceView }) => {
  window.viewEvents = [];
  window.testView = new PresenceView({
    serviceSid: sid,
    token,
    onChange: (c) => viewEvents.push(['change', c.identity, c.version, c.online, c.resync]),
    onReset: (reason) => viewEvents.push(['reset', reason]),
  });
  await testView.start();
  done([...testView.online()]);
}).catch((error) => done(String(error)));
"""


def listed_online(service: Service, sid: str) -> set[str]:
    """Who ``/online`` lists (one page: the tests list a few)."""
    request = urllib.request.Request(
        f"{service.url}/v1/services/{sid}/online?limit=1000",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return set(json.loads(response.read())["identities"])


def test_a_view_made_in_the_page_ends_equal_to_online_through_kills_and_redis_restarts(
    page: Dashboard, tmp_path: Path
) -> None:
    """The client as a page of the service's own origin uses it: through a replica killed and
    restarted, Redis restarted with its data, and Redis started empty (a reset), the view
    holds exactly who ``/online`` lists, and its hook never gets a change twice."""
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    own = start_service(tmp_path / "own.log", redis, api_token=API_TOKEN)
    other = start_service(tmp_path / "other.log", redis, api_token=API_TOKEN)
    try:
        page.service = own
        page.send("alice", True)
        page.driver.get(f"{own.url}/dashboard")
        held = page.driver.execute_async_script(MAKE_VIEW, page.sid, API_TOKEN)
        assert held == ["alice"], held

        def equal() -> bool:
            shown = page.driver.execute_script("return [...window.testView.online()]")
            return set(shown) == listed_online(other, page.sid)

        page.send("bob", True)
        until(equal, 10, "the view to hold bob")
        own.kill()  # SIGKILL: the page's stream dies with it
        page.send("carol", True, via=other)
        own.start()
        until(equal, 15, "the view to catch up through the restarted replica")
        redis.shutdown()
        redis.start()  # with all its data: no reset
        page.send("dave", True, via=other)
        until(equal, 15, "the view to follow on after Redis came back")
        events: list[list[Any]] = page.driver.execute_script("return window.viewEvents")
        assert ["reset", "lost"] not in events
        redis.stop()
        redis.restore_data(None)
        redis.start()  # empty: a reset
        page.send("erin", True, via=other, event_id=1)
        until(equal, 20, "the view to read who is online again")
        assert listed_online(other, page.sid) == {"erin"}
        events = page.driver.execute_script("return window.viewEvents")
        assert [event for event in events if event[0] == "reset"] == [["reset", "lost"]]
        reset_at = [event[0] for event in events].index("reset")
        before = [tuple(e[1:3]) for e in events[:reset_at] if e[0] == "change" and not e[4]]
        # Each change once, the ones made while the page's replica was down included.
        assert sorted(before) == [("bob", 1), ("carol", 1), ("dave", 1)], before
    finally:
        page.driver.execute_script("window.testView?.close()")
        own.stop()
        other.stop()
        redis.stop()


async def fill(redis_url: str, sid: str, count: int) -> list[str]:
    """``count`` identities online in ``sid``, straight into the store; their names."""
    client = Redis.from_url(redis_url, decode_responses=True)
    store = RedisStore(
        client, Keyspace(), offline_grace_ms=GRACE_SECONDS * 1000, endpoint_ttl_ms=7_200_000
    )
    names = [f"user-{n:05d}" for n in range(count)]
    try:
        for start in range(0, count, 2000):
            events = []
            for name in names[start : start + 2000]:
                parsed = parse_event(
                    list(reachability(name, "E1", 1, True, connected=True, service_sid=sid).items())
                )
                assert isinstance(parsed, ReachabilityEvent)
                events.append(parsed)
            await store.apply_many(events)
    finally:
        await client.aclose()
    return names


def test_twenty_thousand_online_identities_stay_usable(
    page: Dashboard, store_server: RedisServer
) -> None:
    count = 20_000
    names = asyncio.run(fill(store_server.url, page.sid, count))

    started = time.monotonic()
    page.open()
    until(
        lambda: page.driver.find_element(By.ID, "list-summary").text == f"{count:,} listed",
        20,
        "the whole listing",
    )
    loaded = time.monotonic() - started
    until(lambda: page.counts()["online"] == f"{count:,}", 5, "the online count")
    # Only the rows in view exist, and those on screen are looked up (their endpoints).
    rows = page.driver.execute_script("return document.querySelectorAll('.row').length")
    assert rows < 100, rows
    until(lambda: page.row(names[0]) == {"state": "online", "endpoints": "E1"}, 5, "a lookup")
    page.screenshot("loaded")

    started = time.monotonic()
    page.search("user-12345")
    until(lambda: page.driver.execute_script(f"return {ROWS}.length") == 1, 5, "one match")
    searched = time.monotonic() - started
    assert page.row("user-12345") is not None
    assert page.driver.find_element(By.ID, "list-summary").text == f"1 of {count:,} match"
    page.screenshot("search")

    # The keyboard reaches the end of the list.
    page.search("")
    until(lambda: page.row(names[0]) is not None, 5, "the whole list again")
    page.driver.find_element(By.ID, "list").send_keys(Keys.END)
    until(lambda: page.row(names[-1]) is not None, 5, "the last identity after End")
    page.send("zed", True)  # a change still arrives, and is placed in order
    until(lambda: page.row("zed") is not None, 5, "zed, last in order")
    assert page.state_of("zed") == "online"
    print(f"20,000 identities: listed in {loaded:.1f}s, a search answered in {searched:.2f}s")


def test_a_busy_service_at_a_glance(page: Dashboard) -> None:
    page.open()
    people = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"]
    for person in people:
        page.send(person, True, endpoint=f"EP-{person}-1")
    page.send("bob", True, endpoint="EP-bob-2")
    page.send("carol", True, endpoint="EP-carol-1", event_id=1, expect="duplicate")
    page.send("dave", True, endpoint="EP-dave-1", event_id=0, expect="stale")
    # A flap (gone and back within the grace), one going offline for good, one pending.
    page.send("erin", False, endpoint="EP-erin-1", connected=False)
    page.send("erin", True, endpoint="EP-erin-2")
    page.send("frank", False, endpoint="EP-frank-1", connected=False)
    rejected = reachability("mallory", "E1", 1, True, connected=True, service_sid=page.sid)
    assert post_webhook(page.service, rejected | {"EventId": "-1"})[0] == 400
    page.wait_for_state("frank", "offline", within=GRACE_SECONDS + 5)

    wanted = {"applied": 13, "duplicate": 1, "stale": 1, "rejected": 1, "flaps_suppressed": 1}
    until(
        lambda: {name: page.totals().get(name) for name in wanted} == wanted,
        15,
        "the chart's totals",
    )
    assert page.driver.execute_script("return document.querySelectorAll('#chart rect.applied')")
    until(lambda: page.counts()["endpoints"] == "9", 5, "the endpoint count")
    assert page.counts() == {"online": "8", "pending": "0", "endpoints": "9"}
    assert ("frank", "offline", "disconnected") in page.timeline()
    assert ("erin", "offline", "disconnected") not in page.timeline()  # the flap

    page.send("grace", False, endpoint="EP-grace-1", connected=False)
    page.wait_for_state("grace", "pending", within=GRACE_SECONDS)
    until(lambda: page.counts()["pending"] == "1", GRACE_SECONDS, "the pending count")
    assert page.state_of("erin") == "online"
    page.screenshot("busy")
    if SCREENSHOT_DOCS:
        page.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": False},
        )
        try:
            page.driver.execute_script("document.activeElement.blur()")
            page.driver.execute_script(NEXT_FRAMES)  # laid out again at that size
            page.driver.save_screenshot(str(DOCS_SCREENSHOT))
        finally:
            page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_at_phone_width_nothing_overflows_and_the_keyboard_reaches_everything(
    page: Dashboard,
) -> None:
    page.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        page.open()
        long_name = "an-identity-with-a-very-long-name-and-no-space-to-break-it-" * 3
        page.send(long_name, True, endpoint="EP-" + "x" * 60)
        page.send("alice", True)
        page.wait_for_state(long_name, "online")
        page.wait_for_state("alice", "online")

        overflowing = page.driver.execute_script(
            """
            const width = document.documentElement.clientWidth;
            const wide = [...document.querySelectorAll('body *')].filter((e) => {
              const box = e.getBoundingClientRect();
              return box.width > 0 && !e.closest('.visually-hidden') && box.right > width + 0.5;
            }).map((e) => e.id || e.className || e.tagName);
            return {width, scrollWidth: document.documentElement.scrollWidth, wide};
            """
        )
        assert overflowing["wide"] == [], overflowing
        assert overflowing["scrollWidth"] <= overflowing["width"] == 390, overflowing
        page.screenshot("phone")

        # Tab goes through the controls in order, and each shows where the focus is.
        focused = []
        for _ in range(8):
            ActionChains(page.driver).send_keys(Keys.TAB).perform()
            active = page.driver.switch_to.active_element
            outline = page.driver.execute_script(
                "return getComputedStyle(arguments[0]).outlineStyle", active
            )
            focused.append((active.get_attribute("id") or active.tag_name, outline))
        start = [name for name, _ in focused].index("service-sid")
        focused = focused[start : start + 5]
        assert [name for name, _ in focused] == [
            "service-sid",
            "button",  # Show
            "forget-token",
            "search",
            "list",
        ], focused
        assert all(outline != "none" for _, outline in focused), focused
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_page_sends_its_policy_and_asks_nothing_of_any_other_origin(page: Dashboard) -> None:
    page.open()
    page.send("alice", True)
    page.wait_for_state("alice", "online")
    until(lambda: page.totals().get("applied") == 1, 15, "the chart")
    events = network_log(page.driver)

    urls = requested_urls(events)
    assert_same_origin(urls, page.origin)
    base = f"{page.origin}/v1/services/{page.sid}/"
    # Not vacuous: the page, its files and every API call it makes are in the log.
    for wanted in (
        f"{page.origin}/dashboard",
        f"{page.origin}/dashboard/dashboard.js",
        f"{page.origin}/dashboard/presence.js",
        f"{page.origin}/dashboard/subscriptions.js",
        f"{page.origin}/dashboard/dashboard.css",
        base + "subscriptions",
        base + "online?versions=true&limit=1000",
        base + "changes",
        base + "lookup",
        base + "stats",
        base + "activity",
    ):
        assert wanted in urls, (wanted, urls)
    headers = [
        event["params"]["response"]["headers"]
        for event in events
        if event["method"] == "Network.responseReceived"
        and event["params"]["response"]["url"] == f"{page.origin}/dashboard"
    ]
    assert headers, "the page's own reply"
    policy = {name.lower(): value for name, value in headers[-1].items()}
    assert policy["content-security-policy"] == CONTENT_SECURITY_POLICY

    # The policy is enforced: an inline script (what an injection would add) does not run.
    violated = page.driver.execute_script(
        """
        return (async () => {
          const violations = [];
          document.addEventListener('securitypolicyviolation',
            (event) => violations.push(event.effectiveDirective));
          const script = document.createElement('script');
          script.textContent = 'window.injected = true';
          document.body.append(script);
          // The report is an event of its own, queued after the script was refused.
          await new Promise((resolve) => setTimeout(resolve, 100));
          return {violations, injected: window.injected === true};
        })();
        """
    )
    assert violated == {"violations": ["script-src-elem"], "injected": False}


# ---------------------------------------------------------------------------------------------
# The push subscriptions panel

NOTHING = "\N{EN DASH}"  # what the panel shows for a time or failure there is none of
PANEL_ROWS = """
return [...document.querySelectorAll('#subscriptions-rows tr')].map((tr) => ({
  id: tr.dataset.id,
  state: tr.dataset.state,
  url: tr.querySelector('.target').firstChild.textContent,
  description: tr.querySelector('.description')?.textContent ?? null,
  lag: tr.querySelector('.lag').textContent,
  success: tr.querySelector('.success').textContent,
  failure: tr.querySelector('.failure').textContent,
}));
"""


def panel_message(driver: Chrome) -> str:
    return str(driver.find_element(By.ID, "subscriptions-message").text)


def panel_rows(driver: Chrome) -> dict[str, dict[str, str]]:
    rows: list[dict[str, str]] = driver.execute_script(PANEL_ROWS)
    return {row["id"]: row for row in rows}


def manage(
    service: Service, sid: str, method: str, path: str = "", body: Any = None
) -> dict[str, Any]:
    """A call of the subscriptions API with the admin token; its JSON reply."""
    request = urllib.request.Request(
        f"{service.url}/v1/services/{sid}/subscriptions{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        reply: dict[str, Any] = json.loads(response.read())
        return reply


@contextlib.contextmanager
def acknowledging_receiver() -> Iterator[str]:
    """An HTTP server in a thread that answers every POST with a 204: the panel shows what
    the service says of it (the signatures are tests/test_push.py's)."""

    class Acknowledge(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Acknowledge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/presence"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_push_panel_shows_each_subscriptions_state_lag_and_failure(
    page: Dashboard, service: Service
) -> None:
    page.open()
    until(lambda: "No push subscriptions" in panel_message(page.driver), 10, "the empty panel")
    hostile = '<img src=x onerror="window.injected=1">'
    with acknowledging_receiver() as url:
        ok = manage(service, page.sid, "POST", body={"url": url, "description": hostile})
        down = manage(
            service, page.sid, "POST", body={"url": f"http://127.0.0.1:{free_port()}/gone"}
        )
        page.send("alice", True)

        def shown() -> bool:
            rows = panel_rows(page.driver)
            return (
                rows.get(ok["id"], {}).get("success") not in (None, NOTHING)
                and rows.get(down["id"], {}).get("state") == "failing"
            )

        until(shown, 20, "one subscription acknowledged, the other failing")
        rows = panel_rows(page.driver)
        assert rows[ok["id"]]["state"] == "active"
        assert (rows[ok["id"]]["url"], rows[ok["id"]]["failure"]) == (url, NOTHING)
        assert rows[ok["id"]]["description"] == hostile  # as text
        assert rows[down["id"]]["failure"].startswith("could not connect at ")
        assert "in a row" in rows[down["id"]]["failure"]
        assert page.driver.execute_script("return window.injected === undefined")
        assert not page.driver.find_elements(By.CSS_SELECTOR, "#subscriptions-rows img")
        page.screenshot("push-panel")

        manage(service, page.sid, "POST", f"/{down['id']}/disable")
        until(
            lambda: panel_rows(page.driver)[down["id"]]["state"] == "disabled",
            10,
            "the disabled subscription",
        )
        # Its lag keeps growing while disabled: alice's change was never acknowledged.
        until(
            lambda: panel_rows(page.driver)[down["id"]]["lag"] not in ("0 s", "1 s"),
            10,
            "the disabled subscription's lag",
        )
        for subscription in (ok, down):
            request = urllib.request.Request(
                f"{service.url}/v1/services/{page.sid}/subscriptions/{subscription['id']}",
                method="DELETE",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 204
    until(lambda: "No push subscriptions" in panel_message(page.driver), 10, "the panel emptied")


def test_without_an_admin_token_the_push_panel_says_why_it_is_empty(
    browser: Chrome, store_server: RedisServer, tmp_path: Path
) -> None:
    other = start_service(tmp_path / "service.log", store_server, api_token=API_TOKEN)
    try:
        browser.switch_to.new_window("tab")
        browser.get(f"{other.url}/dashboard#{new_sid()}")
        until(lambda: browser.find_element(By.ID, "token-form").is_displayed(), 10, "the token")
        browser.find_element(By.ID, "token").send_keys(API_TOKEN, Keys.ENTER)
        until(
            lambda: "PRESENCE_ADMIN_TOKEN" in panel_message(browser),
            10,
            "the panel to say push subscriptions need the admin token",
        )
        assert panel_rows(browser) == {}
        network_log(browser)  # this tab's requests went to the other service: not checked
    finally:
        other.stop()
