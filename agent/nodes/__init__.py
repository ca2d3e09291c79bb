"""One graph node per module; each exposes `make(rt) -> node(state) -> update`."""
