"""The fault campaign (`python -m benchmarks.fault_campaign.run`): one module per row."""
