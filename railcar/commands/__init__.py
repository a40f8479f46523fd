"""The ``railcar`` commands: the composition root that wires the rooms together (one module per command)."""
