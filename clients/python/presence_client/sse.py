"""The Server-Sent Events wire format, parsed as it arrives (the HTML standard's event stream
interpretation: lines end with CR LF, LF or CR; a blank line ends an event; a line that
starts with a colon is a comment)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its type, its data lines joined by LF (None when it had no ``data:``: an
    event with an ``id:`` alone moves the cursor), and its ``id:``."""

    event: str
    data: str | None
    id: str | None


class EventParser:
    """Turns text, in chunks cut anywhere, into events."""

    def __init__(self) -> None:
        self._buffer = ""
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, text: str) -> list[ServerSentEvent]:
        """The events that ``text`` completes."""
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buffer = self._buffer + text
        # A CR at the very end may be the first half of a CR LF: kept until what follows.
        end = len(buffer) - 1 if buffer.endswith("\r") else len(buffer)
        lines = _LINE_END.split(buffer[:end])
        self._buffer = lines.pop() + buffer[end:]
        events: list[ServerSentEvent] = []
        for line in lines:
            if line:
                self._field(line)
            elif self._data or self._id is not None:
                data = "\n".join(self._data) if self._data else None
                events.append(ServerSentEvent(self._event or "message", data, self._id))
                self._event, self._data, self._id = "", [], None
            else:
                self._event = ""
        return events

    def _field(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
