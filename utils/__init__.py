"""Primitives that every other room may use and that import nothing of the project outside ``utils``: processes
(distributed, DataLoader workers, preemption), files (atomic writes, checkpoint files), precision, progress bars,
run configurations and the allocator."""
