"""Replay of stored sessions: one file in process, archives on Dask."""
