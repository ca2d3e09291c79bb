"""micagent twins layer."""
