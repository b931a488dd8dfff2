"""Times as the service writes them, and an identity's presence as it is read."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from presence.store.reads import presence_of
from presence.timestamps import iso_from_ms
from presence.web.replies import identity_reply


def test_a_time_is_written_as_iso_8601_utc_to_the_millisecond() -> None:
    rng = random.Random(11)
    samples = [0, 1, 999, 1000, 1_795_000_000_123, 4_107_542_399_999]
    samples += [rng.randrange(0, 4_102_444_800_000) for _ in range(2000)]
    for ms in samples:
        # From integers: fromtimestamp of a float can round the last millisecond.
        whole = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
        expected = whole.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso_from_ms(ms) == expected


def test_a_read_row_gives_the_reply_with_endpoints_in_order() -> None:
    sid = "IS" + "0" * 32
    row = [1, 0, 17, 42, 1_795_000_000_123, "e2", "e10", "e1"]
    presence = presence_of(sid, "alice", row)
    assert presence.endpoints == ("e1", "e10", "e2")
    assert identity_reply(presence) == {
        "service_sid": sid,
        "identity": "alice",
        "online": True,
        "pending_offline": False,
        "endpoints": ["e1", "e10", "e2"],
        "last_event_id": 42,
        "changed_at": "2026-11-18T11:06:40.123Z",
        "version": 17,
    }
    never = presence_of(sid, "bob", [0, 0, 0, "", ""])
    assert identity_reply(never)["changed_at"] is None
    assert never.last_event_id is None
    assert never.endpoints == ()
