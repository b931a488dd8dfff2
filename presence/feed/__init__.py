"""The change feed: every published change kept in Redis for a while, readable from a cursor
(``cursor``), and followed live by many clients of one process (``hub``)."""
