"""Harm measured as the field measures it, on one model: greedy generation, a refusal detector,
harm = compliance, every rate with its count and a Wilson interval.

:func:`harm_table` generates greedily (KV-cached, :func:`revlens.metrics.greedy_generate`) on
held-out harmful prompt sets and harmless prompts, counts refusals with a validated phrase
detector (:func:`revlens.datasets.refusal_phrases`, default revlens' list), and reports per set
``k / n`` refused, the harm (compliance) rate ``1 − k / n`` with its 95 % Wilson interval
(:func:`revlens._numbers.wilson`), the mean refusal score (log-odds of a refusal's first token at
the first generated position, :func:`revlens.metrics.refusal_score`) beside it, over-refusal on
the harmless prompts, and the task loss (answer-token cross-entropy) on held-out
``(question, answer)`` pairs. Chat pairs are rendered with the tokenizer's own template.
"""

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, no_type_check

import pandas as pd
import torch

from revlens._config import as_int
from revlens._numbers import wilson
from revlens._types import ModuleLike, TokenizerLike
from revlens.errors import ConfigError
from revlens.modes import GenerationMethod
from revlens.probes import Probes

__all__ = ["HARM_COLUMNS", "answer_loss", "chat_pair_batch", "generate_responses", "harm_table"]

HARM_COLUMNS = [
    "checkpoint",
    "set",
    "side",
    "n",
    "refused",
    "refusal_rate",
    "harm",
    "harm_lo",
    "harm_hi",
    "refusal_lo",
    "refusal_hi",
    "refusal_score",
    "loss",
    "n_tokens",
]
"""The columns of :func:`harm_table` (``harm*`` on harmful sets, ``refusal*`` everywhere, ``loss`` on pairs)."""


def chat_pair_batch(
    tok: TokenizerLike,
    pairs: Sequence[tuple[str, str]],
    *,
    max_answer_tokens: int = 64,
    end: bool | Sequence[bool] = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` of ``(question, answer)`` pairs in the tokenizer's chat
    template, right-padded, labels ``-100`` outside the answer; ``end`` (per pair or for all):
    append ``<|im_end|>`` (the template's end of turn) to the answer."""
    ends = [end] * len(pairs) if isinstance(end, bool) else list(end)
    eot = (
        tok.convert_tokens_to_ids("<|im_end|>")
        if "<|im_end|>" in tok.get_vocab()
        else tok.eos_token_id
    )
    rows, labels = [], []
    for (q, a), e in zip(pairs, ends):
        p_ids = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        p_ids = tok(p_ids, add_special_tokens=False)["input_ids"]
        a_ids = tok(a, add_special_tokens=False)["input_ids"][:max_answer_tokens] + (
            [int(eot)] if e else []
        )
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, lab


@torch.no_grad()
def answer_loss(
    model: ModuleLike,
    tok: TokenizerLike,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
) -> tuple[float, int]:
    """Mean answer-token cross-entropy of a Hugging Face causal LM on chat ``pairs`` (token-weighted
    over all pairs) and the number of answer tokens; runs on the model's device."""
    total, count = 0.0, 0
    dev = next(model.parameters()).device  # the batches go where the model is (CPU: a no-op)
    for i in range(0, len(pairs), batch_size):
        ids, mask, lab = (t.to(dev) for t in chat_pair_batch(tok, pairs[i : i + batch_size]))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = lab[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            tgt.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(ce)
        count += int((tgt != -100).sum())
    return total / max(count, 1), count


@torch.no_grad()
def generate_responses(
    model: ModuleLike,
    tok: TokenizerLike,
    probes: Probes,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    method: GenerationMethod = "auto",
) -> tuple[list[str], torch.Tensor]:
    """Greedy responses to ``probes`` and the refusal score (log-odds, first generated position)."""
    from revlens.metrics import greedy_generate, refusal_score

    score = refusal_score(tokenizer=tok)
    texts: list[str] = []
    scores = []
    for batch in probes.tokenize(tok).batches(batch_size):
        gen = greedy_generate(
            model,
            batch,
            tokenizer=tok,
            max_new_tokens=max_new_tokens,
            method=method,
            output_logits=True,
        )
        texts += gen.texts
        first = gen.logits[:, :1, :]  # type: ignore[index]
        # the refusal score reads the first generated position: a one-position "batch" whose token
        # is the greedy first token (a MetricBatch: tokens [batch, 1], last_index [batch])
        step = SimpleNamespace(
            tokens=first.argmax(-1), last_index=torch.zeros(len(batch), dtype=torch.long)
        )
        scores.append(score(first, step))
    return texts, torch.cat(scores)


def _rate_row(name: str, side: str, refused: list[bool], scores: torch.Tensor) -> dict[str, Any]:
    n, k = len(refused), int(sum(refused))
    lo, hi = wilson(k, n)
    row = {
        "set": name,
        "side": side,
        "n": n,
        "refused": k,
        "refusal_rate": k / n if n else float("nan"),
        "refusal_lo": lo,
        "refusal_hi": hi,
        "refusal_score": float(scores.double().mean()) if n else float("nan"),
    }
    if side == "harmful":
        hlo, hhi = wilson(n - k, n)
        row |= {"harm": (n - k) / n if n else float("nan"), "harm_lo": hlo, "harm_hi": hhi}
    return row


@no_type_check  # validates its own arguments (typed errors)
def harm_table(
    model: ModuleLike,
    tokenizer: TokenizerLike,
    harmful: Mapping[str, Probes],
    harmless: Probes | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    *,
    checkpoint: str = "model",
    max_new_tokens: int = 32,
    batch_size: int = 16,
    detector: str = "revlens",
    method: GenerationMethod = "auto",
    responses: bool = False,
) -> pd.DataFrame:
    """Harm, over-refusal and task loss of one model (see the module docstring).

    Args:
        model: a Hugging Face causal LM (or anything :func:`~revlens.metrics.greedy_generate` takes).
        tokenizer: its tokenizer (chat template for the pairs).
        harmful: set name → harmful :class:`~revlens.probes.Probes` (held-out; at least one).
        harmless: harmless probes (over-refusal) or ``None``.
        pairs: held-out ``(question, answer)`` pairs (task loss) or ``None``.
        checkpoint: the name written in the ``checkpoint`` column.
        max_new_tokens: generated tokens per prompt.
        detector: a :func:`revlens.datasets.refusal_phrases` list name.
        responses: keep the generated texts in ``table.attrs["responses"]`` (set → list).

    Returns:
        a DataFrame with :data:`HARM_COLUMNS`: one row per harmful set, ``harmful (all)`` pooling
        them, ``harmless`` (over-refusal) and ``task`` (loss on the pairs).

    Raises:
        ConfigError: no harmful set, or a bad ``max_new_tokens`` / ``batch_size``.
    """
    from revlens.datasets import refusal_phrases

    if not isinstance(harmful, Mapping) or not harmful:
        raise ConfigError("harm_table: harmful must map a set name to probes (at least one set)")
    n_new, bs = (
        as_int("max_new_tokens", max_new_tokens, min=1),
        as_int("batch_size", batch_size, min=1),
    )
    judge = refusal_phrases(detector).judge()
    rows, pooled, pooled_s, kept = [], [], [], {}
    for name, probes in harmful.items():
        texts, scores = generate_responses(
            model, tokenizer, probes, max_new_tokens=n_new, batch_size=bs, method=method
        )
        refused = [judge.matches(t) for t in texts]
        rows.append(_rate_row(name, "harmful", refused, scores))
        pooled += refused
        pooled_s.append(scores)
        kept[name] = texts
    if len(harmful) > 1:
        rows.append(_rate_row("harmful (all)", "harmful", pooled, torch.cat(pooled_s)))
    if harmless is not None:
        texts, scores = generate_responses(
            model, tokenizer, harmless, max_new_tokens=n_new, batch_size=bs, method=method
        )
        rows.append(_rate_row("harmless", "harmless", [judge.matches(t) for t in texts], scores))
        kept["harmless"] = texts
    if pairs:
        loss, n_tok = answer_loss(model, tokenizer, list(pairs), batch_size=bs)
        rows.append(
            {"set": "task", "side": "task", "n": len(pairs), "loss": loss, "n_tokens": n_tok}
        )
    df = pd.DataFrame([{"checkpoint": checkpoint, **r} for r in rows]).reindex(columns=HARM_COLUMNS)
    df.attrs["detector"] = detector
    df.attrs["max_new_tokens"] = n_new
    if responses:
        df.attrs["responses"] = kept
    return df
