"""micagent models layer."""
