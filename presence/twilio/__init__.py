"""What Twilio defines, in one place: the headers and content types of a Sync webhook, the
shape of its SIDs, how it signs a webhook (``signing``) and sample events as it sends them
(``samples``). The receiver, the simulator, the OpenAPI document, the tests and the benchmarks
all take these facts from here."""

from __future__ import annotations

import re

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
"""``algorithm=HMAC_SHA256`` when the webhook is signed with SHA-256 instead of SHA-1."""
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
"""The same on every retry of one webhook."""
USER_AGENT = "TwilioProxy/1.1"

FORM = "application/x-www-form-urlencoded"
"""How Twilio sends a webhook's parameters."""
JSON = "application/json"
"""Also accepted: the same parameters as a JSON object, signed through ``bodySHA256``."""

WEBHOOK_TIMEOUT_SECONDS = 15.0
"""Twilio gives up on a webhook that has not been answered within this time, and retries it."""

SID_LENGTH = 34
SID_PREFIXES = {
    "AccountSid": "AC",
    "ServiceSid": "IS",
    "DocumentSid": "ET",
    "ListSid": "ES",
    "MapSid": "MP",
}
"""Every SID parameter of a Sync webhook and the two letters its values start with."""

REACHABILITY_EVENT_TYPES = ("endpoint_connected", "endpoint_disconnected")

SYSTEM_IDENTITY = "system"
"""The Identity of REST-initiated events: never tracked as presence."""

_SID_PATTERNS = {
    prefix: re.compile(rf"{prefix}[0-9a-fA-F]{{32}}") for prefix in SID_PREFIXES.values()
}


def sid_pattern(prefix: str) -> str:
    """The regular expression of a SID starting with ``prefix`` (anchored, for JSON Schema)."""
    return f"^{prefix}[0-9a-fA-F]{{32}}$"


def is_sid(value: object, prefix: str) -> bool:
    """True for a SID of this kind: ``prefix`` and 32 hex digits."""
    return isinstance(value, str) and _SID_PATTERNS[prefix].fullmatch(value) is not None


def sid_problem(prefix: str) -> str:
    """What a value that is not a SID of this kind is told."""
    return f"must be {prefix} followed by 32 hex digits"
