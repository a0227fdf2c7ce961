"""The two ways :func:`revlens.metrics.greedy_generate` gets the next-token logits of each step.

- :class:`FullSteps` (the reference): step ``t`` runs one full forward over the prompts and the
  ``t`` tokens generated so far (:func:`revlens.sites.layout.extended_inputs`), on whatever the
  model is (bridge, Hugging Face model, ``SiteAccess``), with every hook seeing every position.
- :class:`CachedSteps`: the same columns, masks and position ids, but the prompt runs once and
  each later step runs only its new column with the Hugging Face KV cache, on the plain Hugging
  Face model (a bridge's :func:`~revlens.sites.cached.plain_twin`); revlens' edits act on the new
  column as the full forward's do (:mod:`revlens.sites.cached`). Cost per step: one column instead
  of ``W + t``. Raises :class:`~revlens.sites.cached.CachedPathError` on construction where it
  cannot reproduce the full path (:func:`~revlens.sites.cached.obstacle`).

Both are context managers (the cached one registers the bridge's edits on the twin while it runs)
with ``next_logits(new) -> [batch, vocab]``: the logits at each row's current last position, given
the tokens ``new [batch, t]`` generated so far.
"""

from types import TracebackType
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revlens.sites.access import SiteAccess
from revlens.sites.cached import (
    CachedPathError,
    active_edits,
    cache_kwarg,
    decoding,
    obstacle,
    plain_twin,
    takes_kwarg,
)
from revlens.sites.layout import extended_inputs

__all__ = ["CachedSteps", "FullForwardFallback", "FullSteps"]


class FullForwardFallback(UserWarning):
    """``greedy_generate(method="auto")`` ran full forwards because the KV-cached path cannot
    reproduce them here (the message says why); the results are the reference ones, only slower."""


class FullSteps:
    """Step ``t``: one full forward over the prompts and ``t`` new tokens (the reference path)."""

    method = "full"

    def __init__(
        self, acc: SiteAccess, tokens: Int[Tensor, "batch W"], lengths: Int[Tensor, " batch"]
    ) -> None:
        self.acc, self.tokens, self.lengths = acc, tokens, lengths
        self.width = int(tokens.shape[1])
        self.rows = torch.arange(tokens.shape[0], device=tokens.device)

    def __enter__(self) -> "FullSteps":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def next_logits(self, new: Int[Tensor, "batch t"]) -> Float[Tensor, "batch vocab"]:
        """Logits at each row's last position after ``new``."""
        t = int(new.shape[1])
        ids, mask, pos = extended_inputs(self.tokens, self.lengths, new)
        logits = self.acc.forward(ids, mask, position_ids=pos)
        at = self.lengths - 1 if t == 0 else torch.full_like(self.lengths, self.width + t - 1)
        return logits[self.rows, at]


class CachedSteps:
    """Prefill the prompts once, then one cached column per step (see the module docstring).

    Raises:
        CachedPathError: the cached path cannot reproduce the full forward of ``acc``'s model.
    """

    method = "cached"

    def __init__(
        self, acc: SiteAccess, tokens: Int[Tensor, "batch W"], lengths: Int[Tensor, " batch"]
    ) -> None:
        from revlens.sites.access import BridgeAccess

        self.acc, self.tokens, self.lengths = acc, tokens, lengths
        self.width = int(tokens.shape[1])
        source = acc.module
        if isinstance(acc, BridgeAccess):
            self.run = plain_twin(acc.bridge.original_model)
            self.run.train(acc.bridge.original_model.training)
            self.edits = [(e.site, e.fn) for e in active_edits(source)]
        else:
            self.run, self.edits = source, []
        why = obstacle(source, self.run)
        if why is not None:
            raise CachedPathError(
                f"the KV-cached generation path cannot run {type(source).__name__}: {why}"
            )
        self.kwarg = cache_kwarg(self.run)
        self.keep_ok = takes_kwarg(self.run, "logits_to_keep")
        self.prompt_mask = (
            torch.arange(self.width, device=tokens.device)[None] < lengths[:, None]
        ).long()
        self.cache: Any = None
        self._hooks: Any = None
        self._twin_acc: Any = None

    def __enter__(self) -> "CachedSteps":
        if self.run is not self.acc.module:  # the bridge's edits, on the twin's structural hooks
            from revlens.sites.hf import HFAccess

            self._twin_acc = HFAccess(self.run)
            self._hooks = self._twin_acc.hooked(self.edits)
            self._hooks.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cache = None
        if self._hooks is not None:
            hooks, self._hooks = self._hooks, None
            hooks.__exit__(kind, exc, tb)

    def _forward(self, ids: Tensor, mask: Tensor, pos: Tensor, **extra: Any) -> Any:
        if (
            self._twin_acc is not None
        ):  # families whose hooks see [batch·pos, d] (SiteAccess._shaped)
            self._twin_acc._batch_shape = (int(ids.shape[0]), int(ids.shape[1]))
        try:
            return self.run(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{self.kwarg: self.cache},
                **extra,
            )
        finally:
            if self._twin_acc is not None:
                self._twin_acc._batch_shape = None

    def next_logits(self, new: Int[Tensor, "batch t"]) -> Float[Tensor, "batch vocab"]:
        """Logits at each row's last position after ``new`` (the prompt's forward at ``t = 0``)."""
        t = int(new.shape[1])
        b = int(self.tokens.shape[0])
        if t == 0:
            cols = torch.arange(self.width, device=self.tokens.device)
            last = self.lengths - 1
            keep = torch.unique(last)  # only the columns some row's next token is read at
            if self.keep_ok:
                out = self._forward(
                    self.tokens, self.prompt_mask, cols[None].expand(b, -1), logits_to_keep=keep
                )
                logits = out.logits[
                    torch.arange(b, device=keep.device), torch.searchsorted(keep, last)
                ]
            else:
                out = self._forward(self.tokens, self.prompt_mask, cols[None].expand(b, -1))
                logits = out.logits[torch.arange(b, device=last.device), last]
        else:
            if self.cache is None:
                raise CachedPathError("a cached step ran before the prompt's forward")
            mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones(b, t)], 1)
            with decoding(self.width):
                out = self._forward(new[:, -1:], mask, (self.lengths + t - 1)[:, None])
            logits = out.logits[:, -1]
        cache = getattr(out, "cache", None)
        self.cache = cache if cache is not None else getattr(out, "past_key_values", None)
        return logits
