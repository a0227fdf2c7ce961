"""Greedy generation of a probe batch, under whatever interventions are active.

:func:`greedy_generate` decodes every prompt of a right-padded :class:`~revlens.probes.ProbeBatch`
at once: step ``t`` runs the model on the prompts followed by the ``t`` tokens generated so far
(columns ``W .. W + t − 1``, see :mod:`revlens.sites.layout`), takes the argmax at each row's
last position and stops a row at a stop token (EOS, the template's end-of-turn token). Every
forward is a full one — no KV cache — so hooks (``clamp`` / ``patch`` / ``steer`` of
:mod:`revlens.causal.interventions`, or any user hook) see every position of every step exactly
as in an ordinary forward, and batched generation equals generating the prompts one by one
(tested). The cost is ``max_new_tokens`` forwards over ``W + t`` tokens: quadratic in the
generated length, which is why refusal matching reads a short prefix (``max_new_tokens`` 32 by
default; refusals start early). TransformerLens 4.3's own KV-cache decoding through the bridge
(``past_key_values`` / ``return_type="logits_and_cache"``) gave logits that differ from the full
forward by up to 0.6 on every family tried here, so it is not used.

:class:`GenerationMetric` is a :class:`~revlens.metrics.model.ModelMetric` that generates and
hands ``(prompts, responses)`` to a judge (:mod:`revlens.metrics.judges`, or the refusal-phrase
judge of :mod:`revlens.metrics.refusal`).
"""

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from revlens._config import as_int
from revlens.errors import MetricError
from revlens.metrics.model import ModelMetric

__all__ = ["END_OF_TURN_TOKENS", "Generation", "GenerationMetric", "greedy_generate", "stop_token_ids"]

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>", "<eot>",
                      "<|end_of_text|>", "[/INST]")
"""Special tokens that end an assistant turn in common chat templates (Llama-3, ChatML/Qwen,
Gemma, Phi-3, GPT-style, Llama-2/Mistral, the test families); generation stops at any of them
that the tokenizer knows, and at its EOS."""


@dataclass
class Generation:
    """What :func:`greedy_generate` produced.

    Attributes:
        tokens: generated ids ``[batch, n]`` (the stop token included; pad after it).
        lengths: generated tokens per row before its stop token.
        texts: the responses (decoded without special tokens; the stop token excluded).
        stopped: whether each row reached a stop token.
    """

    tokens: Int[Tensor, "batch new"]
    lengths: Int[Tensor, " batch"]
    texts: list[str]
    stopped: Tensor


def stop_token_ids(tokenizer: Any, extra: Sequence[str | int] = ()) -> list[int]:
    """EOS plus the end-of-turn tokens of :data:`END_OF_TURN_TOKENS` the tokenizer knows, plus ``extra``."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids = {int(tokenizer.eos_token_id)} if getattr(tokenizer, "eos_token_id", None) is not None else set()
    ids |= {int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab}
    for t in extra:
        if isinstance(t, int):
            ids.add(t)
        elif t in vocab:
            ids.add(int(vocab[t]))
        else:
            raise MetricError(f"stop token {t!r} is not in the vocabulary")
    return sorted(ids)


@torch.no_grad()
def greedy_generate(model: Any, batch: Any, *, max_new_tokens: int = 32, tokenizer: Any = None,
                    stop: Sequence[str | int] | None = None) -> Generation:
    """Greedy responses of every prompt of ``batch`` (see the module docstring).

    Args:
        model: a ``LensModel``, bridge, Hugging Face causal LM or ``SiteAccess``.
        batch: a :class:`~revlens.probes.ProbeBatch` (right-padded ``tokens``, ``last_index``).
        max_new_tokens: the most tokens generated per prompt (capped to the model's context).
        tokenizer: for stop tokens and decoding (default: the model's).
        stop: extra stop tokens (strings or ids) beside EOS and the end-of-turn tokens.
    """
    from revlens.sites import access
    from revlens.sites.layout import extended_inputs, prompt_layout

    acc = access(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise MetricError("greedy_generate needs a tokenizer (the model has none): pass tokenizer=")
    n_new = as_int("max_new_tokens", max_new_tokens, min=1)
    tokens, lengths = batch.tokens.to(acc.device), (batch.last_index + 1).to(acc.device)
    width = int(tokens.shape[1])
    if acc.n_ctx and width + n_new > acc.n_ctx:
        if width >= acc.n_ctx:
            raise MetricError(f"prompts of {width} tokens leave no room to generate in a context of {acc.n_ctx}")
        warnings.warn(f"max_new_tokens={n_new} capped to {acc.n_ctx - width}: the prompts take {width} of the "
                      f"model's {acc.n_ctx}-token context", UserWarning, stacklevel=2)
        n_new = acc.n_ctx - width
    stops = torch.tensor(stop_token_ids(tok, stop or ()), dtype=torch.long, device=acc.device)
    pad = int(tok.pad_token_id) if getattr(tok, "pad_token_id", None) is not None else 0
    b = tokens.shape[0]
    new = torch.empty(b, 0, dtype=torch.long, device=acc.device)
    done = torch.zeros(b, dtype=torch.bool, device=acc.device)
    rows = torch.arange(b, device=acc.device)
    with prompt_layout(width, lengths):
        for t in range(n_new):
            ids, mask, pos = extended_inputs(tokens, lengths, new)
            logits = acc.forward(ids, mask, position_ids=pos)
            at = lengths - 1 if t == 0 else torch.full_like(lengths, width + t - 1)
            nxt = logits[rows, at].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new = torch.cat([new, nxt[:, None]], 1)
            done |= torch.isin(nxt, stops)
            if bool(done.all()):
                break
    return _finish(new.cpu(), stops.cpu(), done.cpu(), tok)


def _finish(new: Tensor, stops: Tensor, done: Tensor, tok: Any) -> Generation:
    is_stop = torch.isin(new, stops)
    first = torch.where(is_stop.any(1), is_stop.float().argmax(1), torch.full((new.shape[0],), new.shape[1]))
    texts = [tok.decode(new[i, : int(first[i])].tolist(), skip_special_tokens=True).strip()
             for i in range(new.shape[0])]
    return Generation(new, first.long(), texts, done)


Judge = Callable[[list[str], list[str]], Any]


class GenerationMetric(ModelMetric):
    """Generate greedily, then judge: ``judge(prompts, responses) -> scores [batch]``.

    Args:
        judge: any ``judge(prompts, responses)`` (see :mod:`revlens.metrics.judges`); ``prompts``
            are the probe texts (chat probes: the last user message).
        max_new_tokens: generated tokens per prompt.
        stop: extra stop tokens.
        name: the metric's name in reports.

    Attributes:
        last_: the last :class:`Generation` scored (e.g. to read the responses).
    """

    name = "generation"

    def __init__(self, judge: Judge, *, max_new_tokens: int = 32, stop: Sequence[str | int] | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        if not callable(judge):
            raise MetricError(f"judge must be callable judge(prompts, responses) -> scores; got {type(judge).__name__}")
        self.judge = judge
        self.max_new_tokens = as_int("max_new_tokens", max_new_tokens, min=1)
        self.stop = tuple(stop or ())
        self.name = name or getattr(judge, "name", None) or self.name
        self.last_: Generation | None = None

    @property
    def generation_key(self) -> tuple[Any, ...]:
        """Metrics with equal keys can share one generation of a batch."""
        return (self.max_new_tokens, self.stop)

    def generate(self, model: Any, batch: Any) -> Generation:
        """The greedy responses of ``batch`` (under the interventions active now)."""
        return greedy_generate(model, batch, max_new_tokens=self.max_new_tokens, tokenizer=self._tok(model),
                               stop=self.stop)

    def from_generation(self, batch: Any, generation: Generation) -> Tensor:
        """Judge a generation of ``batch``."""
        self.last_ = generation
        prompts = list(batch.texts) if getattr(batch, "texts", None) is not None else [""] * len(batch)
        scores = self.judge(prompts, list(generation.texts))
        return torch.as_tensor(scores, dtype=torch.float64).flatten()

    def score(self, model: Any, batch: Any) -> Tensor:
        return self.from_generation(batch, self.generate(model, batch))

    def __repr__(self) -> str:
        return f"GenerationMetric({self.name!r}, judge={self.judge!r}, max_new_tokens={self.max_new_tokens})"
