"""A reconnect storm: what it sends, and when (pure, deterministic for a seed, no I/O).

Every identity is first brought online (one endpoint each). Then the storm: each identity's
endpoint disconnects at a uniform random moment within the wave and the identity comes back
on a new endpoint a reconnect delay later, as when a gateway restarts or an app version
reconnects everyone. Every reconnect comes well within the service's offline grace, so a
service that keeps up announces none of it: an offline announced during the storm is a
flicker. ``storm_run`` sends it and counts the flickers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from presence.simulate.traffic import derived_sid
from presence.twilio import IDEMPOTENCY_HEADER
from presence.twilio.samples import reachability

DEFAULT_STORM_IDENTITIES = 20_000
DEFAULT_WAVE_SECONDS = 5.0
DEFAULT_RECONNECT_DELAY = (0.2, 3.0)
DEFAULT_GRACE_SECONDS = 10.0
"""The service's own default ``PRESENCE_OFFLINE_GRACE_SECONDS``."""


@dataclass(frozen=True)
class StormConfig:
    """What to send: ``identities`` disconnecting within ``wave`` seconds, each back after a
    delay drawn from ``reconnect_min`` to ``reconnect_max`` seconds."""

    identities: int = DEFAULT_STORM_IDENTITIES
    wave: float = DEFAULT_WAVE_SECONDS
    reconnect_min: float = DEFAULT_RECONNECT_DELAY[0]
    reconnect_max: float = DEFAULT_RECONNECT_DELAY[1]
    grace: float = DEFAULT_GRACE_SECONDS
    """The service's offline grace: how long to keep following its change feed after the
    last reconnect was answered, for an offline announced late."""
    seed: int = 0
    service_sid: str | None = None
    """None: one derived from the seed, so that each seed storms a fresh service."""
    account_sid: str | None = None

    @property
    def service(self) -> str:
        return self.service_sid or derived_sid("IS", self.seed, "storm")

    @property
    def account(self) -> str:
        return self.account_sid or derived_sid("AC", self.seed, "account")

    def names(self) -> list[str]:
        """The identities, ``user-00000`` and on."""
        width = len(str(self.identities - 1))
        return [f"user-{i:0{width}d}" for i in range(self.identities)]


@dataclass(frozen=True, slots=True)
class StormWebhook:
    """One webhook of the storm and when to send it."""

    at: float
    """Seconds after the start of its phase."""
    identity: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def event_type(self) -> str:
        return self.params["EventType"]


@dataclass(frozen=True)
class StormPlan:
    """The two phases: ``connects`` (all due at once), then ``storm`` in time order, where each
    reconnect is the webhook right after its identity's disconnect in ``reconnect_of``."""

    connects: list[StormWebhook]
    storm: list[StormWebhook]
    reconnect_of: dict[int, int]
    """Index in ``storm`` of a disconnect: index of the same identity's reconnect."""


def plan_storm(config: StormConfig) -> StormPlan:
    """The webhooks of a storm: per identity a connect (EventId e), a disconnect of the same
    endpoint (e+1, ``IsIdentityOnline=false``) and a connect of a new endpoint (e+2)."""
    rng = random.Random(config.seed)
    connects: list[StormWebhook] = []
    storm: list[tuple[StormWebhook, StormWebhook]] = []
    for name in config.names():
        first, second = (f"{rng.getrandbits(96):024x}" for _ in range(2))
        event_id = rng.randrange(1, 1_000_000)
        leaves = rng.uniform(0.0, config.wave)
        returns = leaves + rng.uniform(config.reconnect_min, config.reconnect_max)
        connects.append(_webhook(config, rng, 0.0, name, first, event_id, connected=True))
        storm.append(
            (
                _webhook(config, rng, leaves, name, first, event_id + 1, connected=False),
                _webhook(config, rng, returns, name, second, event_id + 2, connected=True),
            )
        )
    # One queue in time order, as the delivery queue holds them; a tie keeps a disconnect
    # ahead of its own reconnect (a delay of 0 is allowed).
    ordered = sorted(
        ((webhook, n, step) for n, pair in enumerate(storm) for step, webhook in enumerate(pair)),
        key=lambda entry: (entry[0].at, entry[2], entry[1]),
    )
    index = {(n, step): i for i, (_, n, step) in enumerate(ordered)}
    return StormPlan(
        connects=connects,
        storm=[webhook for webhook, _, _ in ordered],
        reconnect_of={index[(n, 0)]: index[(n, 1)] for n in range(len(storm))},
    )


def _webhook(
    config: StormConfig,
    rng: random.Random,
    at: float,
    identity: str,
    endpoint: str,
    event_id: int,
    *,
    connected: bool,
) -> StormWebhook:
    params = reachability(
        identity,
        endpoint,
        event_id,
        connected,
        connected=connected,
        service_sid=config.service,
        account_sid=config.account,
    )
    headers = {IDEMPOTENCY_HEADER: f"{rng.getrandbits(128):032x}"}
    return StormWebhook(at, identity, params, headers)
