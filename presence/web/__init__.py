"""The HTTP layer: webhook receiver, query API, errors, authentication."""
