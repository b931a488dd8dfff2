"""Standard Webhooks (https://www.standardwebhooks.com): a request carries ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``: ``v1,`` and the base64 of HMAC-SHA256 over
``{id}.{timestamp}.{body}``, keyed with the secret's base64-decoded bytes; during a rotation,
one signature per secret, space-separated. A receiver verifies with the ``standardwebhooks``
library of its language."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
"""192 random bits, as the libraries' own secrets carry."""


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and the base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of one request under one secret."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secrets_: list[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed by every secret in force."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, webhook_id, timestamp, body) for s in secrets_),
    }
