"""Documents, lists and maps: what their Sync events carry (revisions, items, JSON data)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

_STATUSES = ("available", "busy", "away", "in a meeting")
_WORDS = ("milk", "bread", "call bob", "review PR", "book flights", "water plants")


@dataclass
class Collection:
    """A document, list or map of one identity."""

    kind: str
    sid: str
    unique_name: str
    revision: int = 0
    items: dict[str, int] = field(default_factory=dict)
    """Item index or key: its revision."""
    next_item: int = 0
    next_event_id: int = 1


def collection_params(rng: random.Random, current: Collection, event_type: str) -> dict[str, str]:
    """The parameters of one event about ``current`` (its own, besides the common ones),
    updating its revisions and items to match."""
    title = current.kind.capitalize()
    if not event_type.endswith("_created"):
        current.revision += 1
    params = {
        f"{title}Sid": current.sid,
        f"{title}Revision": str(current.revision),
        f"{title}UniqueName": current.unique_name,
    }
    if current.kind == "document":
        if event_type != "document_removed":
            data = {"status": rng.choice(_STATUSES), "revision": current.revision}
            params["DocumentData"] = _json(data)
        return params
    if "_item_" not in event_type:
        return params
    if event_type.endswith("_added"):
        item = str(current.next_item) if current.kind == "list" else f"key-{current.next_item}"
        current.next_item += 1
        current.items[item] = 0
    else:
        item = rng.choice(sorted(current.items))
    params["ItemIndex" if current.kind == "list" else "ItemKey"] = item
    params["EventId"] = str(current.next_event_id)
    current.next_event_id += 1
    if event_type.endswith("_removed"):
        del current.items[item]
        return params
    if event_type.endswith("_updated"):
        current.items[item] += 1
    params["ItemRevision"] = str(current.items[item])
    item_data: dict[str, Any] = (
        {"text": rng.choice(_WORDS), "done": rng.random() < 0.3}
        if current.kind == "list"
        else {"score": rng.randrange(1000), "by": rng.choice(_WORDS)}
    )
    params["ItemData"] = _json(item_data)
    return params


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
