"""Bridges: servers that run inside an instrument PC's own Python (vendor packages, numpy 2,
none of micagent's dependencies) and serve the instrument over the TEM JSON-RPC protocol.
Nothing here may import more than the standard library, numpy and `instruments.devices.rpc_server`'s
own imports at package level."""
