"""The docker-compose production path, checked without a Docker engine.

``docker-compose config`` (Debian's docker-compose 1.29, which scripts/test installs) resolves
docker-compose.yml with a copy of .env.example; the presence service's own command and
environment, read from that resolved file, then run as a process against a real redis-server,
and the Dockerfile's HEALTHCHECK command is run against it. deploy/haproxy.cfg is read for
what the stack relies on. tests/test_docker.py runs the whole stack on a Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.compose import env_file as write_env_file
from harness.processes import RedisServer, free_port
from presence.settings import Settings, env_name
from presence.twilio.samples import ACCOUNT_SID, SERVICE_SID, reachability
from tests.support import signed_form, wait_until

pytestmark = pytest.mark.slow  # the docker-compose stack

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
DEPLOYING = ROOT / "docs" / "deploying.md"

# The secrets the tests put in their copy of .env.example: distinct from every other test's.
TWILIO_TOKEN = "compose0123456789abcdef01234567"
API_TOKEN = "compose-api-token-0123456789"
SECRETS = {
    "PRESENCE_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
    "PRESENCE_API_TOKEN": API_TOKEN,
    "PRESENCE_ACCOUNT_SID": ACCOUNT_SID,
}


def env_file(directory: Path, values: Mapping[str, str], drop: tuple[str, ...] = ()) -> Path:
    """A copy of .env.example with these values set and the ``drop`` variables removed."""
    return write_env_file(directory / "compose.env", ENV_EXAMPLE, values, drop)


def compose_config(env: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose --env-file env config``, never in reach of a Docker engine."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed: run scripts/test, which installs Debian's "
            "docker-compose package (only `docker-compose config` is used, no Docker engine)"
        )
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PRESENCE_", "COMPOSE_", "DOCKER_", "PYTHON"))
    }
    # Variables of the environment would win over the env file; none is left. An engine
    # address that cannot exist proves `config` resolves the file alone.
    environment |= {
        "COMPOSE_PROJECT_NAME": "presence-compose-test",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }
    return subprocess.run(
        [binary, "--env-file", str(env), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as `docker-compose config` resolves it with the tests' .env."""
    result = compose_config(env_file(tmp_path_factory.mktemp("compose"), SECRETS))
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def as_list(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def volume_targets(service: Mapping[str, Any]) -> dict[str, str]:
    """Where each volume of a service is mounted: target -> source."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            mounts[rest.partition(":")[0]] = source
        else:
            mounts[volume["target"]] = volume["source"]
    return mounts


def test_compose_config_resolves_the_production_stack(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = compose["services"]["redis"]
    presence = compose["services"]["presence"]

    assert re.fullmatch(r"redis:7\.\d+[\w.-]*", redis["image"]), redis["image"]
    command = as_list(redis["command"])
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume = volume_targets(redis)["/data"]
    assert volume in compose["volumes"], "/data must be a named volume"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]

    assert Path(presence["build"]["context"]) == ROOT
    assert presence["build"]["dockerfile"] == "Dockerfile"
    assert as_list(presence["command"]) == ["presence", "serve"]
    assert presence["depends_on"]["redis"]["condition"] == "service_healthy"
    assert presence["restart"] == "unless-stopped"
    assert presence["stop_grace_period"] == "30s"
    assert presence["healthcheck"]["test"][0] == "CMD"
    # Reached through HAProxy only: a published port would move, or refuse a second replica.
    assert "ports" not in presence
    assert [str(port) for port in presence["expose"]] == ["8080"]

    env = environment_of(presence)
    assert {name: env[name] for name in SECRETS} == SECRETS
    assert env["PRESENCE_HOST"] == "0.0.0.0"
    assert env["PRESENCE_PORT"] == "8080"
    assert env["PRESENCE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["PRESENCE_LOG_FORMAT"] == "json"
    assert env["PRESENCE_ALLOW_UNSIGNED_WEBHOOKS"] == "false"
    missing = {env_name(field) for field in Settings.model_fields} - env.keys()
    assert not missing, f"settings docker-compose.yml does not pass: {sorted(missing)}"
    # The service accepts every value, read from its environment as in the container.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().log_format == "json"


def published(service: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(host address, host port, container port) of each port a resolved service publishes."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):  # "127.0.0.1:8080:8080/tcp" or "8080:8080/tcp"
            host, _, target = port.removesuffix("/tcp").rpartition(":")
            address, _, number = host.rpartition(":")
            found.append((address, number, int(target)))
        else:
            found.append((port.get("host_ip", ""), str(port["published"]), int(port["target"])))
    return found


def test_haproxy_is_the_one_published_entry_with_the_config_of_the_repository(
    compose: dict[str, Any],
) -> None:
    haproxy = compose["services"]["haproxy"]

    assert re.fullmatch(r"haproxy:\d+\.\d+[\w.-]*", haproxy["image"]), haproxy["image"]
    [config] = haproxy["volumes"]
    if isinstance(config, str):  # "source:target:ro"
        source, target, mode = config.split(":")
        config = {"source": source, "target": target, "read_only": mode == "ro"}
    assert config["target"] == "/usr/local/etc/haproxy/haproxy.cfg"  # the image's convention
    assert Path(config["source"]) == HAPROXY_CFG
    assert config["read_only"] is True
    assert haproxy["depends_on"]["presence"]["condition"] == "service_started"
    assert haproxy["restart"] == "unless-stopped"
    # .env.example's PRESENCE_PUBLISHED_ADDRESS, the default: this host only.
    assert published(haproxy) == [("127.0.0.1", "8080", 8080)]
    assert [name for name, service in compose["services"].items() if "ports" in service] == [
        "haproxy"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("127.0.0.1", "8080", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", "80", 8080)),
        ("9000", ("", "9000", 8080)),
    ],
    ids=["unset", "every-interface", "port-only"],
)
def test_the_published_address_is_one_setting(
    tmp_path: Path, value: str | None, expected: tuple[str, str, int]
) -> None:
    name = "PRESENCE_PUBLISHED_ADDRESS"
    env = env_file(tmp_path, SECRETS | ({name: value} if value else {}), () if value else (name,))
    result = compose_config(env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]["haproxy"]
    assert published(resolved) == [expected]


def comment_block(lines: list[str], start: int) -> list[str]:
    """The comment lines from ``start`` on, up to the first line that is not a comment."""
    block = []
    for line in lines[start:]:
        if not line.lstrip().startswith("#"):
            break
        block.append(line)
    return block


def words(text: str) -> str:
    """Text without comment marks, Markdown backticks and line breaks, for comparison."""
    text = re.sub(r"^\s*#\s?", "", text, flags=re.MULTILINE).replace("`", "")
    return " ".join(text.split())


def test_the_published_address_is_documented_in_the_same_words_everywhere() -> None:
    compose_lines = COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
    [start] = [
        number
        for number, line in enumerate(compose_lines)
        if line.lstrip().startswith("# PRESENCE_PUBLISHED_ADDRESS:")
    ]
    documented = words("\n".join(comment_block(compose_lines, start)))
    assert documented.startswith("PRESENCE_PUBLISHED_ADDRESS: the one address")

    example = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    [setting] = [n for n, line in enumerate(example) if line.startswith("PRESENCE_PUBLISHED_")]
    above = list(reversed(example[:setting]))
    block = list(reversed(comment_block(above, 0)))
    assert words("\n".join(block)) == documented
    assert documented in words(DEPLOYING.read_text(encoding="utf-8"))


# -- deploy/haproxy.cfg ----------------------------------------------------------------------


def haproxy_sections() -> dict[str, list[list[str]]]:
    """deploy/haproxy.cfg as {"section name": [the words of each line]}, comments left out."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in HAPROXY_CFG.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(line.split())
    return sections


def setting(lines: list[list[str]], *keywords: str) -> list[str]:
    """The arguments of the one line starting with ``keywords``."""
    [found] = [line[len(keywords) :] for line in lines if tuple(line[: len(keywords)]) == keywords]
    return found


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, value
    return int(match[1]) * units[match[2] or "ms"]


def test_haproxy_finds_the_replicas_in_dockers_dns_and_checks_readyz() -> None:
    sections = haproxy_sections()
    backend = sections["backend presence"]

    assert setting(sections["resolvers docker"], "nameserver")[1] == "127.0.0.11:53"
    template = setting(backend, "server-template")
    assert template[0:1] == ["presence-"]
    assert int(template[1]) >= 10
    assert template[2] == "presence:8080"
    defaults = [word for line in backend if line[0] == "default-server" for word in line[1:]]
    assert "check" in defaults
    assert defaults[defaults.index("resolvers") + 1] == "docker"
    assert defaults[defaults.index("init-addr") + 1] == "none"  # starts with no replica yet
    assert setting(backend, "http-check", "send") == ["meth", "GET", "uri", "/readyz"]
    assert setting(backend, "http-check", "expect") == ["status", "200"]
    frontend = sections["frontend public"]
    assert setting(frontend, "bind") == [":8080"]
    assert setting(frontend, "default_backend") == ["presence"]


def test_haproxy_hides_metrics_and_lets_change_feed_streams_and_long_polls_through(
    compose: dict[str, Any],
) -> None:
    sections = haproxy_sections()
    frontend, defaults = sections["frontend public"], sections["defaults"]

    # Every spelling the replicas decode to /metrics is refused before it reaches one.
    assert setting(frontend, "acl", "metrics") == ["path,url_dec", "-m", "str", "/metrics"]
    [refusal] = [line for line in frontend if line[:2] == ["http-request", "return"]]
    assert refusal[2:4] == ["status", "404"]
    assert refusal[-2:] == ["if", "metrics"]
    # A long-poll waits up to 30 s; a stream sends a comment at least every 15 s.
    for side in ("client", "server"):
        assert seconds(setting(defaults, "timeout", side)[0]) > 30 + 15, side
    assert not [line for line in defaults + frontend if line[0] in ("compression", "filter")]
    # A stopping HAProxy closes open streams before Docker would kill it.
    hard_stop = seconds(setting(sections["global"], "hard-stop-after")[0])
    grace = compose["services"]["haproxy"]["stop_grace_period"]
    assert hard_stop < seconds(grace)


@pytest.mark.parametrize(
    ("drop", "values"),
    [
        (("PRESENCE_TWILIO_AUTH_TOKEN",), {}),
        ((), {"PRESENCE_TWILIO_AUTH_TOKEN": ""}),
        (("PRESENCE_API_TOKEN",), {}),
    ],
    ids=["no-twilio-token", "empty-twilio-token", "no-api-token"],
)
def test_compose_config_refuses_an_env_file_without_a_secret(
    tmp_path: Path, drop: tuple[str, ...], values: dict[str, str]
) -> None:
    secrets = {name: value for name, value in SECRETS.items() if name not in drop}
    result = compose_config(env_file(tmp_path, secrets | values, drop))
    assert result.returncode != 0
    assert (drop or tuple(values))[0] in result.stderr


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    documented = set()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            name = line.partition("=")[0]
            assert lines[number - 1].startswith("#"), f"{name} has no comment above it"
            documented.add(name)
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    assert used == documented
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


# -- the Dockerfile --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile line, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command (exec form), as argv."""
    [arguments] = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(\[.*\])", arguments)
    assert match, f"HEALTHCHECK must be in exec form: {arguments}"
    command: list[str] = json.loads(match[1])
    return command


def test_dockerfile_builds_from_the_project_metadata_and_runs_unprivileged() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert set(bases) == {"python:3.11-slim"}
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    # Installed from the lock alone: the build backend and every dependency by hash, the
    # project's own wheel without resolving anything (tests/test_docker.py checks the image).
    assert "pip install --require-hashes -r requirements/build.txt" in runs
    assert "pip download --require-hashes --no-deps --dest /wheels -r requirements/service.txt" in (
        runs
    )
    assert "pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ." in runs
    assert "--no-index --find-links=/tmp/wheels --require-hashes -r /tmp/service.txt" in runs
    assert "pip install --no-index --no-deps /tmp/wheels/presence-*.whl" in runs
    [user] = [args for keyword, args in instructions if keyword == "USER"]
    assert user not in ("root", "0")
    assert ("EXPOSE", "8080") in instructions
    assert any(k == "ENV" and "PRESENCE_HOST=0.0.0.0" in a.split() for k, a in instructions)
    assert json.loads(instructions[-1][1]) == ["presence", "serve"]
    assert instructions[-1][0] == "CMD"
    assert healthcheck_command()[:2] == ["python", "-c"]
    assert "curl" not in " ".join(healthcheck_command())


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (its .dockerignore rules:
    the last matching pattern wins; a pattern matching a parent directory matches)."""

    def regex(pattern: str) -> str:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, part if part.startswith("[") else re.escape(part)
            )
        return out

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        expression = regex(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(expression, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_the_package_to_the_build() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept_out = [
        ".env",
        ".env.production",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_compose.py",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/cache.db",
        "presence/__pycache__/cli.cpython-311.pyc",
        "presence/.ruff_cache/CACHEDIR.TAG",
    ]
    assert [path for path in kept_out if not dockerignored(path, patterns)] == []
    package = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "presence").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    sent = ["pyproject.toml", "README.md", "requirements/build.txt", "requirements/service.txt"]
    sent += package
    assert dockerignored("requirements/dev.txt", patterns)
    assert "presence/store/lua/apply_event.lua" in sent
    assert [path for path in sent if dockerignored(path, patterns)] == []


# -- the compose service, run as a process ---------------------------------------------------


@dataclass
class ComposeService:
    """The compose presence service's command and environment, run as a local process."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['PRESENCE_PORT']}"

    @property
    def webhook_url(self) -> str:
        """The URL Twilio signs: the configured public one, else the one requested."""
        return self.env["PRESENCE_WEBHOOK_URL"] or f"{self.url}/webhooks/sync"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        """Whether GET /readyz answers 200; fails the test if the process has exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"exited with {self.process.returncode}:\n{self.output()}")
        try:
            async with session.get(f"{self.url}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False


@pytest.fixture
def compose_service(
    compose: dict[str, Any], private_redis: RedisServer, tmp_path: Path
) -> Iterator[ComposeService]:
    """Starts the presence service as docker-compose.yml runs it. Only what cannot be the
    same outside Docker changes: Redis is the test's, and the port a free one of 127.0.0.1
    (no port mapping applies)."""
    service = compose["services"]["presence"]
    command = as_list(service["command"])
    assert command[0] == "presence"
    script = Path(sys.executable).with_name("presence")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "presence"]
    env = {name: value for name, value in os.environ.items() if not name.startswith("PRESENCE_")}
    env |= environment_of(service)
    env |= {
        "PRESENCE_REDIS_URL": private_redis.url,
        "PRESENCE_HOST": "127.0.0.1",
        "PRESENCE_PORT": str(free_port()),
    }
    log = tmp_path / "presence.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*program, *command[1:]],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield ComposeService(process, env, log)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


async def test_the_compose_service_takes_signed_webhooks_and_answers_queries(
    compose_service: ComposeService,
) -> None:
    service = compose_service
    async with aiohttp.ClientSession() as session:
        await wait_until(lambda: service.ready(session), 20.0, "GET /readyz to answer 200")

        params = reachability("alice", "EP-compose-1", 1, True, connected=True)
        forged = signed_form(service.webhook_url, params, "0" * 32)
        async with session.post(f"{service.url}/webhooks/sync", **forged) as response:
            assert response.status == 403, await response.text()
        request = signed_form(service.webhook_url, params, TWILIO_TOKEN)
        async with session.post(f"{service.url}/webhooks/sync", **request) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"status": "applied"}

        identity = f"{service.url}/v1/services/{SERVICE_SID}/identities/alice"
        bearer = {"Authorization": f"Bearer {API_TOKEN}"}
        async with session.get(identity, headers=bearer) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        assert body["online"] is True
        assert body["endpoints"] == ["EP-compose-1"]
        async with session.get(identity) as response:
            assert response.status == 401
        async with session.get(identity, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401


def run_healthcheck(command: list[str], port: int) -> int:
    """Runs a HEALTHCHECK command (``python`` being this interpreter) for this port."""
    assert command[0] == "python"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PRESENCE_")}
    result = subprocess.run(
        [sys.executable, *command[1:]],
        env=env | {"PRESENCE_PORT": str(port)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=15,
        check=False,
    )
    return result.returncode


async def test_the_dockerfile_healthcheck_follows_readyz(
    compose: dict[str, Any], compose_service: ComposeService, private_redis: RedisServer
) -> None:
    command = healthcheck_command()
    # The compose file's health check is the same command.
    assert compose["services"]["presence"]["healthcheck"]["test"] == ["CMD", *command]
    port = int(compose_service.env["PRESENCE_PORT"])
    async with aiohttp.ClientSession() as session:
        await wait_until(lambda: compose_service.ready(session), 20.0, "GET /readyz to answer 200")
        assert run_healthcheck(command, port) == 0
        assert run_healthcheck(command, free_port()) != 0  # nothing listens there

        private_redis.stop()  # /readyz answers 503 now: unhealthy

        async def unready() -> bool:
            async with session.get(f"{compose_service.url}/readyz") as response:
                return response.status == 503

        await wait_until(unready, 10.0, "GET /readyz to answer 503")
    assert run_healthcheck(command, port) != 0
