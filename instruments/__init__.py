"""micagent instruments layer."""
