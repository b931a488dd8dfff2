"""Benchmarks of the presence service against a bare aiohttp reference, run side by side.

Entry point: ``bench/run`` (or ``.venv/bin/python -m bench``). See docs/benchmarks.md.
"""
