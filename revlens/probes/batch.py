"""Tokenized probe sets and their batches."""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revlens._types import Device, TokenizerInput
from revlens.errors import ProbeError

__all__ = ["ProbeBatch", "TokenizedProbes", "tokenizer_id"]


@dataclass
class ProbeBatch:
    """A right-padded batch of probe prompts.

    Attributes:
        tokens: token ids, right-padded with the pad id.
        last_index: index of each prompt's last real token.
        weights: per-position read-out weights (each row sums to 1) from the position rule.
        indices: indices of these prompts in the probe set.
        labels: optional per-prompt labels.
        texts: the prompts' texts (for chat probes: the last user message), if known.
    """

    tokens: Int[Tensor, "batch pos"]
    last_index: Int[Tensor, " batch"]
    weights: Float[Tensor, "batch pos"]
    indices: Int[Tensor, " batch"]
    labels: list[Any] | None = None
    texts: list[str] | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: Device) -> "ProbeBatch":
        """The batch on ``device``."""
        return ProbeBatch(
            self.tokens.to(device),
            self.last_index.to(device),
            self.weights.to(device),
            self.indices,
            self.labels,
            self.texts,
        )


class TokenizedProbes:
    """Probes tokenized for one tokenizer: padded ids, lengths and position weights.

    ``positions`` maps each position label to its weights ``[prompt, pos]`` (one label for
    ``"last"`` / ``"mean"`` / a mask; ``-k .. -1`` for ``("post_instruction", k)``); ``weights``
    is the only (or the last, ``-1``) one. ``texts``: prompt texts (chat: the last user message),
    ``rendered``: the rendered chat prompts, ``template``: the template's provenance, ``n_post``:
    post-instruction tokens per prompt (chat), ``datasets``: the published sets the prompts come
    from (:attr:`Probes.provenance`).
    """

    def __init__(
        self,
        tokens: Tensor,
        lengths: Tensor,
        weights: Tensor | dict[str, Tensor],
        *,
        labels: list[Any] | None,
        position: str,
        tokenizer_id: str,
        texts: list[str] | None,
        rendered: list[str] | None = None,
        template: dict[str, str] | None = None,
        n_post: Tensor | None = None,
        datasets: list[dict[str, Any]] | None = None,
    ) -> None:
        self.tokens = tokens
        self.lengths = lengths
        self.positions = dict(weights) if isinstance(weights, dict) else {position: weights}
        self.weights = next(reversed(self.positions.values()))
        self.labels = labels
        self.position = position
        self.tokenizer_id = tokenizer_id
        self.texts = texts
        self.rendered = rendered
        self.template = template
        self.n_post = n_post
        self.datasets = datasets  # the published sets the prompts come from (Probes.provenance)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def multi(self) -> bool:
        """Whether several positions are read separately (``("post_instruction", k)``)."""
        return len(self.positions) > 1 or self.position.startswith("post_instruction")

    def stacked(self) -> Float[Tensor, "prompt n pos"]:
        """Every position's weights, ``[prompt, n_positions, pos]`` (in ``positions`` order)."""
        return torch.stack(list(self.positions.values()), dim=1)

    def view(self, label: str) -> "TokenizedProbes":
        """The same tokens read at one position (its own fingerprint, position name and weights)."""
        name = f"{self.position}@{label}" if self.multi else self.position
        return TokenizedProbes(
            self.tokens,
            self.lengths,
            {name: self.positions[label]},
            labels=self.labels,
            position=name,
            tokenizer_id=self.tokenizer_id,
            texts=self.texts,
            rendered=self.rendered,
            template=self.template,
            n_post=self.n_post,
            datasets=self.datasets,
        )

    def batches(self, batch_size: int) -> Iterator[ProbeBatch]:
        """Yield :class:`ProbeBatch` es, trimmed to the longest prompt of each batch."""
        if batch_size < 1:
            raise ProbeError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            sl = slice(start, min(start + batch_size, len(self)))
            width = int(self.lengths[sl].max())
            yield ProbeBatch(
                tokens=self.tokens[sl, :width],
                last_index=self.lengths[sl] - 1,
                weights=self.weights[sl, :width],
                indices=torch.arange(sl.start, sl.stop),
                labels=self.labels[sl] if self.labels is not None else None,
                texts=self.texts[sl] if self.texts is not None else None,
            )

    def fingerprint(self) -> str:
        """Content hash of token ids and position weights."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.tokens.numpy().tobytes())
        h.update(self.lengths.numpy().tobytes())
        for i, w in enumerate(self.positions.values()):
            if i or self.multi:
                h.update(b"|position")
            h.update(w.to(torch.float64).numpy().tobytes())
        return h.hexdigest()


def tokenizer_id(tokenizer: TokenizerInput) -> str:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    h = hashlib.blake2b(json.dumps(sorted(vocab.items())).encode(), digest_size=8)
    return f"{type(tokenizer).__name__}:{len(vocab)}:{h.hexdigest()}"
