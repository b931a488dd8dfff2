"""presence: who is online on Twilio Sync, right now, and reliably."""

__version__ = "0.2.0"
