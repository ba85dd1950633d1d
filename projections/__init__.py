"""Read-model projectors: pure folds of the event log plus checkpointed runners."""
