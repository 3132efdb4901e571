"""The run machinery of the entry scripts: the training loop, checkpoints and resume, output folders, launch
and error reporting, run logs, reproduction cards and the memory estimate. It names no method: what it needs to
know of one (backbone passes, card fields, published recipe), the method states."""
