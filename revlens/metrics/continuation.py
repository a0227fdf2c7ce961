"""Multi-token continuations scored teacher-forced: ``log p(phrase | prompt)``.

A single next token rarely decides a chat model's behaviour ("Sure, here is" vs "I cannot"), so
these metrics score whole phrases: for every prompt and every phrase, one forward runs the
prompt followed by the phrase's tokens (all prompts × phrases of a batch in one forward, see
:mod:`revlens.sites.layout`) and sums the log-probabilities of the phrase's tokens:

- :func:`phrase_logprob`: ``log Σ_j p(phrase_j | prompt)`` over a set of phrases;
- :func:`phrase_logodds`: that of set A minus that of set B (the multi-token twin of
  :func:`~revlens.metrics.logit_diff`); :func:`phrase_rate`: 1.0 where it is > 0.

Phrases are tokenized on their own (``tokenizer(phrase, add_special_tokens=False)``) and
appended right after the prompt — the rendered chat prompt ends with the assistant header, so
this is how a response would start; with a SentencePiece tokenizer a phrase gets the usual
leading-space piece. Interventions active during the call act at the phrase positions too
(see :mod:`revlens.causal.interventions`).
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from revlens._config import as_int
from revlens._types import MetricBatch, ModuleLike, TokenizerInput
from revlens.errors import MetricError
from revlens.metrics.model import ModelMetric

__all__ = [
    "PhraseLogOdds",
    "PhraseLogProb",
    "phrase_logodds",
    "phrase_logprob",
    "phrase_rate",
    "score_phrases",
]


def _phrases(value: Any, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise MetricError(f"{what}: expected a non-empty list of non-empty phrases; got {value!r}")
    return items


def _encode(tokenizer: Any, phrases: Sequence[str], what: str) -> list[list[int]]:
    out = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for p in phrases:
        ids = list(tokenizer(p, add_special_tokens=False)["input_ids"])
        if not ids:
            raise MetricError(f"{what}: phrase {p!r} encodes to no token")
        if unk is not None and unk in ids:
            raise MetricError(
                f"{what}: phrase {p!r} has a token the tokenizer does not know ({ids})"
            )
        out.append(ids)
    return out


@torch.no_grad()
def score_phrases(
    model: ModuleLike, batch: MetricBatch, phrases: Sequence[Sequence[int]], *, max_rows: int = 512
) -> Tensor:
    """``log p(phrase_j | prompt_i)`` ``[batch, n_phrases]`` (float64), teacher-forced, every
    prompt × phrase of a chunk of rows in one forward."""
    from revlens.sites import access
    from revlens.sites.layout import extended_inputs, prompt_layout

    acc = access(model)
    dev = acc.device
    tokens, lengths = batch.tokens.to(dev), (batch.last_index + 1).to(dev)
    b, width, n = tokens.shape[0], int(tokens.shape[1]), len(phrases)
    t_max = max(len(p) for p in phrases)
    if acc.n_ctx and width + t_max > acc.n_ctx:
        raise MetricError(
            f"prompts of {width} tokens + a phrase of {t_max} exceed the model's context ({acc.n_ctx})"
        )
    ph = torch.zeros(n, t_max, dtype=torch.long, device=dev)
    valid = torch.zeros(n, t_max, dtype=torch.bool, device=dev)
    for j, p in enumerate(phrases):
        ph[j, : len(p)] = torch.tensor(p, device=dev)
        valid[j, : len(p)] = True
    out = torch.empty(b, n, dtype=torch.float64)
    per = max(1, as_int("max_rows", max_rows, min=1) // n)
    for s in range(0, b, per):
        sl = slice(s, min(s + per, b))
        m = sl.stop - sl.start
        tok = tokens[sl].repeat_interleave(n, 0)
        lens = lengths[sl].repeat_interleave(n, 0)
        new = ph.repeat(m, 1)
        ids, mask, pos = extended_inputs(tok, lens, new)
        with prompt_layout(width, lens):
            logits = acc.forward(ids, mask, position_ids=pos)
        # token t of a phrase is predicted at the prompt's last token (t = 0), else at column W + t − 1
        cols = torch.cat(
            [
                (lens - 1)[:, None],
                width + torch.arange(t_max - 1, device=dev)[None].expand(len(lens), -1),
            ],
            1,
        )
        lp = torch.log_softmax(
            logits.gather(1, cols[..., None].expand(-1, -1, logits.shape[-1])).double(), -1
        )
        tok_lp = lp.gather(2, new[..., None])[..., 0] * valid.repeat(m, 1)
        out[sl] = tok_lp.sum(1).view(m, n).cpu()
    return out


class PhraseLogProb(ModelMetric):
    """Per-prompt ``log Σ_j p(phrase_j | prompt)`` (teacher-forced; see the module docstring)."""

    name = "phrase_logprob"

    def __init__(self, phrases: Sequence[str], *, max_rows: int = 512) -> None:
        super().__init__()
        self.phrases = _phrases(phrases, self.name)
        self.max_rows = as_int("max_rows", max_rows, min=1)
        self._ids: list[list[int]] | None = None

    def bind(self, tokenizer: TokenizerInput, vocab_size: int | None = None) -> "PhraseLogProb":
        super().bind(tokenizer, vocab_size)
        self._ids = _encode(tokenizer, self.phrases, self.name)
        return self

    def _phrase_ids(self, model: Any) -> list[list[int]]:
        if self._ids is None:
            self.bind(self._tok(model))
        return self._ids  # type: ignore[return-value]

    def score(self, model: ModuleLike, batch: MetricBatch) -> Tensor:
        return torch.logsumexp(
            score_phrases(model, batch, self._phrase_ids(model), max_rows=self.max_rows), -1
        )


class PhraseLogOdds(ModelMetric):
    """Per-prompt ``log Σ p(A_j | prompt) − log Σ p(B_j | prompt)`` for phrase sets A, B."""

    name = "phrase_logodds"

    def __init__(
        self,
        pos_phrases: Sequence[str],
        neg_phrases: Sequence[str],
        *,
        max_rows: int = 512,
        rate: bool = False,
    ) -> None:
        super().__init__()
        self.pos, self.neg = (
            _phrases(pos_phrases, self.name + " pos"),
            _phrases(neg_phrases, self.name + " neg"),
        )
        self.max_rows = as_int("max_rows", max_rows, min=1)
        self.rate = bool(rate)
        if rate:
            self.name = "phrase_rate"
        self._ids: list[list[int]] | None = None

    def bind(self, tokenizer: TokenizerInput, vocab_size: int | None = None) -> "PhraseLogOdds":
        super().bind(tokenizer, vocab_size)
        self._ids = _encode(tokenizer, [*self.pos, *self.neg], self.name)
        return self

    def score(self, model: ModuleLike, batch: MetricBatch) -> Tensor:
        if self._ids is None:
            self.bind(self._tok(model))
        lp = score_phrases(model, batch, self._ids, max_rows=self.max_rows)  # type: ignore[arg-type]
        k = len(self.pos)
        odds = torch.logsumexp(lp[:, :k], -1) - torch.logsumexp(lp[:, k:], -1)
        return (odds > 0).double() if self.rate else odds


def phrase_logprob(
    phrases: Sequence[str], *, tokenizer: TokenizerInput | None = None
) -> PhraseLogProb:
    """``log Σ_j p(phrase_j | prompt)`` (see :class:`PhraseLogProb`)."""
    m = PhraseLogProb(phrases)
    return m.bind(tokenizer) if tokenizer is not None else m


def phrase_logodds(
    pos_phrases: Sequence[str],
    neg_phrases: Sequence[str],
    *,
    tokenizer: TokenizerInput | None = None,
) -> PhraseLogOdds:
    """Log-odds of phrase set A against B, teacher-forced (see :class:`PhraseLogOdds`)."""
    m = PhraseLogOdds(pos_phrases, neg_phrases)
    return m.bind(tokenizer) if tokenizer is not None else m


def phrase_rate(
    pos_phrases: Sequence[str],
    neg_phrases: Sequence[str],
    *,
    tokenizer: TokenizerInput | None = None,
) -> PhraseLogOdds:
    """1.0 where phrase set A outscores B (see :class:`PhraseLogOdds`)."""
    m = PhraseLogOdds(pos_phrases, neg_phrases, rate=True)
    return m.bind(tokenizer) if tokenizer is not None else m
