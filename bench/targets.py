"""The targets each row is judged by (issue "Lean", and the change feed's), in one place:
``python -m bench`` records them with the results, and the report prints each figure against
its target with PASS or MISS."""

TARGETS = {
    # Issue "Lean": 1. ingest
    "ingest": 0.5,  # x the bare reference's req/s, signatures checked, access log on
    "ingest_cpu": 2.0,  # x the bare reference's CPU per request, at most ("Lean, second pass")
    "half_rate_p99_ms": 20.0,  # open loop at half the service's own peak
    # 2. reads
    "get": 0.5,  # x the bare JSON GET's req/s
    "lookup_names_per_s": 150_000,  # on the service's one core
    # Issue "Lean, second pass": Redis time per webhook against the previous release's script
    "redis_time_ratio": 0.67,  # x its evalsha usec per call, same stream, same run
    # 3. memory, without the change feed (reported apart, per change)
    "bytes_per_identity": 200.0,  # online, one UUID endpoint
    "flapped_bytes_per_identity": 150.0,  # the same after one flap ("Lean, second pass")
    "offline_bytes_per_identity": 64.0,  # compacted
    # 4. 100k deadlines due in the same millisecond
    "deadlines_s": 5.0,  # all published
    "first_deadline_s": 0.5,
    "redis_us_per_deadline": 17.0,  # a third of storage format 1's 51 us
    # The change feed (row "feed")
    "feed_p99_ms": 100.0,
    "feed_bytes_per_idle_stream": 50 * 1024,
    # Push subscriptions (row "push"): change to delivery at the receiver
    "push_p99_ms": 1000.0,
}
