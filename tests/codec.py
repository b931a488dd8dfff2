"""codec.lua driven directly, through EVAL on a real Redis or the embedded one: a state
written in the layout of this release, or in the layout before it (by the codec of the
previous release, vendored in bench/previous/), and a value read back as the rules see it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from presence.store.scripts import source

PREVIOUS_CODEC = Path(__file__).parent.parent / "bench" / "previous" / "codec.lua"
"""codec.lua as the previous release wrote values (commit 05b5c3f): fixed widths, no flag 64."""

Mark = tuple[str, int, int]
"""An endpoint's mark: the endpoint, its EventId, when (ms)."""


@dataclass(frozen=True)
class State:
    """The stored fields of rules.py's Identity, as codec.lua keeps them (None: absent)."""

    version: int = 0
    published_online: bool = False
    top_online: bool = False
    top: int | None = None
    top_at: int = 0
    changed_at: int | None = None
    deadline: int | None = None
    deadline_event: int | None = None
    off_floor: int | None = None
    off_endpoint: str | None = None
    forgotten_floor: int | None = None
    connected: list[Mark] = field(default_factory=list)
    tombstones: list[Mark] = field(default_factory=list)

    def canonical(self) -> State:
        """Marks in one order (a value keeps them in no particular one)."""
        return State(
            **{
                **asdict(self),
                "connected": sorted(self.connected),
                "tombstones": sorted(self.tombstones),
            }
        )


_BUILD = """
local j = cjson.decode(ARGV[1])
local s = { connected = {}, tombstones = {}, count = { connected = 0, tombstones = 0 },
  version = j.version, published_online = j.published_online, top_online = j.top_online,
  compacted = false, top = j.top, top_at = j.top_at, changed_at = j.changed_at,
  deadline = j.deadline, off_floor = j.off_floor, forgotten_floor = j.forgotten_floor }
if j.deadline_event then
  s.deadline_event = string.format('%d', j.deadline_event)
end
if j.off_endpoint then
  s.off_endpoint = key(j.off_endpoint)
end
for _, kind in ipairs({ 'connected', 'tombstones' }) do
  for _, m in ipairs(j[kind]) do
    s[kind][key(m[1])] = { event_id = m[2], at = m[3] }
    s.count[kind] = s.count[kind] + 1
  end
end
return encode(s, tonumber(ARGV[2]))
"""

CURRENT = "\n".join(
    [source("codec"), "bind_packing()", "local function key(ep) return endpoint_bytes(ep) end"]
)
"""codec.lua as this release runs it."""

WRITE = CURRENT + _BUILD
"""A state's value as this release writes it."""

WRITE_BEFORE = "\n".join(
    [PREVIOUS_CODEC.read_text(encoding="utf-8"), "local function key(ep) return ep end", _BUILD]
)
"""A state's value as the release before wrote it."""

READ = (
    CURRENT
    + """
local value = ARGV[1]
local s = decode(value)
local function text(v)
  if v == nil then
    return ''
  elseif type(v) == 'boolean' then
    return v and '1' or '0'
  elseif type(v) == 'number' then
    return fmt(v)
  end
  return v
end
local marks = {}
for _, kind in ipairs({ 'connected', 'tombstones' }) do
  local flat = {}
  for ep, m in pairs(s[kind]) do
    flat[#flat + 1] = endpoint_text(ep)
    flat[#flat + 1] = fmt(m.event_id)
    flat[#flat + 1] = fmt(m.at)
  end
  marks[#marks + 1] = flat
end
local online, pending, version, top, changed_at, endpoints = answer_of(value)
return {
  text(s.version), text(s.published_online), text(s.top_online), text(s.top), text(s.top_at),
  text(s.changed_at), text(s.deadline), text(s.deadline_event), text(s.off_floor),
  text(s.off_endpoint and endpoint_text(s.off_endpoint)), text(s.forgotten_floor),
  marks[1], marks[2], fmt(due_of(value)), fmt(version_of(value)),
  { text(online), text(pending), fmt(version), text(top or nil), text(changed_at or nil),
    endpoints },
}
"""
)
"""A value read back: the state, when it is due, and what a query answers of it."""


def _json(state: State) -> str:
    fields = {k: v for k, v in asdict(state).items() if v is not None}
    return json.dumps(fields, ensure_ascii=False)


def write(client: Redis, state: State, due: int, *, before: bool = False) -> bytes:
    """The value of ``state`` (due at ``due``, 0: never), in this release's layout or, with
    ``before``, in the layout of the release before it."""
    value: bytes = client.eval(WRITE_BEFORE if before else WRITE, 0, _json(state), str(due))
    return value


@dataclass(frozen=True)
class Read:
    """A value as this release reads it."""

    state: State
    due: int
    version: int
    answer: tuple[bool, bool, int, int | None, int | None, list[str]]


def read(client: Redis, value: bytes) -> Read:
    reply: list[Any] = client.eval(READ, 0, value)
    (version, online, top_online, top, top_at, changed_at, deadline, deadline_event) = reply[:8]
    off_floor, off_endpoint, forgotten_floor, connected, tombstones = reply[8:13]
    due, version_of, answer = reply[13:]

    def text(v: bytes) -> str:
        return v.decode()

    def number(v: bytes) -> int | None:
        return int(v) if v else None

    def marks(flat: list[bytes]) -> list[Mark]:
        return [(text(flat[i]), int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    state = State(
        version=int(version),
        published_online=online == b"1",
        top_online=top_online == b"1",
        top=number(top),
        top_at=int(top_at),
        changed_at=number(changed_at),
        deadline=number(deadline),
        deadline_event=number(deadline_event),
        off_floor=number(off_floor),
        off_endpoint=text(off_endpoint) if off_endpoint else None,
        forgotten_floor=number(forgotten_floor),
        connected=marks(connected),
        tombstones=marks(tombstones),
    )
    on, pending, answered_version, answered_top, answered_changed, endpoints = answer
    return Read(
        state.canonical(),
        int(due),
        int(version_of),
        (
            on == b"1",
            pending == b"1",
            int(answered_version),
            number(answered_top),
            number(answered_changed),
            sorted(text(e) for e in endpoints),
        ),
    )


def expected_answer(state: State) -> tuple[bool, bool, int, int | None, int | None, list[str]]:
    """What a query answers of ``state`` (read.lua)."""
    online = state.published_online
    return (
        online,
        online and state.deadline is not None,
        state.version,
        state.top,
        state.changed_at,
        sorted(ep for ep, _, _ in state.connected),
    )
