"""presence: who is online on Twilio Sync, right now, and reliably."""

__version__ = "0.1.0"
