"""The presence store: its interface (``base``), its Redis implementation and Lua scripts."""
