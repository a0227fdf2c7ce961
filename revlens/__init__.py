"""revlens: measure, test causally and block alignment reversion along history-defined directions.

Fine-tuning an aligned model on harmless data often erodes its alignment. Following Poppi &
Lukas (arXiv 2606.28525), revlens reads the residual stream of a model's training history
(base → aligned → fine-tuning checkpoints) through TransformerLens, derives per-layer reversion
directions ``v_rev``, projects fine-tuning drift onto them against honest nulls, tests causal
mediation against random-direction controls, and blocks or monitors reversion while training.

``import revlens`` is cheap: TransformerLens, ``transformers.Trainer`` and plotly are imported
only when a name that needs them is first used.
"""

import importlib
from typing import Any

from revlens._version import __version__
from revlens.errors import RevlensError

# public name -> module that defines it (imported on first use)
_LAZY = {
    "AblationConfig": "revlens.causal",
    "AnalyzeConfig": "revlens.analyze",
    "BlockerConfig": "revlens.block",
    "CausalReport": "revlens.causal",
    "Checkpoint": "revlens.history",
    "CheckpointStats": "revlens.collect",
    "DefenseComparison": "revlens.defenses",
    "Directions": "revlens.directions",
    "Evaluation": "revlens.evaluate",
    "History": "revlens.history",
    "HistoryStats": "revlens.collect",
    "LensModel": "revlens.model",
    "LinearProbe": "revlens.directions",
    "MeanDiff": "revlens.directions",
    "PairedPCA": "revlens.directions",
    "Probes": "revlens.probes",
    "Report": "revlens.report",
    "ReversionBlocker": "revlens.block",
    "ReversionMonitor": "revlens.monitor",
    "ReversionWarning": "revlens.monitor",
    "Run": "revlens.history",
    "WeightBlocker": "revlens.weights",
    "WeightReport": "revlens.weights",
    "WeightsConfig": "revlens.weights",
    "Whitened": "revlens.directions",
    "ablation_study": "revlens.causal",
    "analyze": "revlens.analyze",
    "collect": "revlens.collect",
    "compare_defenses": "revlens.defenses",
    "compare_directions": "revlens.drift",
    "evaluate": "revlens.evaluate",
    "load_prompt_set": "revlens.probes",
    "refusal_directions": "revlens.directions",
    "select_refusal_direction": "revlens.causal",
    "weight_reversion": "revlens.weights",
}

# saved-result format -> "module:class" (what revlens.load opens)
_RESULTS = {
    "report.json": "revlens.report.report:Report",
    "causal.json": "revlens.causal.report:CausalReport",
    "stats.json": "revlens.collect.stats:HistoryStats",
    "evaluation.json": "revlens.evaluate.result:Evaluation",
    "weights.json": "revlens.weights.report:WeightReport",
    "comparison.json": "revlens.defenses.comparison:DefenseComparison",
}

__all__ = [
    "AblationConfig",
    "AnalyzeConfig",
    "BlockerConfig",
    "CausalReport",
    "Checkpoint",
    "CheckpointStats",
    "DefenseComparison",
    "Directions",
    "Evaluation",
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
    "WeightBlocker",
    "WeightReport",
    "WeightsConfig",
    "Whitened",
    "__version__",
    "ablation_study",
    "analyze",
    "collect",
    "compare_defenses",
    "compare_directions",
    "evaluate",
    "load",
    "load_prompt_set",
    "refusal_directions",
    "select_refusal_direction",
    "weight_reversion",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'revlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load(path: Any) -> Any:
    """Open any saved revlens result: an analysis :class:`Report`, a :class:`CausalReport`, an
    :class:`Evaluation`, a :class:`WeightReport`, saved statistics, or a training history
    (``history.json``).

    Raises:
        ConfigError: ``path`` holds none of these (the files looked for are named).
    """
    from pathlib import Path

    from revlens.errors import ConfigError

    root = Path(path)
    for meta, target in _RESULTS.items():
        if (root / meta).is_file():
            module, cls = target.split(":")
            return getattr(importlib.import_module(module), cls).load(root)
    if (
        (root / "history.json").is_file()
        or (root / "histories.json").is_file()
        or root.name == "history.json"
    ):
        from revlens.history import History

        return History.load(root)
    raise ConfigError(
        f"{root} holds no saved revlens result (looked for {', '.join(_RESULTS)}, history.json)"
    )
