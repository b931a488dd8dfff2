"""Logging: one line per request and per presence change, plain text or JSON.

Fields other than the message travel in ``extra`` and become JSON members (or ``key=value``
pairs in text), so a log pipeline can filter on them. Nothing secret is ever passed in:
requests are logged by method, path, status and timing, never headers or bodies, so neither
a token nor a signature can reach a log.

The access log is on the hot path of every request, so it skips the logging machinery: its
line is formatted directly, exactly as the formatters below would write it, and the lines of
one event-loop iteration are written to standard error together, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from presence.model import Change

_now = time.time  # AccessLogger.log's argument named time hides the module

ACCESS_LOGGER = "presence.access"
CHANGES_LOGGER = "presence.changes"

WEBHOOK_OUTCOME = web.RequestKey("webhook_outcome", str)
"""Set by the webhook receiver: what became of the webhook, for its access-log line."""

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _json_line(
    created: float, level: str, logger: str, message: str, fields: dict[str, Any]
) -> str:
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "pid": os.getpid(),
        "message": message,
    }
    line.update(fields)
    return orjson.dumps(line, default=str).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return _json_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), fields
        )


def _pairs(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        pairs = _pairs(_fields(record))
        return f"{text} {pairs}" if pairs else text


class _Lines:
    """Lines for standard error, made and written together at the end of the event-loop
    iteration (or at once, outside a running loop).

    A line is kept as its maker and values, and made only then: the lines of one iteration
    are made one after the other, while the maker's code is in the CPU's caches. Made in
    the handler of each request, between aiohttp's code and the other requests', a line
    cost two to three times as much (docs/benchmarks.md, a webhook's time in place)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: list[tuple[Callable[..., str], tuple[Any, ...]]] = []

    def add(self, line: str) -> None:
        self.later(str, line)

    def later(self, make: Callable[..., str], *values: Any) -> None:
        """A line that ``make(*values)`` makes when the lines are written."""
        if not self.lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.lines.append((make, values))
                self.flush()
                return
        self.lines.append((make, values))

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if lines:
            self.stream.write("\n".join([make(*values) for make, values in lines]) + "\n")
            self.stream.flush()


_output = _Lines(sys.stderr)
_json = False


def configure_logging(level: str, log_format: str) -> None:
    """Sends every ``presence`` log line to standard error in the chosen format."""
    global _output, _json
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _output, _json = _Lines(sys.stderr), log_format == "json"


def log_changes(changes: Iterable[Change]) -> None:
    """One line per presence change, whether a webhook or the sweeper caused it (formatted
    directly, as the access log is: there is one for about every other webhook)."""
    if not _changes_log.isEnabledFor(logging.INFO):
        return
    for change in changes:
        # Tested one by one, not through _plain's generator: this is on nearly every webhook.
        if (
            not _json
            and _plain_text(change.identity)
            and _plain_text(change.service_sid)
            and _plain_text(change.reason)
        ):
            _output.later(_change_line, _now(), change)
            continue
        fields = {
            "service_sid": change.service_sid,
            "identity": change.identity,
            "online": change.online,
            "reason": change.reason,
            "event_id": change.event_id,
            "version": change.version,
        }
        _emit(
            CHANGES_LOGGER,
            f"presence change: {change}",
            fields,
            _ascii_pairs if change.identity.isascii() else _pairs,
        )


_changes_log = logging.getLogger(CHANGES_LOGGER)


def _change_line(now: float, change: Change) -> str:
    # The line nearly every change writes, in one piece (as the access log's): each value as
    # json.dumps writes it.
    event_id = "null" if change.event_id is None else str(change.event_id)
    return (
        f"{_clock.asctime(now)} INFO {CHANGES_LOGGER}: presence change: {change} "
        f'service_sid="{change.service_sid}" identity="{change.identity}" '
        f"online={'true' if change.online else 'false'} "
        f'reason="{change.reason}" event_id={event_id} version={change.version}'
    )


def _ascii_pairs(fields: dict[str, Any]) -> str:
    # ASCII values (a percent-encoded path, an address, codes, most identities): orjson
    # writes them exactly as json.dumps does, faster.
    return " ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in fields.items())


def _emit(
    logger: str, message: str, fields: dict[str, Any], pairs: Callable[[dict[str, Any]], str]
) -> None:
    """An INFO line of ``logger``, as the configured formatter would write it."""
    now = time.time()
    if _json:
        _output.add(_json_line(now, "info", logger, message, fields))
    else:
        _output.add(f"{_clock.asctime(now)} INFO {logger}: {message} {pairs(fields)}")


class _Clock:
    """``logging``'s asctime (local time, then milliseconds), its seconds made once each."""

    second = -1
    text = ""
    millis = -1
    stamp = ""

    def asctime(self, now: float) -> str:
        second = int(now)
        millis = int((now - second) * 1000)
        if millis == self.millis and second == self.second:
            # The lines of one event-loop iteration mostly share their millisecond.
            return self.stamp
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self.millis, self.stamp = millis, f"{self.text},{millis:03d}"
        return self.stamp


_clock = _Clock()


def _plain(*texts: str | None) -> bool:
    """Whether every text is written by json.dumps as itself in quotes."""
    return all(text is None or _plain_text(text) for text in texts)


def _plain_text(text: str) -> bool:
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


_ACCESS_PARTS_KEPT = 256
_access_parts: dict[tuple[str, str, int, str | None, str], tuple[str, str, str, str]] = {}


def _webhook_parts(
    method: str, path: str, status: int, remote: str | None, outcome: str
) -> tuple[str, str, str, str] | None:
    """The fixed parts of a webhook's access-log line, as json.dumps writes plain texts; None
    when a text is not plain. Kept: they are few (an outcome per sender) and on every webhook
    (a query's path names an identity, so its parts would each be new)."""
    key = (method, path, status, remote, outcome)
    parts = _access_parts.get(key)
    if parts is None and _plain(method, path, remote, outcome):
        parts = (
            f"{method} {path} {status} ",
            f'method="{method}" path="{path}" status={status} ',
            f"remote={'null' if remote is None else chr(34) + remote + chr(34)} ",
            f' outcome="{outcome}"',
        )
        if len(_access_parts) >= _ACCESS_PARTS_KEPT:
            _access_parts.clear()
        _access_parts[key] = parts
    return parts


def _query_line(
    now: float,
    method: str,
    path: str,
    status: int,
    seconds: float,
    remote: str | None,
    length: int,
) -> str:
    # A query's line, in one piece: each text is written as json.dumps writes a plain one
    # (printable ASCII without quote or backslash).
    ms = seconds * 1000
    return (
        f"{_clock.asctime(now)} INFO {ACCESS_LOGGER}: {method} {path} {status} {ms:.1f}ms "
        f'method="{method}" path="{path}" status={status} duration_ms={round(ms, 3)!r} '
        f"remote={'null' if remote is None else chr(34) + remote + chr(34)} bytes={length}"
    )


def _webhook_line(now: float, parts: tuple[str, str, str, str], seconds: float, length: int) -> str:
    head, middle, remote_part, end = parts
    ms = seconds * 1000
    return (
        f"{_clock.asctime(now)} INFO {ACCESS_LOGGER}: {head}{ms:.1f}ms "
        f"{middle}duration_ms={round(ms, 3)!r} {remote_part}bytes={length}{end}"
    )


class AccessLogger(AbstractAccessLogger):
    """One line per request. Only the path is logged: never a header, the query or the body.
    The path stays percent-encoded, so no request can write a line break into the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path = request.rel_url.raw_path
        status = response.status
        method, remote, outcome = request.method, request.remote, request.get(WEBHOOK_OUTCOME)
        if not _json:
            if outcome is None:
                if _plain(method, path, remote):
                    _output.later(
                        _query_line, _now(), method, path, status, time, remote,
                        response.body_length,
                    )  # fmt: skip
                    return
            elif (parts := _webhook_parts(method, path, status, remote, outcome)) is not None:
                # A webhook's line, from the parts kept for its sender and outcome.
                _output.later(_webhook_line, _now(), parts, time, response.body_length)
                return
        message = f"{method} {path} {status} {time * 1000:.1f}ms"
        fields: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": round(time * 1000, 3),
            "remote": remote,
            "bytes": response.body_length,
        }
        if outcome is not None:
            fields["outcome"] = outcome
        _emit(ACCESS_LOGGER, message, fields, _ascii_pairs)
