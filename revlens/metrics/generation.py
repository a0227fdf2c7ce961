"""Greedy generation of a probe batch, under whatever interventions are active.

:func:`greedy_generate` decodes every prompt of a right-padded :class:`~revlens.probes.ProbeBatch`
at once, in the layout of :mod:`revlens.sites.layout`: the prompts at columns ``< W``, the tokens
generated so far at ``W .. W + t − 1`` (attention mask over the padding, explicit position ids);
it takes the argmax at each row's last position and stops a row at a stop token (EOS, the
template's end-of-turn token). Two paths give the same tokens (and logits to float rounding,
tested on four families with and without clamp / patch / steer, rank 1 and k):

- ``method="cached"`` (:class:`~revlens.metrics.steps.CachedSteps`): the prompts run once, then
  one column per step with the Hugging Face KV cache, on the plain Hugging Face model (for a
  bridge, a twin holding the bridge's own tensors: TransformerLens 4.3's bridge cache gives logits
  up to 0.6 off). revlens' interventions act on each new column exactly as in a full forward
  (:mod:`revlens.sites.cached`). Linear in the generated length.
- ``method="full"`` (:class:`~revlens.metrics.steps.FullSteps`, the reference): step ``t`` is a full
  forward over ``W + t`` columns, so any hook (also a user's own) sees every position of every
  step as in an ordinary forward. Quadratic in the generated length.
- ``method="auto"`` (the default): cached, unless a hook revlens did not register (a
  TransformerLens or user hook), an edit not marked position-wise, or a model without a cache
  forbids it; then full, with a :class:`~revlens.metrics.steps.FullForwardFallback` warning that
  says why. ``method="cached"`` raises :class:`~revlens.sites.cached.CachedPathError` instead.

Measured speed-up on SmolLM2-135M-Instruct: ``docs/generation.md``.

:class:`GenerationMetric` is a :class:`~revlens.metrics.model.ModelMetric` that generates and
hands ``(prompts, responses)`` to a judge (:mod:`revlens.metrics.judges`, or the refusal-phrase
judge of :mod:`revlens.metrics.refusal`)."""

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revlens._config import as_int
from revlens._types import MetricBatch, ModuleLike, TokenizerInput
from revlens.errors import MetricError
from revlens.metrics.model import ModelMetric
from revlens.metrics.steps import CachedSteps, FullForwardFallback, FullSteps
from revlens.modes import GENERATION_METHODS, GenerationMethod, check_mode
from revlens.sites.cached import CachedPathError

__all__ = [
    "END_OF_TURN_TOKENS",
    "Generation",
    "GenerationMetric",
    "greedy_generate",
    "stop_token_ids",
]

END_OF_TURN_TOKENS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "</s>",
    "<eot>",
    "<|end_of_text|>",
    "[/INST]",
)
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
        method: the path that ran: ``"cached"`` or ``"full"``.
        logits: each step's next-token logits (``output_logits=True``), else ``None``.
    """

    tokens: Int[Tensor, "batch new"]
    lengths: Int[Tensor, " batch"]
    texts: list[str]
    stopped: Tensor
    method: str = "full"
    logits: Float[Tensor, "batch new vocab"] | None = None


def stop_token_ids(tokenizer: TokenizerInput, extra: Sequence[str | int] = ()) -> list[int]:
    """EOS plus the end-of-turn tokens of :data:`END_OF_TURN_TOKENS` the tokenizer knows, plus ``extra``."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids = (
        {int(tokenizer.eos_token_id)}
        if getattr(tokenizer, "eos_token_id", None) is not None
        else set()
    )
    ids |= {int(vocab[t]) for t in END_OF_TURN_TOKENS if t in vocab}
    for t in extra:
        if isinstance(t, int):
            ids.add(t)
        elif t in vocab:
            ids.add(int(vocab[t]))
        else:
            raise MetricError(f"stop token {t!r} is not in the vocabulary")
    return sorted(ids)


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
@torch.no_grad()
def greedy_generate(
    model: ModuleLike,
    batch: MetricBatch,
    *,
    max_new_tokens: int = 32,
    tokenizer: TokenizerInput | None = None,
    stop: Sequence[str | int] | None = None,
    method: GenerationMethod = "auto",
    output_logits: bool = False,
) -> Generation:
    """Greedy responses of every prompt of ``batch`` (see the module docstring).

    Args:
        model: a ``LensModel``, bridge, Hugging Face causal LM or ``SiteAccess``.
        batch: a :class:`~revlens.probes.ProbeBatch` (right-padded ``tokens``, ``last_index``).
        max_new_tokens: the most tokens generated per prompt (capped to the model's context).
        tokenizer: for stop tokens and decoding (default: the model's).
        stop: extra stop tokens (strings or ids) beside EOS and the end-of-turn tokens.
        method: ``"cached"`` (KV cache, :mod:`revlens.sites.cached`), ``"full"`` (one full forward
            per token: the reference) or ``"auto"`` (cached where it applies, else full with a
            :class:`FullForwardFallback` warning saying why).
        output_logits: keep each step's next-token logits (``Generation.logits``).

    Raises:
        CachedPathError: ``method="cached"`` where the cached path cannot apply (the message says why).
    """
    from revlens.sites import access
    from revlens.sites.layout import prompt_layout

    check_mode("method", method, GENERATION_METHODS)
    acc = access(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise MetricError("greedy_generate needs a tokenizer (the model has none): pass tokenizer=")
    n_new = as_int("max_new_tokens", max_new_tokens, min=1)
    tokens, lengths = batch.tokens.to(acc.device), (batch.last_index + 1).to(acc.device)
    width = int(tokens.shape[1])
    if acc.n_ctx and width + n_new > acc.n_ctx:
        if width >= acc.n_ctx:
            raise MetricError(
                f"prompts of {width} tokens leave no room to generate in a context of {acc.n_ctx}"
            )
        warnings.warn(
            f"max_new_tokens={n_new} capped to {acc.n_ctx - width}: the prompts take {width} of the "
            f"model's {acc.n_ctx}-token context",
            UserWarning,
            stacklevel=2,
        )
        n_new = acc.n_ctx - width
    stops = torch.tensor(stop_token_ids(tok, stop or ()), dtype=torch.long, device=acc.device)
    pad = int(tok.pad_token_id) if getattr(tok, "pad_token_id", None) is not None else 0
    stepper = _stepper(acc, tokens, lengths, method)
    with prompt_layout(width, lengths), stepper:
        new, done, logits = _decode(stepper, n_new, stops, pad, output_logits)
    gen = _finish(new.cpu(), stops.cpu(), done.cpu(), tok)
    gen.method = stepper.method
    gen.logits = logits
    return gen


def _stepper(acc: Any, tokens: Tensor, lengths: Tensor, method: str) -> Any:
    """The cached stepper where it applies (``method`` auto / cached), else the full one."""
    if method == "full":
        return FullSteps(acc, tokens, lengths)
    try:
        return CachedSteps(acc, tokens, lengths)
    except CachedPathError as exc:
        if method == "cached":
            raise
        warnings.warn(
            f"greedy generation runs full forwards (no KV cache): {exc}",
            FullForwardFallback,
            stacklevel=3,
        )
        return FullSteps(acc, tokens, lengths)


def _decode(
    stepper: Any, n_new: int, stops: Tensor, pad: int, keep: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    b = stepper.tokens.shape[0]
    dev = stepper.tokens.device
    new = torch.empty(b, 0, dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    kept = []
    for _ in range(n_new):
        step_logits = stepper.next_logits(new)
        if keep:
            kept.append(step_logits.float().cpu())
        nxt = step_logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new = torch.cat([new, nxt[:, None]], 1)
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
    return new, done, torch.stack(kept, 1) if keep else None


def _finish(new: Tensor, stops: Tensor, done: Tensor, tok: Any) -> Generation:
    is_stop = torch.isin(new, stops)
    first = torch.where(
        is_stop.any(1), is_stop.float().argmax(1), torch.full((new.shape[0],), new.shape[1])
    )
    texts = [
        tok.decode(new[i, : int(first[i])].tolist(), skip_special_tokens=True).strip()
        for i in range(new.shape[0])
    ]
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
        method: the decoding path of :func:`greedy_generate` (``"auto"``: KV-cached where exact).

    Attributes:
        last_: the last :class:`Generation` scored (e.g. to read the responses).
    """

    name = "generation"

    def __init__(
        self,
        judge: Judge,
        *,
        max_new_tokens: int = 32,
        stop: Sequence[str | int] | None = None,
        name: str | None = None,
        method: GenerationMethod = "auto",
    ) -> None:
        super().__init__()
        self.method = check_mode("method", method, GENERATION_METHODS)
        if not callable(judge):
            raise MetricError(
                f"judge must be callable judge(prompts, responses) -> scores; got {type(judge).__name__}"
            )
        self.judge = judge
        self.max_new_tokens = as_int("max_new_tokens", max_new_tokens, min=1)
        self.stop = tuple(stop or ())
        self.name = name or getattr(judge, "name", None) or self.name
        self.last_: Generation | None = None

    @property
    def generation_key(self) -> tuple[Any, ...]:
        """Metrics with equal keys can share one generation of a batch."""
        return (self.max_new_tokens, self.stop, self.method)

    def generate(self, model: ModuleLike, batch: MetricBatch) -> Generation:
        """The greedy responses of ``batch`` (under the interventions active now)."""
        return greedy_generate(
            model,
            batch,
            max_new_tokens=self.max_new_tokens,
            tokenizer=self._tok(model),
            stop=self.stop,
            method=self.method,
        )

    def from_generation(self, batch: MetricBatch, generation: Generation) -> Tensor:
        """Judge a generation of ``batch``."""
        self.last_ = generation
        prompts = (
            list(batch.texts) if getattr(batch, "texts", None) is not None else [""] * len(batch)
        )
        scores = self.judge(prompts, list(generation.texts))
        return torch.as_tensor(scores, dtype=torch.float64).flatten()

    def score(self, model: ModuleLike, batch: MetricBatch) -> Tensor:
        return self.from_generation(batch, self.generate(model, batch))

    def __repr__(self) -> str:
        return f"GenerationMetric({self.name!r}, judge={self.judge!r}, max_new_tokens={self.max_new_tokens})"
