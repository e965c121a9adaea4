"""The training engine: stage assembly, the loop, callbacks, checkpoints."""
