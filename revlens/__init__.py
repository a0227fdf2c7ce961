"""revlens: measure, test causally and block alignment reversion along history-defined directions.

Fine-tuning an aligned model on harmless data often erodes its alignment. Following Poppi &
Lukas (arXiv 2606.28525), revlens reads the residual stream of a model's training history
(base → aligned → fine-tuning checkpoints) through TransformerLens, derives per-layer reversion
directions ``v_rev``, projects fine-tuning drift onto them against honest nulls, tests causal
mediation against random-direction controls, and blocks or monitors reversion while training.
"""

from revlens._version import __version__
from revlens.analyze import analyze
from revlens.block import ReversionBlocker
from revlens.causal import CausalReport, ablation_study
from revlens.collect import CheckpointStats, HistoryStats, collect
from revlens.directions import Directions, LinearProbe, MeanDiff, PairedPCA, Whitened
from revlens.errors import RevlensError
from revlens.history import Checkpoint, History, Run
from revlens.model import LensModel
from revlens.monitor import ReversionMonitor, ReversionWarning
from revlens.probes import Probes
from revlens.report import Report

__all__ = [
    "CausalReport",
    "Checkpoint",
    "CheckpointStats",
    "Directions",
    "History",
    "HistoryStats",
    "LensModel",
    "LinearProbe",
    "MeanDiff",
    "PairedPCA",
    "Probes",
    "Report",
    "ReversionBlocker",
    "ReversionMonitor",
    "ReversionWarning",
    "RevlensError",
    "Run",
    "Whitened",
    "__version__",
    "ablation_study",
    "analyze",
    "collect",
]
