"""Where the prompt ends in a forward pass that runs past it (generation, teacher forcing).

Behaviour metrics that need the model run the probe batch *plus* new tokens: greedy generation,
or candidate continuations scored teacher-forced. They keep the prompt exactly as every other
stage sees it — right-padded to width ``W``, real tokens at columns ``0 .. len_i − 1`` — and
append the new tokens for every row at columns ``W, W + 1, ...``, with an attention mask that
hides the padding in between and position ids ``len_i, len_i + 1, ...`` (so each row sees exactly
its own prompt followed by its own continuation; tested equal to the rows run one by one).

While such a forward runs, :func:`current_layout` tells an edit at a site which columns are the
prompt's (``< prompt_width``) and which are new (``>= prompt_width``): interventions use it to
apply a prompt-shaped mask or patch source to the prompt columns only
(:mod:`revlens.causal.interventions`). Outside such a forward it is ``None``.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PromptLayout", "current_layout", "extended_inputs", "prompt_layout"]


@dataclass(frozen=True)
class PromptLayout:
    """The prompt part of an extended forward.

    Attributes:
        prompt_width: ``W``, the padded prompt width (columns ``< W`` are the prompt's).
        prompt_lengths: ``[batch]`` real prompt tokens per row.
    """

    prompt_width: int
    prompt_lengths: Tensor


_CURRENT: ContextVar[PromptLayout | None] = ContextVar("revlens_prompt_layout", default=None)


def current_layout() -> PromptLayout | None:
    """The layout of the extended forward running now, or ``None`` (an ordinary forward)."""
    return _CURRENT.get()


@contextmanager
def prompt_layout(prompt_width: int, prompt_lengths: Tensor) -> Iterator[PromptLayout]:
    """Declare the prompt part of the forward passes run inside the block."""
    layout = PromptLayout(int(prompt_width), prompt_lengths.detach().to("cpu", torch.long))
    token = _CURRENT.set(layout)
    try:
        yield layout
    finally:
        _CURRENT.reset(token)


def extended_inputs(tokens: Tensor, lengths: Tensor, new: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, position_ids)`` of right-padded prompts ``tokens [b, W]``
    (``lengths [b]``) followed by ``new [b, T]`` tokens at columns ``W .. W + T − 1``."""
    b, w = tokens.shape
    t = new.shape[1]
    dev = tokens.device
    lengths = lengths.to(dev)
    cols = torch.arange(w, device=dev)
    mask = torch.cat(
        [(cols[None] < lengths[:, None]).long(), torch.ones(b, t, dtype=torch.long, device=dev)], 1
    )
    pos = torch.cat(
        [cols[None].expand(b, -1), lengths[:, None] + torch.arange(t, device=dev)[None]], 1
    )
    return torch.cat([tokens, new.to(dev)], 1), mask, pos
