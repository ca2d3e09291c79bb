"""Benchmarks: each module prints measured figures (results in benchmarks/results/). Run one
from the repository root as `python -m benchmarks.NAME`; helpers shared with the tests are
imported from the `tests` package (tests/openai_stub.py, tests/replay_sessions.py, ...)."""
