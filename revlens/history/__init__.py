"""Training histories: :class:`History`, :class:`Run`, :class:`Checkpoint`, their loaders and
the ``history.json`` format (:mod:`revlens.history.spec`)."""

from revlens.history.checkpoint import Checkpoint, HubRef
from revlens.history.history import History, Run

__all__ = ["Checkpoint", "History", "HubRef", "Run"]
