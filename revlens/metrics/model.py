"""Metrics that run the model themselves: ``metric.score(model, batch) -> Tensor[batch]``.

A logits metric ``metric(logits, batch)`` reads one next-token distribution of one forward. A
behaviour judged on what a chat model *generates* (refusal phrases, a judge model) or on
multi-token continuations needs more forwards, so it cannot be such a callable: it is a
:class:`ModelMetric`, given the model (a ``LensModel``, bridge, Hugging Face model or
``SiteAccess``) and the probe batch. Every consumer accepts both kinds:
:func:`revlens.causal.ablation_study` (one intervention per pass for model metrics: interventions
are hooks, so they act inside the metric's own forwards), :func:`revlens.evaluate` and
:class:`revlens.monitor.ReversionMonitor`. :func:`metric_values` scores either kind.

A user metric subclasses :class:`ModelMetric` (or is any object with a ``score(model, batch)``
method) and may implement ``bind(tokenizer)`` to resolve strings to token ids once.
"""

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, runtime_checkable

import torch
from torch import Tensor

from revlens._types import MetricBatch, ModuleLike, TokenizerInput
from revlens.errors import MetricError, RevlensError
from revlens.metrics.tokens import TokenMetric, call_metric, check_metric_output, metric_name

__all__ = [
    "MetricLike",
    "ModelMetric",
    "ScoresModel",
    "bind_metric",
    "is_model_metric",
    "metric_values",
    "score_metric",
]


class ModelMetric:
    """Base of metrics that run the model: implement :meth:`score`."""

    name = "model_metric"

    def __init__(self) -> None:
        self.tokenizer: Any = None

    def bind(self, tokenizer: TokenizerInput, vocab_size: int | None = None) -> "ModelMetric":
        """Remember the tokenizer (subclasses resolve their strings here); returns ``self``."""
        self.tokenizer = tokenizer
        return self

    def score(self, model: ModuleLike, batch: MetricBatch) -> Tensor:  # pragma: no cover - abstract
        """Per-prompt values ``[batch]`` of ``batch`` (a :class:`~revlens.probes.ProbeBatch`)."""
        raise NotImplementedError

    def _tok(self, model: Any) -> Any:
        tok = self.tokenizer if self.tokenizer is not None else getattr(model, "tokenizer", None)
        if tok is None:
            raise MetricError(f"{self.name}: no tokenizer; call .bind(tokenizer) first")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@runtime_checkable
class ScoresModel(Protocol):
    """Any object with ``score(model, batch) -> Tensor[batch]`` (a model metric by its form)."""

    def score(self, model: ModuleLike, batch: MetricBatch) -> Tensor:
        """Per-prompt values ``[batch]``."""


MetricLike: TypeAlias = Callable[..., object] | ModelMetric | ScoresModel
"""A metric: a logits callable ``metric(logits, batch) -> Tensor[batch]``, a :class:`ModelMetric`,
or any object with ``score(model, batch)``."""


def is_model_metric(metric: object) -> bool:
    """Whether ``metric`` runs the model itself (has ``score(model, batch)``) rather than reading
    logits (``metric(logits, batch)``)."""
    return isinstance(metric, ModelMetric) or (
        callable(getattr(metric, "score", None)) and not isinstance(metric, TokenMetric)
    )


def bind_metric(metric: object, tokenizer: TokenizerInput, vocab_size: int | None = None) -> Any:
    """Bind a built-in metric's token sets / phrases to ``tokenizer`` (others are returned as they are).

    Raises:
        MetricError: not a metric (neither callable nor with ``score``), or a token it cannot resolve.
    """
    if not callable(metric) and not is_model_metric(metric):
        raise MetricError(
            f"metric must be a callable (logits, batch) -> Tensor[batch] or have "
            f"score(model, batch); got {type(metric).__name__}"
        )
    if isinstance(metric, (TokenMetric, ModelMetric)):
        metric.bind(tokenizer, vocab_size=vocab_size)
    return metric


def score_metric(metric: MetricLike, model: ModuleLike, batch: MetricBatch) -> Tensor:
    """``metric.score(model, batch)``, validated (finite, one value per prompt, float64); an
    exception inside a user's metric is re-raised as a :class:`MetricError` naming it."""
    try:
        with torch.no_grad():
            values = metric.score(model, batch)
    except RevlensError:
        raise
    except Exception as exc:  # a user's metric may raise anything: say that the metric did
        raise MetricError(
            f"metric {metric_name(metric)!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(values, (list, tuple)):
        values = torch.tensor(values, dtype=torch.float64)
    return check_metric_output(values, len(batch), metric)


def metric_values(
    metric: MetricLike, model: ModuleLike, batch: MetricBatch, logits: Tensor | None = None
) -> Tensor:
    """Per-prompt values of either kind of metric: logits metrics read ``logits`` (computed here
    with one forward when not given)."""
    if is_model_metric(metric):
        return score_metric(metric, model, batch)
    if logits is None:
        from revlens.sites import access

        with torch.no_grad():
            logits = access(model).forward(batch.tokens)
    return call_metric(metric, logits, batch)
