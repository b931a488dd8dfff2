"""``presence simulate``: realistic Twilio Sync webhook traffic for any deployment.

``traffic`` generates it (pure, deterministic for a seed; ``documents`` for the collection
events) along with the truth it should leave behind (predicted by the rules themselves,
``presence.rules``); ``send`` delivers it signed and paced; ``report`` sums it up;
``command`` is the command line's side.

``--storm`` is a reconnect storm instead: ``storm`` plans it (pure), ``delivery`` sends it as
Twilio's delivery queue would, ``flickers`` counts the offline announcements on the change
feed, ``storm_run`` runs it all against a deployment and ``storm_report`` sums it up.
"""

from presence.simulate.report import Summary, Tally
from presence.simulate.send import SendOptions, simulate
from presence.simulate.traffic import Expectation, Traffic, TrafficConfig, Webhook

__all__ = [
    "Expectation",
    "SendOptions",
    "Summary",
    "Tally",
    "Traffic",
    "TrafficConfig",
    "Webhook",
    "simulate",
]
