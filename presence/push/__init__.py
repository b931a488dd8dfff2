"""Push subscriptions: presence changes POSTed to a backend as signed webhooks (Standard
Webhooks), from a cursor on the change feed that the service advances as the backend
acknowledges. ``records`` and ``signing`` are what a subscription is and how its requests are
signed; ``addresses`` which URLs may be called; ``sender`` one attempt; ``delivery`` a
subscription delivered in order, with retries and resets; ``leases`` which replica delivers
which subscription. The Redis side is ``presence.store.push``."""
