"""Timeouts of the suite's external waits (notebook kernels, a browser, subprocesses).

No test asserts on wall-clock speed; these only bound how long a *hung* wait may block. They are
generous for a heavily loaded 2-core machine (where a kernel start or a page render can take
minutes) and scale with ``REVLENS_TIMEOUT_SCALE`` (e.g. ``REVLENS_TIMEOUT_SCALE=3`` on a slower
machine, ``0.5`` to fail faster on a fast one).
"""

import os

__all__ = ["scaled"]


def scaled(seconds: float) -> float:
    """``seconds`` × ``REVLENS_TIMEOUT_SCALE`` (default 1)."""
    try:
        factor = float(os.environ.get("REVLENS_TIMEOUT_SCALE", "1"))
    except ValueError:
        factor = 1.0
    return seconds * max(factor, 0.01)
