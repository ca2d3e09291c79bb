"""Benchmarks: each module prints measured figures (results in benchmarks/results/). Run one
from the repository root as `python -m benchmarks.NAME`. What they share with the tests (a
local VLM server, recorded sessions, foreign textures, the operator's browser) lives in
`twins/`, never in `tests/`."""
