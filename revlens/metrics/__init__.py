"""Behaviour metrics: ``metric(logits [batch, pos, vocab], batch) -> Tensor[batch]``.

Used by causal studies, the monitor and evaluations. Built in (:mod:`revlens.metrics.tokens`):
token log-odds (:func:`logit_diff`, :func:`logit_rate`), greedy-token rate, KL to a reference,
task loss; any callable with that signature works too. Metrics can also be described as data
(:func:`metric_from_spec`). A new metric goes into this package.
"""

from revlens.metrics.specs import METRICS, metric_from_spec
from revlens.metrics.tokens import (
    GreedyRate,
    KLTo,
    LogitDiff,
    LogitRate,
    Metric,
    TaskLoss,
    TokenMetric,
    call_metric,
    check_metric_output,
    greedy_rate,
    kl_to,
    last_logprobs,
    logit_diff,
    logit_rate,
    metric_name,
    task_loss,
)

__all__ = [
    "METRICS",
    "GreedyRate",
    "KLTo",
    "LogitDiff",
    "LogitRate",
    "Metric",
    "TaskLoss",
    "TokenMetric",
    "call_metric",
    "check_metric_output",
    "greedy_rate",
    "kl_to",
    "last_logprobs",
    "logit_diff",
    "logit_rate",
    "metric_from_spec",
    "metric_name",
    "task_loss",
]
