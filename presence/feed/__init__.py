"""The change feed: its cursors (``cursor``), what it holds and what a read of it returns
(``entries``), and the fan-out of one process to many followers (``hub``). Reading it from
Redis is ``presence.store.feed``: the store imports these types, never the other way."""
