"""Processes the test suite and the benchmarks start and stop: real redis-servers (alone or as
a Redis Cluster) and ``presence serve``, each on a free port, each stopped by its own pid.

Not part of the installed package: a development tool shared by ``tests/`` and ``bench/``."""
