"""The simulator's own failure (``laned sim`` exits 2 on it)."""


class SimError(RuntimeError):
    """The simulation could not run (not: the lane got something wrong — that is the verdict)."""
