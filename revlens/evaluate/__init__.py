"""Behaviour metrics over a history: :func:`evaluate` → :class:`Evaluation` (a tidy table per checkpoint).

``revlens.evaluate(history, prompts, metrics)`` scores logits metrics, generation-based metrics
(refusal rate, judges) and the harmless-side cost (KL to aligned, over-refusal) on every
checkpoint; ``Report.with_metrics(evaluation)`` (or ``analyze(..., evaluation=...)``) shows the
table beside the drift.
"""

from revlens.evaluate.result import Evaluation
from revlens.evaluate.run import evaluate

__all__ = ["Evaluation", "evaluate"]

from revlens._callable import make_callable

make_callable(
    __name__, evaluate
)  # revlens.evaluate(...) works whether it names the module or the function
