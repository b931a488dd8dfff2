"""Logging: one line per request and per presence change, plain text or JSON.

Fields other than the message travel in ``extra`` and become JSON members (or ``key=value``
pairs in text), so a log pipeline can filter on them. Nothing secret is ever passed in:
requests are logged by method, path, status and timing, never headers or bodies, so neither
a token nor a signature can reach a log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from presence.store.base import Change

ACCESS_LOGGER = "presence.access"
CHANGES_LOGGER = "presence.changes"

WEBHOOK_OUTCOME = web.RequestKey("webhook_outcome", str)
"""Set by the webhook receiver: what became of the webhook, for its access-log line."""

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        pairs = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in _fields(record).items())
        return f"{text} {pairs}" if pairs else text


def configure_logging(level: str, log_format: str) -> None:
    """Sends every ``presence`` log line to standard error in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_changes(changes: Iterable[Change]) -> None:
    """One line per presence change, whether a webhook or the sweeper caused it."""
    log = logging.getLogger(CHANGES_LOGGER)
    for change in changes:
        log.info(
            "presence change: %s",
            change,
            extra={
                "service_sid": change.service_sid,
                "identity": change.identity,
                "online": change.online,
                "reason": change.reason,
                "event_id": change.event_id,
                "version": change.version,
            },
        )


class AccessLogger(AbstractAccessLogger):
    """One line per request. Only the path is logged: never a header, the query or the body.
    The path stays percent-encoded, so no request can write a line break into the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.rel_url.raw_path
        fields: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "remote": request.remote,
            "bytes": response.body_length,
        }
        outcome = request.get(WEBHOOK_OUTCOME)
        if outcome is not None:
            fields["outcome"] = outcome
        self.logger.info(
            "%s %s %s %.1fms", request.method, path, response.status, time * 1000,
            extra=fields,
        )  # fmt: skip
