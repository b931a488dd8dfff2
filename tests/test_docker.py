"""The compose stack on a real Docker engine, run as a user runs it.

The project's image is built and docker-compose.yml started under a compose project of the
test's own (named after this checkout), with its own env file (a copy of .env.example with
test secrets, ``PRESENCE_WEBHOOK_URL`` left as documented, and ``PRESENCE_PUBLISHED_ADDRESS``
a free port of 127.0.0.1). Then what a user relies on: the stack becomes healthy, answers at
that one address only, applies webhooks signed for the public URL, answers queries and
publishes changes; the address answers again, with the data, after a restart, a recreate, a
crash and a ``docker kill``; scaling to three replicas and back changes nothing for clients;
Redis keeps the data through its restart, ``stop`` and ``down``; ``down -v`` leaves nothing.

Requests go to 127.0.0.1 only (the published address); everything else runs inside the
containers, on the network the engine made for the project. The engine is the local one, and
the base images must be in it: on machines without Docker Hub, the stand-ins of
scripts/docker-standins/build, which scripts/test runs. ``PRESENCE_TEST_DOCKER=0`` skips the
module, for a contributor without Docker. How long it took, and the figures docs/deploying.md
quotes, are printed at the end of pytest's output.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from packaging.utils import canonicalize_name

from harness.compose import (
    USED_PROJECTS,
    ComposeProject,
    base_images,
    engine_problem,
    env_file,
    missing_images,
    poll,
    run,
)
from harness.processes import free_port
from presence import __version__
from presence.twilio.samples import ACCOUNT_SID, SERVICE_SID, reachability
from tests.lock import in_environment, marker_environment
from tests.support import signed_form

pytestmark = [
    pytest.mark.slow,
    # Building the image and the stack's restarts take minutes, not the suite's 2.
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        os.environ.get("PRESENCE_TEST_DOCKER") == "0",
        reason="PRESENCE_TEST_DOCKER=0: the Docker engine tests are skipped",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
PROJECT = "presence-dockertest-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
"""One project per checkout: a second run reuses its image (and so the build cache), and two
checkouts on one machine do not meet."""

PUBLIC_URL = "https://presence.example.com/webhooks/sync"
"""``PRESENCE_WEBHOOK_URL`` as .env.example has it: what Twilio signs for, behind TLS."""
TWILIO_TOKEN = "docker0123456789abcdef012345678"
API_TOKEN = "docker-api-token-0123456789"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}

HEALTHY_WITHIN = 90.0
"""From `up -d` to every service healthy and the address answering: Redis' first health check
comes after 5 s, presence's after 10 s."""
BACK_WITHIN = 30.0
"""The address answers again, with the data, this long after a disruption at most."""
STOP_GRACE = 30.0
"""stop_grace_period of presence and haproxy in docker-compose.yml."""


# -- figures, printed at the end of the run ---------------------------------------------------


@dataclass
class Figures:
    """What the run measured, shown in pytest's terminal summary whatever the capture mode."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    label: str = ""

    def add(self, text: str) -> None:
        self.lines.append(text)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section(f"Docker stack{self.label}", sep="-")
        for line in self.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    found = Figures()
    request.config.pluginmanager.register(found, "presence-docker-figures")
    yield found
    found.add(f"tests/test_docker.py took {time.monotonic() - found.started:.0f} s in all")


def on_standins(images: list[str]) -> bool:
    """Whether the base images are the stand-ins scripts/docker-standins/build makes."""
    for image in images:
        labels = run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image],
            timeout=30,
        ).stdout
        if "stand-in" not in labels:
            return False
    return True


# -- HTTP, to the published address only ------------------------------------------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def call(
    url: str, *, data: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, JSON body) of a request; (0, None) when no HTTP reply came."""
    request = urllib.request.Request(
        url,
        data=None if data is None else data.encode(),
        headers=headers or {},
        method="GET" if data is None else "POST",
    )
    try:
        with _opener.open(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (OSError, http.client.HTTPException):  # refused, reset, timed out
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


@dataclass
class Stack:
    """The running stack: its compose project and its one published address."""

    project: ComposeProject
    port: int
    figures: Figures

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def webhook(self, params: dict[str, str], signed_for: str = PUBLIC_URL) -> tuple[int, Any]:
        """POSTs a webhook to the address, signed as Twilio signs it for ``signed_for``."""
        request = signed_form(signed_for, params, TWILIO_TOKEN)
        return call(f"{self.url}/webhooks/sync", data=request["data"], headers=request["headers"])

    def identity(self, name: str) -> tuple[int, Any]:
        return call(
            f"{self.url}/v1/services/{SERVICE_SID}/identities/{quote(name)}", headers=BEARER
        )

    def connect(self, name: str, event_id: int = 1) -> dict[str, Any]:
        """Connects ``name`` (endpoint EP-<name>) and returns what a query then answers."""
        params = reachability(name, f"EP-{name}", event_id, True, connected=True)
        assert self.webhook(params) == (200, {"status": "applied"})
        status, body = self.identity(name)
        assert status == 200, body
        assert body["online"] is True
        assert body["endpoints"] == [f"EP-{name}"]
        return dict(body)

    def answers_with(self, name: str, expected: dict[str, Any]) -> bool:
        return self.identity(name) == (200, expected)

    def back_with(self, name: str, expected: dict[str, Any], what: str, since: float) -> None:
        """Waits until the address answers ``name``'s query with ``expected`` again, at most
        ``BACK_WITHIN`` seconds after ``since`` (when the disruption began)."""
        left = BACK_WITHIN - (time.monotonic() - since)
        poll(lambda: self.answers_with(name, expected), left, f"the address {what}")
        took = time.monotonic() - since
        self.figures.add(f"{what}: answering again, with the data, {took:.1f} s after it began")

    def ready(self) -> bool:
        """Whether the address answers GET /readyz with 200 (a replica is ready)."""
        return call(f"{self.url}/readyz") == (200, {"status": "ready"})

    def healthy(self) -> bool:
        """Whether Docker has every service healthy (or running, without a health check)."""
        project = self.project
        presence = project.health("presence")
        return (
            project.health("redis") == ["healthy"]
            and bool(presence)
            and set(presence) == {"healthy"}
            and project.health("haproxy") == ["running"]
        )

    def wait_healthy(self, what: str, since: float) -> tuple[float, float]:
        """Waits until the address is ready and every service healthy, at most
        ``HEALTHY_WITHIN`` seconds after ``since``; returns the seconds each took from it."""
        try:
            poll(self.ready, HEALTHY_WITHIN - (time.monotonic() - since), what, every=0.2)
            ready = time.monotonic() - since
            poll(self.healthy, HEALTHY_WITHIN - ready, what, every=0.5)
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.project.logs()}") from None
        return ready, time.monotonic() - since

    def ensure_up(self) -> None:
        """The stack as `up -d` leaves it, one replica, whatever an earlier test did."""
        began = time.monotonic()
        self.project.compose("up", "-d", "--scale", "presence=1")
        self.wait_healthy("the stack to be up", since=began)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, figures: Figures) -> Iterator[Stack]:
    """The stack, built and up, as a user starts it; everything of it removed afterwards."""
    problem = engine_problem()
    images = base_images(ROOT / "docker-compose.yml", ROOT / "Dockerfile")
    if problem is None and (missing := missing_images(images)):
        problem = f"the base images {', '.join(missing)} are missing"
    if problem is not None:
        pytest.fail(
            f"{problem}. scripts/test starts the engine and builds stand-ins of the base "
            "images (scripts/docker-standins/build, as root); PRESENCE_TEST_DOCKER=0 skips "
            "these tests",
            pytrace=False,
        )
    if on_standins(images):
        figures.label = " (on stand-in images)"
    port = free_port()
    directory = tmp_path_factory.mktemp("docker")
    settings = env_file(
        directory / ".env",
        ROOT / ".env.example",
        {
            "PRESENCE_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "PRESENCE_API_TOKEN": API_TOKEN,
            "PRESENCE_ACCOUNT_SID": ACCOUNT_SID,
            "PRESENCE_WEBHOOK_URL": PUBLIC_URL,
            "PRESENCE_PUBLISHED_ADDRESS": f"127.0.0.1:{port}",
        },
    )
    project = ComposeProject(ROOT, PROJECT, settings)
    project.down()  # what an interrupted run of this checkout left behind
    running = Stack(project, port, figures)
    try:
        started = time.monotonic()
        project.compose("build", timeout=900)
        figures.add(f"docker compose build: {time.monotonic() - started:.0f} s")
        began = time.monotonic()
        project.compose("up", "-d", timeout=300)
        ready, healthy = running.wait_healthy("the stack to become healthy", since=began)
        figures.add(
            f"from `up -d`: the address answering {ready:.1f} s, every service healthy "
            f"{healthy:.1f} s"
        )
        [container] = project.containers("presence")
        image = project.inspect(container)["Image"]
        size = int(
            run(["docker", "image", "inspect", "--format", "{{.Size}}", image], timeout=30).stdout
        )
        figures.add(f"presence image: {size / 1e6:.0f} MB")
        yield running
    finally:
        project.down()


# -- the scenarios ----------------------------------------------------------------------------


def published_ports(project: ComposeProject, service: str) -> list[tuple[str, str, str]]:
    """(container port, host address, host port) of every port a service publishes."""
    found = []
    for container in project.containers(service):
        ports = project.inspect(container)["NetworkSettings"]["Ports"] or {}
        for inside, bindings in ports.items():
            for binding in bindings or []:
                found.append((inside, binding["HostIp"], binding["HostPort"]))
    return found


def python_in(project: ComposeProject, service: str, code: str) -> str:
    """Runs Python code in the service's first container; returns its output."""
    args = project.exec_args(service, "python", "-c", code)
    return run(args, timeout=60, cwd=project.root).stdout


def test_the_image_holds_exactly_what_the_lock_pins_for_its_python(stack: Stack) -> None:
    """requirements/service.txt, as it applies to the image's Python (below 3.11.3 on the
    stand-in image: async-timeout too), and the project itself; nothing else but pip."""
    listing = json.loads(
        python_in(
            stack.project,
            "presence",
            "import json, platform; from importlib import metadata; print(json.dumps("
            "[platform.python_version(), {d.metadata['Name']: d.version "
            "for d in metadata.distributions()}]))",
        )
    )
    python, installed = listing[0], {canonicalize_name(n): v for n, v in listing[1].items()}
    locked = in_environment("service.txt", marker_environment(python))
    wanted = {name: str(pin.version) for name, pin in locked.items()}
    base = {"pip", "setuptools", "wheel"}  # the base image's own installer
    project = {"presence": __version__}
    assert {n: v for n, v in installed.items() if n not in base} == {**wanted, **project}


def test_up_makes_the_stack_healthy_and_reachable_at_one_address_without_metrics(
    stack: Stack,
) -> None:
    project = stack.project
    assert published_ports(project, "haproxy") == [("8080/tcp", "127.0.0.1", str(stack.port))]
    assert published_ports(project, "presence") == []
    assert published_ports(project, "redis") == []

    assert call(f"{stack.url}/healthz") == (200, {"status": "ok"})
    status, document = call(f"{stack.url}/openapi.json")
    assert status == 200
    assert "/webhooks/sync" in document["paths"]
    # /metrics is not public, however its path is spelled...
    for path in ("/metrics", "/%6Detrics", "/metrics?format=text"):
        status, body = call(f"{stack.url}{path}")
        assert status == 404, path
        assert body["error"] == "not_found"
    # ... but Prometheus scrapes each replica on the network, by its name.
    scraped = python_in(
        project,
        "presence",
        "import urllib.request; print(urllib.request.urlopen("
        "'http://presence:8080/metrics', timeout=5).read().decode())",
    )
    assert "presence_webhooks_total" in scraped


class Lines:
    """The output lines of a process, collected as they come by a thread of their own."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.lines: list[str] = []
        # A session of its own: compose runs the docker client as a child, and both must go.
        self.process = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def json(self) -> list[Any]:
        found = []
        for line in self.lines:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def stop(self) -> None:
        """Kills the local clients, by the process group of the pid started here; the
        command in the container ends at its ``timeout``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def test_a_webhook_signed_for_the_public_url_is_applied_queried_and_published(
    stack: Stack,
) -> None:
    stack.ensure_up()
    project = stack.project
    # Two subscribers, as in docs/changes.md: redis-cli on Redis, and `presence watch` in a replica.
    cli = Lines(
        project.exec_args("redis", "timeout", "120", "redis-cli", "SUBSCRIBE", "presence:changes"),
        project.root,
    )
    watch = Lines(
        project.exec_args("presence", "timeout", "120", "presence", "watch"), project.root
    )
    try:
        poll(lambda: "subscribe" in cli.lines, 30, "redis-cli to subscribe")
        probe = json.dumps({"probe": PROJECT})

        def watching() -> bool:
            if {"probe": PROJECT} in watch.json():
                return True
            publish = ["redis", "redis-cli", "PUBLISH", "presence:changes", probe]
            run(project.exec_args(*publish), timeout=60, cwd=project.root)
            return False

        poll(watching, 60, "presence watch to print a probe", every=1.0)

        params = reachability("alice", "EP-alice", 1, True, connected=True)
        # Signed for the URL the request came to, not the public one: refused.
        status, body = stack.webhook(params, signed_for=f"{stack.url}/webhooks/sync")
        assert (status, body["error"]) == (403, "invalid_signature")
        assert stack.webhook(params) == (200, {"status": "applied"})

        status, body = stack.identity("alice")
        assert status == 200
        assert (body["online"], body["endpoints"], body["version"]) == (True, ["EP-alice"], 1)
        assert call(f"{stack.url}/v1/services/{SERVICE_SID}/identities/alice")[0] == 401

        def published(lines: Lines) -> bool:
            return any(
                isinstance(change, dict) and change.get("identity") == "alice"
                for change in lines.json()
            )

        poll(lambda: published(cli) and published(watch), 20, "the change on both subscribers")
        for lines in (cli, watch):
            [change] = [c for c in lines.json() if isinstance(c, dict) and "identity" in c]
            assert (change["online"], change["reason"], change["version"]) == (
                True,
                "connected",
                1,
            )
    finally:
        cli.stop()
        watch.stop()


def test_the_change_feed_streams_through_the_address_and_resumes_by_cursor(
    stack: Stack,
) -> None:
    """The real change feed through HAProxy: a stream opened before a webhook gets its
    change at once, and a JSON read from the listing's feed_cursor gets it again."""
    stack.ensure_up()
    status, listing = call(f"{stack.url}/v1/services/{SERVICE_SID}/online", headers=BEARER)
    assert status == 200
    changes = f"/v1/services/{SERVICE_SID}/changes"
    port = int(stack.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", changes, headers={"Accept": "text/event-stream", **BEARER})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        name = f"feed-{time.monotonic_ns()}"
        sent = time.monotonic()
        assert stack.webhook(reachability(name, "EP1", 1, True, connected=True)) == (
            200,
            {"status": "applied"},
        )
        event: dict[str, str] = {}
        while "event" not in event:  # comment lines (keep-alives) come as blocks of their own
            event = {}
            while line := response.readline().decode().rstrip("\r\n"):
                field, _, value = line.partition(": ")
                event[field] = value
        took = time.monotonic() - sent
    finally:
        connection.close()
    assert event["event"] == "change", event
    change = json.loads(event["data"])
    assert (change["identity"], change["online"], change["version"]) == (name, True, 1)
    assert took < 5, took
    status, page = call(
        f"{stack.url}{changes}?since={listing['feed_cursor']}&limit=1000", headers=BEARER
    )
    assert status == 200
    assert [c["identity"] for c in page["changes"]].count(name) == 1


def test_presence_simulate_in_a_replica_signs_for_the_public_url_by_itself(stack: Stack) -> None:
    stack.ensure_up()
    # Inside a replica the token, PRESENCE_WEBHOOK_URL and the account are in the
    # environment: sent to HAProxy by its service name, signed for the public URL.
    args = stack.project.exec_args(
        "presence", "presence", "simulate", "--url", "http://haproxy:8080/webhooks/sync",
        "--identities", "50", "--events", "400", "--seed", "12", "--json",
    )  # fmt: skip
    summary = json.loads(run(args, timeout=120, cwd=stack.project.root).stdout)

    assert summary["signed_for"] == PUBLIC_URL
    assert summary["http_errors"] == {}
    assert summary["transport_errors"] == 0
    assert summary["unexpected_statuses"] == 0
    assert sum(summary["statuses"].values()) == 400


def kill_the_service_process(project: ComposeProject) -> None:
    """A crash: the `presence serve` process in the (one) replica killed with SIGKILL. Its
    container exits, and Docker's restart policy starts it again."""
    code = (
        "import os, signal\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    if b'serve' in argv and int(pid) != 1:\n"
        "        os.kill(int(pid), signal.SIGKILL)\n"
    )
    # The container goes down with the process, and this command with it: no exit status.
    run(project.exec_args("presence", "python", "-c", code), timeout=60, check=False)


def test_the_address_answers_again_with_the_data_after_restarts_a_crash_and_a_kill(
    stack: Stack,
) -> None:
    project = stack.project
    stack.ensure_up()
    before = stack.connect("bob")

    began = time.monotonic()
    project.compose("restart", "presence")
    stack.back_with("bob", before, "`restart presence`", since=began)

    began = time.monotonic()
    project.compose("up", "-d", "--force-recreate")
    stack.back_with("bob", before, "`up -d --force-recreate`", since=began)

    [container] = project.containers("presence")
    restarts = project.inspect(container)["RestartCount"]
    began = time.monotonic()
    kill_the_service_process(project)
    stack.back_with("bob", before, "a crash (the service process killed)", since=began)
    assert project.inspect(container)["RestartCount"] == restarts + 1

    # `docker kill` is a stop by hand to Docker: unless-stopped does not restart it, and
    # with one replica the address answers 503 until the stack is brought up again.
    run(["docker", "kill", container], timeout=60)
    poll(lambda: call(f"{stack.url}/readyz")[0] == 503, BACK_WITHIN, "503 once it is killed")
    began = time.monotonic()
    project.compose("up", "-d")
    stack.back_with("bob", before, "`docker kill`, then `up -d`", since=began)
    assert published_ports(project, "haproxy") == [("8080/tcp", "127.0.0.1", str(stack.port))]


@dataclass
class Traffic:
    """A client sending a signed webhook and a query, one after the other, until stopped:
    the identity ``name`` connects and disconnects with increasing EventIds. Bounded: it
    stops by itself after ``limit`` seconds."""

    stack: Stack
    name: str = "carol"
    limit: float = 240.0
    replies: list[tuple[float, str, int]] = field(default_factory=list)
    event_id: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.event_id += 1
            online = self.event_id % 2 == 1
            params = reachability(
                self.name, f"EP-{self.name}", self.event_id, online, connected=online
            )
            status, _ = self.stack.webhook(params)
            self.replies.append((time.monotonic(), "webhook", status))
            status, _ = self.stack.identity(self.name)
            self.replies.append((time.monotonic(), "query", status))
            self.stop.wait(0.01)  # pacing, not waiting for anything

    def __enter__(self) -> Traffic:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def answered_after(self, moment: float) -> int:
        return sum(1 for at, _, status in self.replies if at > moment and status == 200)

    def failures(self) -> list[tuple[float, str, int]]:
        return [reply for reply in self.replies if reply[2] != 200]


def webhooks_seen_by(project: ComposeProject, container: str) -> float:
    """presence_webhooks_total of one replica, summed, read from its own /metrics."""
    code = (
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:8080/metrics', timeout=5).read().decode())"
    )
    result = run(["docker", "exec", container, "python", "-c", code], timeout=60, check=False)
    if result.returncode != 0:
        return 0.0  # not listening yet
    return sum(
        float(value)
        for value in re.findall(
            r"^presence_webhooks_total\{[^}]*\} (\S+)$", result.stdout, re.MULTILINE
        )
    )


def scale_to_three(project: ComposeProject) -> list[str]:
    """``up -d --scale presence=3`` (new replicas, or a stopped one started again), once each
    replica receives webhooks: it gets its share once its /readyz answers."""
    project.compose("up", "-d", "--scale", "presence=3")
    replicas = project.containers("presence")
    assert len(replicas) == 3
    poll(
        lambda: all(webhooks_seen_by(project, c) > 0 for c in replicas),
        BACK_WITHIN,
        "every replica to receive webhooks",
        every=1.0,
    )
    return replicas


def test_scaling_to_three_and_back_to_one_changes_nothing_for_clients(stack: Stack) -> None:
    stack.ensure_up()
    project = stack.project
    with Traffic(stack) as traffic:
        poll(lambda: traffic.answered_after(0) >= 20, 30, "the client's first replies")
        replicas = scale_to_three(project)
        assert traffic.failures() == []

        # A replica killed outright: only what it had in flight is lost; HAProxy takes it out.
        killed = time.monotonic()
        run(["docker", "kill", replicas[-1]], timeout=60)
        poll(lambda: traffic.answered_after(killed + 2) >= 20, BACK_WITHIN, "replies after it")
        lost = traffic.failures()
        assert len(lost) <= 1, lost
        assert all(killed <= at <= killed + 2 for at, _, _ in lost), lost
        # As docs/deploying.md says to: the killed replica started again before scaling down.
        # Compose keeps the lowest-numbered replicas and starts them if stopped: scaling down
        # with a stopped one kept leaves no replica answering for seconds.
        scale_to_three(project)

        scaled_down = time.monotonic()
        project.compose("up", "-d", "--scale", "presence=1")
        assert len(project.containers("presence")) == 1
        poll(lambda: traffic.answered_after(scaled_down) >= 40, BACK_WITHIN, "replies after it")
    # HAProxy logs each request that went wrong, with the state it ended in: the reason why.
    assert traffic.failures() == lost, project.logs()
    stack.figures.add(
        f"scaling 1 -> 3 -> 1 and a replica killed: {len(traffic.replies)} requests, "
        f"{len(lost)} lost (in flight to the killed replica)"
    )
    # The last event sent is the identity's state: a connect, or a disconnect in its grace.
    status, body = stack.identity(traffic.name)
    assert status == 200
    assert body["last_event_id"] == traffic.event_id
    connected = traffic.event_id % 2 == 1
    assert (body["online"], body["pending_offline"]) == (True, not connected)
    assert Counter(kind for _, kind, _ in traffic.replies)["webhook"] == traffic.event_id


def test_a_redis_restart_keeps_the_data(stack: Stack) -> None:
    stack.ensure_up()
    before = stack.connect("dave")

    began = time.monotonic()
    stack.project.compose("restart", "redis")

    stack.back_with("dave", before, "`restart redis`", since=began)


def test_stop_is_graceful_and_down_then_up_keeps_the_data(stack: Stack) -> None:
    stack.ensure_up()
    project = stack.project
    before = stack.connect("erin")
    containers = {
        service: project.containers(service) for service in ("redis", "presence", "haproxy")
    }

    started = time.monotonic()
    project.compose("stop")
    took = time.monotonic() - started
    stack.figures.add(f"docker compose stop: {took:.1f} s")
    assert took < STOP_GRACE
    for service, ids in containers.items():
        for container in ids:
            state = project.inspect(container)["State"]
            # 0: each stopped by its own signal handling, none killed at the grace period.
            assert (state["Status"], state["ExitCode"]) == ("exited", 0), (service, state)

    began = time.monotonic()
    project.compose("up", "-d")
    stack.wait_healthy("the stack after `stop` and `up -d`", since=began)
    assert stack.answers_with("erin", before)

    project.compose("down")
    assert project.resources()["containers"] == []
    assert len(project.resources()["volumes"]) == 1  # redis-data stays
    began = time.monotonic()
    project.compose("up", "-d")
    ready, _ = stack.wait_healthy("the stack after `down` and `up -d`", since=began)
    stack.figures.add(f"`down`, then `up -d`: answering, with the data, after {ready:.1f} s")
    assert stack.answers_with("erin", before)


def test_down_v_removes_everything_of_the_project(stack: Stack) -> None:
    project = stack.project
    assert project.resources()["volumes"]

    project.compose("down", "-v")

    assert project.resources() == {"containers": [], "networks": [], "volumes": []}
    assert call(f"{stack.url}/healthz") == (0, None)


# -- change-feed streams through HAProxy ------------------------------------------------------

STREAM_SILENCE = 20.0
"""Seconds a stream stays silent: longer than the 15 s the change feed allows between two
comment lines."""
LONG_POLL = 31.0
"""Seconds a long-poll is held: longer than the longest ``wait`` (30 s)."""

# A stand-in for a presence replica serving the change feed (GET/POST /v1/services/{sid}/
# changes): an event at once, then STREAM_SILENCE seconds of nothing, then a comment line and
# a second event; a long-poll answered after LONG_POLL seconds. Standard library only, so it
# runs on the python base image.
FEED_STAND_IN = f"""
import http.server, json, time
class Feed(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def chunk(self, text):
        data = text.encode()
        self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
    def do_GET(self):
        if self.path == "/readyz":
            return self.reply({{"status": "ready"}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunk('id: 1\\nevent: change\\ndata: {{"version": 1}}\\n\\n')
        time.sleep({STREAM_SILENCE})
        self.chunk(": still here\\n\\n")
        self.chunk('id: 2\\nevent: change\\ndata: {{"version": 2}}\\n\\n')
        self.chunk("")
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep({LONG_POLL})
        self.reply({{"changes": [], "cursor": "c1", "reset": False}})
http.server.ThreadingHTTPServer(("", 8080), Feed).serve_forever()
"""


@pytest.fixture
def haproxy_before_a_feed(figures: Figures) -> Iterator[int]:
    """deploy/haproxy.cfg in the HAProxy image, in front of FEED_STAND_IN under the name
    `presence`, on a network of their own; yields HAProxy's port on 127.0.0.1."""
    if problem := engine_problem():
        pytest.fail(f"{problem}: see tests/test_docker.py", pytrace=False)
    haproxy = image_of("haproxy")
    name = f"{PROJECT}-feed"
    USED_PROJECTS.add(name)
    port = free_port()
    label = ["--label", f"com.docker.compose.project={name}"]
    try:
        run(["docker", "network", "create", *label, name], timeout=60)
        run(
            [
                "docker", "run", "--detach", *label, "--name", f"{name}-replica",
                "--network", name, "--network-alias", "presence",
                image_of("python"), "python", "-c", FEED_STAND_IN,
            ],
            timeout=60,
        )  # fmt: skip
        run(
            [
                "docker", "run", "--detach", *label, "--name", f"{name}-haproxy",
                "--network", name, "--publish", f"127.0.0.1:{port}:8080",
                "--volume", f"{HAPROXY_CFG}:/usr/local/etc/haproxy/haproxy.cfg:ro",
                haproxy,
            ],
            timeout=60,
        )  # fmt: skip
        ready = f"http://127.0.0.1:{port}/readyz"
        poll(lambda: call(ready) == (200, {"status": "ready"}), 30, "HAProxy to route")
        yield port
    finally:
        run(
            ["docker", "rm", "--force", f"{name}-replica", f"{name}-haproxy"],
            timeout=60,
            check=False,
        )
        run(["docker", "network", "rm", name], timeout=60, check=False)


def image_of(service: str) -> str:
    """The image docker-compose.yml names for ``service``."""
    [image] = [
        image
        for image in base_images(ROOT / "docker-compose.yml", ROOT / "Dockerfile")
        if image.startswith(f"{service}:")
    ]
    return image


def test_haproxy_passes_streams_unbuffered_and_waits_out_long_polls(
    haproxy_before_a_feed: int, figures: Figures
) -> None:
    port = haproxy_before_a_feed
    changes = f"/v1/services/{SERVICE_SID}/changes"
    polled: list[tuple[int, float]] = []

    def long_poll() -> None:
        began = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=LONG_POLL + 30)
        try:
            connection.request("POST", f"{changes}?wait=30", body=b"{}", headers=BEARER)
            response = connection.getresponse()
            assert json.loads(response.read())["cursor"] == "c1"
            polled.append((response.status, time.monotonic() - began))
        finally:
            connection.close()

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    began = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STREAM_SILENCE + 30)
    lines: list[tuple[float, str]] = []
    try:
        connection.request("GET", changes, headers={"Accept": "text/event-stream", **BEARER})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        while line := response.readline():
            lines.append((time.monotonic() - began, line.decode().rstrip("\n")))
    finally:
        connection.close()
    poller.join(timeout=LONG_POLL + 60)

    texts = [text for _, text in lines]
    if texts[4:] == [] or not polled:
        # Both cut short: what HAProxy logged of them (it logs only what ended abnormally),
        # with the times the lines came.
        name = f"{PROJECT}-feed"
        logs = "".join(
            run(["docker", "logs", "--tail", "50", container], timeout=60, check=False).stdout
            + run(["docker", "logs", "--tail", "50", container], timeout=60, check=False).stderr
            for container in (f"{name}-haproxy", f"{name}-replica")
        )
        raise AssertionError(f"stream lines {lines}, long-poll {polled}:\n{logs}")
    assert texts == [
        "id: 1", "event: change", 'data: {"version": 1}', "",
        ": still here", "",
        "id: 2", "event: change", 'data: {"version": 2}', "",
    ]  # fmt: skip
    first, comment = lines[2][0], lines[4][0]
    # The first event came through while the replica still held the response: not buffered.
    assert first < 3.0, lines
    # The stream outlived a silence longer than the feed's 15 s between comments.
    assert comment >= STREAM_SILENCE - 1, lines
    [(status, waited)] = polled
    assert status == 200
    assert waited >= LONG_POLL - 1
    figures.add(
        f"through HAProxy: a stream's first event after {first:.2f} s, its next line after "
        f"{comment - first:.0f} s of silence; a long-poll answered after {waited:.0f} s"
    )
