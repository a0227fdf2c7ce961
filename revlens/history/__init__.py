"""Training histories: :class:`History`, :class:`Run`, :class:`Checkpoint`, their loaders and
the ``history.json`` format (:mod:`revlens.history.spec`)."""

from revlens.history.checkpoint import Checkpoint, HubRef
from revlens.history.history import History, Run
from revlens.history.inputs import HistoryInput, as_history, as_model

__all__ = ["Checkpoint", "History", "HistoryInput", "HubRef", "Run", "as_history", "as_model"]
