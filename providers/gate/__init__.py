"""The sample gate: the entry script's own input sample, sent to a new version before it takes traffic, and the rule for what counts as a sample."""
