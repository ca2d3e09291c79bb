"""One graph node per module; each exposes `make(ctx) -> node(state) -> update`, where ctx
is the session's `agent.context.SessionContext`."""
