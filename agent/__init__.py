"""micagent agent layer."""
