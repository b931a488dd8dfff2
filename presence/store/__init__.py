"""The presence store: its interface (``base``), and its implementation on Redis: the writes
(``redis``), each a Lua script (``lua/``, assembled by ``scripts``) on an identity's page
(``pages``); the reads (``reads``), the listing (``listing``), the change feed's reader
(``feed``) and the sweeps (``sweeps``); how scripts reach Redis (``coalesce``, ``pipe``,
``resp``, ``nodes``, ``replication``, ``connections``, ``sentinel``, ``errors``) and the
storage format (``migrate``)."""
