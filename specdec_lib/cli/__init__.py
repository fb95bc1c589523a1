"""Command lines, the top room: `python -m specdec_lib.bench` (bench.py) and `python -m specdec_lib.training` (training.py),
with the argument types and error helpers they share (args.py). Nothing in the library imports this room."""
