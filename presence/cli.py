"""The ``presence`` command: ``serve``, ``watch``, ``simulate``, ``migrate`` and
``subscriptions``. It only parses, then calls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence

from presence.keys import Keyspace
from presence.logs import configure_logging
from presence.model import StoreUnavailable
from presence.push import command as subscriptions_command
from presence.serve import StartupError, migrate_store, run, serve
from presence.settings import Settings, SettingsError, check_serve, env_name, load_settings
from presence.simulate import command as simulate_command
from presence.store.connections import settings_client
from presence.store.migrate import FormatError
from presence.watch import WatchRefused, watch, watch_url
from presence.workers import Supervisor, is_worker

_WATCH_SETTINGS = (
    "redis_url",
    "redis_cluster",
    "redis_sentinels",
    "redis_sentinel_master",
    "redis_sentinel_password",
    "key_prefix",
    "log_level",
)
_MIGRATE_SETTINGS = (*_WATCH_SETTINGS, "endpoint_ttl_seconds")


def _add_setting_flags(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    for field in fields:
        info = Settings.model_fields[field]
        flag = "--" + field.replace("_", "-")
        help_text = f"overrides {env_name(field)} (default: {info.default!r})"
        if info.annotation is bool:
            parser.add_argument(
                flag, dest=field, nargs="?", const="true", default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=help_text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence", description="Who is online on Twilio Sync, right now, and reliably."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the service")
    _add_setting_flags(serve_parser, list(Settings.model_fields))
    watch_parser = commands.add_parser("watch", help="print presence changes as JSON lines")
    _add_setting_flags(watch_parser, _WATCH_SETTINGS)
    watch_parser.add_argument("--service", help="only changes of this ServiceSid")
    watch_parser.add_argument(
        "--identity", action="append", help="only changes of this identity (repeatable)"
    )
    watch_parser.add_argument(
        "--url",
        help="follow a running service's change feed at this base URL (http://host:port) "
        "instead of Redis pub/sub; needs --service; the token is $PRESENCE_API_TOKEN",
    )
    watch_parser.add_argument("--since", help="with --url: resume after this cursor")
    simulate_parser = commands.add_parser(
        "simulate", help="send realistic, signed Sync webhook traffic to a deployment"
    )
    simulate_command.add_arguments(simulate_parser)
    migrate_parser = commands.add_parser(
        "migrate",
        help="move a Redis written by an older release into this storage format (serve does "
        "it on start; this is for after stopping old replicas)",
    )
    _add_setting_flags(migrate_parser, _MIGRATE_SETTINGS)
    subscriptions_command.add_arguments(
        commands.add_parser(
            "subscriptions",
            help="manage a running service's push subscriptions (token: $PRESENCE_ADMIN_TOKEN)",
        )
    )
    return parser


def _fail(message: str) -> None:
    print(f"presence: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    if command == "simulate":
        try:
            chosen = simulate_command.options(args)
        except simulate_command.UsageError as error:
            _fail(str(error))
        raise SystemExit(simulate_command.run(chosen))
    if command == "subscriptions":
        raise SystemExit(subscriptions_command.run(args))
    service, url, since = args.pop("service", None), args.pop("url", None), args.pop("since", None)
    names = args.pop("identity", None)
    identities = frozenset(names) if names else None
    if command == "watch" and url is not None:
        _watch_url(url, service, identities, since)
        return
    try:
        settings = load_settings(**args)
        if command == "serve":
            check_serve(settings)
    except SettingsError as error:
        _fail(str(error))
    configure_logging(settings.log_level, settings.log_format)
    if command == "migrate":
        _migrate(settings)
        return
    with contextlib.suppress(KeyboardInterrupt):
        if command == "serve":
            try:
                if settings.workers > 1:
                    raise SystemExit(Supervisor(settings).run())
                run(serve(settings, reuse_port=is_worker()))
            except StartupError as error:
                _fail(str(error))
        else:
            if settings.embedded:
                _fail(
                    f"watch needs a Redis to watch: set {env_name('redis_url')} (or "
                    f"{env_name('redis_sentinels')}), or follow a running service with --url"
                )
            # Through Sentinels, each (re)subscription asks them for the master anew.
            sentinels = bool(settings.redis_sentinels)
            asyncio.run(
                watch(
                    settings.redis_url or "",
                    Keyspace(settings.key_prefix),
                    sys.stdout,
                    service=service,
                    identities=identities,
                    cluster=settings.redis_cluster,
                    connect=(lambda: settings_client(settings)) if sentinels else None,
                )
            )


def _migrate(settings: Settings) -> None:
    if settings.embedded:
        _fail(
            f"migrate needs a Redis: set {env_name('redis_url')} (or {env_name('redis_sentinels')})"
        )
    try:
        migration = run(migrate_store(settings))
    except (FormatError, StoreUnavailable) as error:
        _fail(f"migration failed: {error}")
    print(json.dumps(dataclasses.asdict(migration)))


def _watch_url(
    url: str, service: str | None, identities: frozenset[str] | None, since: str | None
) -> None:
    if service is None:
        _fail("watch --url needs --service: the change feed is per ServiceSid")
    assert service is not None
    try:
        settings = load_settings()
    except SettingsError as error:
        _fail(str(error))
    configure_logging(settings.log_level, settings.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(
                watch_url(
                    url,
                    service,
                    sys.stdout,
                    identities=identities,
                    since=since,
                    token=settings.api_token,
                )
            )
        except WatchRefused as error:
            _fail(f"the service refused: {error}")
