"""Behaviour metrics for causal studies: ``metric(logits, batch) -> Tensor[batch]``.

Built in (DESIGN §2), all read at each prompt's **last real token** (``ProbeBatch.last_index``):

- :func:`logit_diff`: log-odds of token set A against token set B,
  ``logsumexp log p(A) − logsumexp log p(B)``; :func:`logit_rate`: 1.0 where that is > 0;
- :func:`greedy_rate`: 1.0 where the greedy (argmax) next token is in a set;
- :func:`kl_to`: ``KL(p_ref ‖ p_model)`` to reference logits (by default, filled in by
  :func:`~revlens.causal.ablation_study`, the aligned model's);
- :func:`task_loss`: cross-entropy of per-prompt target tokens.

Any user callable ``(logits [batch, pos, vocab], batch: ProbeBatch) -> [batch]`` works too.
Token sets are given as strings (single tokens of the tokenizer) or ids and validated by
:meth:`TokenMetric.bind` (the study binds to the model's tokenizer itself).

Example:
    >>> harm = logit_diff(["sure"], ["sorry"])                       # doctest: +SKIP
    >>> report = ablation_study(history, probes, harm)              # doctest: +SKIP
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from revlens._types import MetricBatch, TokenizerInput
from revlens.errors import MetricError

__all__ = [
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
    "metric_name",
    "task_loss",
]

Metric = Callable[[Tensor, Any], Tensor]
TokenSpec = str | int | Sequence[str | int]


def metric_name(metric: object) -> str:
    """A readable name for a metric (its ``name``, ``__name__`` or class name)."""
    return str(
        getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__
    )


def check_metric_output(values: object, n: int, metric: object) -> Tensor:
    """Validate a metric's output: a finite tensor of shape ``[n]``.

    Raises:
        MetricError: wrong type or shape, or NaN / inf (naming the metric).
    """
    name = metric_name(metric)
    if not isinstance(values, Tensor):
        raise MetricError(
            f"metric {name!r} returned {type(values).__name__}; expected a tensor of shape [{n}]"
        )
    if tuple(values.shape) != (n,):
        raise MetricError(
            f"metric {name!r} returned shape {tuple(values.shape)}; expected [{n}] (one value per prompt)"
        )
    values = values.detach().to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise MetricError(f"metric {name!r} returned {bad} NaN/inf value(s) of {n}")
    return values


def call_metric(metric: Callable[..., object], logits: Tensor, batch: MetricBatch) -> Tensor:
    """``metric(logits, batch)``, validated; an exception inside the metric is re-raised as a
    :class:`~revlens.errors.MetricError` that names the metric."""
    from revlens.errors import RevlensError

    try:
        values = metric(logits, batch)
    except RevlensError:
        raise
    except Exception as exc:  # a user's metric may raise anything: say that the metric did
        raise MetricError(
            f"metric {metric_name(metric)!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    return check_metric_output(values, int(logits.shape[0]), metric)


def last_logprobs(
    logits: Float[Tensor, "batch pos vocab"], batch: MetricBatch
) -> Float[Tensor, "batch vocab"]:
    """Log-softmax of the logits at each prompt's last real token (``batch.last_index``)."""
    last = batch.last_index.to(logits.device)
    if logits.ndim != 3 or last.shape != logits.shape[:1]:
        raise MetricError(
            f"expected logits [batch, pos, vocab] and last_index [batch]; got "
            f"{tuple(logits.shape)} and {tuple(last.shape)}"
        )
    rows = logits[torch.arange(logits.shape[0], device=logits.device), last]
    return torch.log_softmax(rows.float(), dim=-1)


def _token_id(tok: str | int, tokenizer: Any, vocab_size: int, what: str) -> int:
    if isinstance(tok, bool) or not isinstance(tok, (str, int)):
        raise MetricError(f"{what}: token {tok!r} is neither a string nor an int id")
    if isinstance(tok, int):
        if not 0 <= tok < vocab_size:
            raise MetricError(
                f"{what}: token id {tok} is not in the vocabulary (size {vocab_size})"
            )
        return tok
    if tokenizer is None:
        raise MetricError(
            f"{what}: token {tok!r} is a string; bind the metric to a tokenizer first"
        )
    vocab = tokenizer.get_vocab()
    if tok in vocab:
        return int(vocab[tok])
    ids = tokenizer.encode(tok, add_special_tokens=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or ids[0] == unk:
        raise MetricError(
            f"{what}: token {tok!r} is not in the vocabulary (it encodes to {len(ids)} token(s) {ids})"
        )
    return int(ids[0])


class TokenMetric:
    """Base of the built-in metrics: token sets resolved against a tokenizer by :meth:`bind`."""

    name = "metric"

    def __init__(self, **sets: TokenSpec) -> None:
        self._specs: dict[str, list[str | int]] = {}
        for key, spec in sets.items():
            items = [spec] if isinstance(spec, (str, int)) else list(spec)
            if not items:
                raise MetricError(f"{self.name}: token set {key!r} is empty")
            self._specs[key] = items
        self._ids: dict[str, Tensor] | None = None
        if all(
            isinstance(t, int) and not isinstance(t, bool) for v in self._specs.values() for t in v
        ):
            self._ids = {k: torch.tensor(v, dtype=torch.long) for k, v in self._specs.items()}

    def bind(self, tokenizer: TokenizerInput, vocab_size: int | None = None) -> "TokenMetric":
        """Resolve and validate the token sets against ``tokenizer`` (returns ``self``).

        Raises:
            MetricError: a token not in the vocabulary (named).
        """
        size = int(vocab_size if vocab_size is not None else len(tokenizer))
        self._ids = {
            key: torch.tensor(
                [_token_id(t, tokenizer, size, f"{self.name} set {key!r}") for t in items],
                dtype=torch.long,
            )
            for key, items in self._specs.items()
        }
        return self

    def ids(self, key: str) -> Tensor:
        """Token ids of set ``key`` (after :meth:`bind`, or given as ids)."""
        if self._ids is None:
            raise MetricError(f"{self.name}: tokens given as strings; call .bind(tokenizer) first")
        return self._ids[key]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._specs.items())
        return f"{type(self).__name__}({inner})"


class LogitDiff(TokenMetric):
    """Per-prompt ``logsumexp log p(pos set) − logsumexp log p(neg set)`` at the last token."""

    name = "logit_diff"

    def __init__(self, pos_tokens: TokenSpec, neg_tokens: TokenSpec) -> None:
        super().__init__(pos=pos_tokens, neg=neg_tokens)

    def __call__(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any
    ) -> Float[Tensor, " batch"]:
        lp = last_logprobs(logits, batch)
        return torch.logsumexp(lp[:, self.ids("pos").to(lp.device)], -1) - torch.logsumexp(
            lp[:, self.ids("neg").to(lp.device)], -1
        )


class LogitRate(LogitDiff):
    """Per-prompt 1.0 where :class:`LogitDiff` is > 0 (the positive set outscores the negative)."""

    name = "logit_rate"

    def __call__(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any
    ) -> Float[Tensor, " batch"]:
        return (super().__call__(logits, batch) > 0).float()


class GreedyRate(TokenMetric):
    """Per-prompt 1.0 where the argmax next token at the last position is in the set."""

    name = "greedy_rate"

    def __init__(self, tokens: TokenSpec) -> None:
        super().__init__(tokens=tokens)

    def __call__(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any
    ) -> Float[Tensor, " batch"]:
        lp = last_logprobs(logits, batch)
        return torch.isin(lp.argmax(-1), self.ids("tokens").to(lp.device)).float()


class TaskLoss(TokenMetric):
    """Per-prompt cross-entropy of a target token at the last position.

    ``targets``: one token per prompt of the probe set (strings or ids), looked up by
    ``batch.indices``.
    """

    name = "task_loss"

    def __init__(self, targets: Sequence[str | int]) -> None:
        if isinstance(targets, Tensor):
            targets = [int(t) for t in targets.flatten().tolist()]
        super().__init__(targets=targets)

    def __call__(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any
    ) -> Float[Tensor, " batch"]:
        lp = last_logprobs(logits, batch)
        ids = self.ids("targets")
        idx = batch.indices.to(torch.long)
        if int(idx.max()) >= len(ids):
            raise MetricError(
                f"task_loss has {len(ids)} targets but prompt index {int(idx.max())} was scored"
            )
        target = ids[idx.cpu()].to(lp.device)
        return -lp.gather(1, target[:, None])[:, 0]


class KLTo:
    """Per-prompt ``KL(p_ref ‖ p_model)`` of the next-token distribution at the last position.

    ``reference``: reference logits at each prompt's last token, ``[n_prompts, vocab]``, looked up
    by ``batch.indices``. ``None``: :func:`~revlens.causal.ablation_study` fills in the aligned
    model's logits (:meth:`set_reference`).
    """

    name = "kl_to"

    def __init__(self, reference: Float[Tensor, "prompt vocab"] | None = None) -> None:
        self.reference: Tensor | None = None
        if reference is not None:
            self.set_reference(reference)

    @property
    def needs_reference(self) -> bool:
        """Whether the reference logits are still to be filled in."""
        return self.reference is None

    def set_reference(self, reference: Float[Tensor, "prompt vocab"]) -> None:
        """Set the reference logits ``[n_prompts, vocab]``."""
        ref = torch.as_tensor(reference).detach()
        if ref.ndim != 2:
            raise MetricError(
                f"kl_to reference must be [n_prompts, vocab] last-token logits; got {tuple(ref.shape)}"
            )
        if not bool(torch.isfinite(ref).all()):
            raise MetricError("kl_to reference logits hold NaN or inf")
        self.reference = torch.log_softmax(ref.double(), -1).float()

    def __call__(
        self, logits: Float[Tensor, "batch pos vocab"], batch: Any
    ) -> Float[Tensor, " batch"]:
        if self.reference is None:
            raise MetricError(
                "kl_to has no reference logits; pass reference= or use it in ablation_study"
            )
        lp = last_logprobs(logits, batch)
        ref = self.reference[batch.indices.to(torch.long).cpu()].to(lp.device)
        if ref.shape != lp.shape:
            raise MetricError(
                f"kl_to reference rows have vocab {ref.shape[-1]}, the model {lp.shape[-1]}"
            )
        return (ref.exp() * (ref - lp)).sum(-1)

    def __repr__(self) -> str:
        ref = (
            "aligned (filled in by the study)"
            if self.reference is None
            else tuple(self.reference.shape)
        )
        return f"KLTo(reference={ref})"


def logit_diff(
    pos_tokens: TokenSpec, neg_tokens: TokenSpec, *, tokenizer: TokenizerInput | None = None
) -> LogitDiff:
    """Log-odds of ``pos_tokens`` against ``neg_tokens`` at the last token (see :class:`LogitDiff`)."""
    m = LogitDiff(pos_tokens, neg_tokens)
    return m.bind(tokenizer) if tokenizer is not None else m  # type: ignore[return-value]


def logit_rate(
    pos_tokens: TokenSpec, neg_tokens: TokenSpec, *, tokenizer: TokenizerInput | None = None
) -> LogitRate:
    """1.0 where the log-odds of ``pos_tokens`` against ``neg_tokens`` is > 0 (see :class:`LogitRate`)."""
    m = LogitRate(pos_tokens, neg_tokens)
    return m.bind(tokenizer) if tokenizer is not None else m  # type: ignore[return-value]


def greedy_rate(tokens: TokenSpec, *, tokenizer: TokenizerInput | None = None) -> GreedyRate:
    """1.0 where the greedy next token is in ``tokens`` (see :class:`GreedyRate`)."""
    m = GreedyRate(tokens)
    return m.bind(tokenizer) if tokenizer is not None else m  # type: ignore[return-value]


def task_loss(targets: Sequence[str | int], *, tokenizer: TokenizerInput | None = None) -> TaskLoss:
    """Cross-entropy of one target token per prompt (see :class:`TaskLoss`)."""
    m = TaskLoss(targets)
    return m.bind(tokenizer) if tokenizer is not None else m  # type: ignore[return-value]


def kl_to(reference_logits: Float[Tensor, "prompt vocab"] | None = None) -> KLTo:
    """KL to reference logits (default: the aligned model's, filled in by the study)."""
    return KLTo(reference_logits)
