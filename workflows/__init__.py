"""micagent workflows layer: the CLI and the train / evaluate / describe / replay /
report workflows."""
